"""Distributed data-parallel training under torchrun: one run dir written by rank 0, the data
sharded by rank, bit-exact resume; and, in one process, DDP equals the plain trainer exactly."""

import json
import socket

import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from scoresde.checkpoints import load_checkpoint
from scoresde.training import Trainer, build_from_config, distributed

from _tiny import CONF, TINY, run as run_python


def _config(overrides=()):
    from hydra import compose, initialize_config_dir
    from scoresde.apps import train  # noqa: F401  (stores the train schema)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=TINY + ["eval.n_nll=0", "eval.n_samples=0"] + list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def _trainer(cls, cfg, out):
    model, data, loss = build_from_config(cfg)
    return cls(model, data, loss, optim=cfg["optim"], train=cfg["train"], eval=cfg["eval"], sampler=cfg["sampler"],
               out_dir=out, config=cfg, seed=cfg["seed"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_seeds_are_distinct_and_rank_zero_keeps_the_seed():
    seeds = [distributed.rank_seed(s, r) for s in range(3) for r in range(4)]
    assert len(set(seeds)) == len(seeds)
    assert distributed.rank_seed(5, 0) == 5 and distributed.rank_seed(5, 1) == distributed.rank_seed(5, 1)


def test_without_torchrun_the_plain_trainer_is_used(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert not distributed.under_torchrun() and distributed.trainer_class() is None


def test_ddp_with_one_process_equals_the_plain_trainer_bit_for_bit(tmp_path):
    cfg = _config()
    plain = _trainer(Trainer, cfg, tmp_path / "plain")
    plain.fit()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        ddp = _trainer(distributed.DistributedTrainer, cfg, tmp_path / "ddp")
        ddp.fit()
        state = load_checkpoint(ddp.ckpt_path)
    finally:
        dist.destroy_process_group()
    for (name, a), b in zip(plain.model.state_dict().items(), ddp.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert state["world_size"] == 1 and len(state["rank_generators"]) == 1
    assert (tmp_path / "ddp" / "train_log.csv").read_text().count("\n") == 3     # header + steps 3 and 6


def test_torchrun_refuses_multirun_with_a_message():
    with pytest.raises(ValueError, match="multirun"):
        distributed.torchrun_argv(["scoresde-train", "-m", "sde=vp,ve"])


def _torchrun(tmp_path, overrides, nproc=2):
    args = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_free_port()}",
            "-m", "scoresde.apps.train"] + TINY + ["train.batch_size=64", "eval.n_nll=0"] + list(overrides)
    r = run_python(args, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_two_gloo_processes_train_into_one_run_dir_written_by_rank_zero(tmp_path):
    _torchrun(tmp_path, ["train.ckpt_every=3"])           # the run dir from ${now:...}, decided by rank 0
    runs = list((tmp_path / "outputs" / "train").glob("*/*"))
    assert len(runs) == 1, runs
    run = runs[0]
    for f in ("checkpoints/last.pt", "metrics.json", "samples.png", "train_log.csv", ".hydra/config.yaml"):
        assert (run / f).is_file(), f
    assert (run / "train_log.csv").read_text().count("\n") == 3          # written once, not once per rank
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["world_size"] == 2 and state["step"] == 6
    a, b = state["rank_generators"]
    assert not torch.equal(a, b)                                          # each rank its own stream
    assert json.loads((run / "metrics.json").read_text())["step"] == 6


@pytest.mark.slow
def test_two_process_resume_continues_bit_exactly(tmp_path):
    common = ["optim.schedule=constant", "optim.warmup=0", "eval.n_nll=0", "eval.n_samples=0"]
    _torchrun(tmp_path, common + [f"hydra.run.dir={tmp_path / 'straight'}"])
    _torchrun(tmp_path, common + ["train.steps=3", f"hydra.run.dir={tmp_path / 'half'}"])
    _torchrun(tmp_path, common + [f"train.resume={tmp_path / 'half' / 'checkpoints' / 'last.pt'}",
                                  f"hydra.run.dir={tmp_path / 'resumed'}"])
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
