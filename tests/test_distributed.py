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


def test_process_group_timeout_is_thirty_minutes_unless_set(monkeypatch):
    monkeypatch.delenv("SCORESDE_DIST_TIMEOUT_S", raising=False)
    assert distributed.process_group_timeout().total_seconds() == 1800
    monkeypatch.setenv("SCORESDE_DIST_TIMEOUT_S", "90")
    assert distributed.process_group_timeout().total_seconds() == 90
    monkeypatch.setenv("SCORESDE_DIST_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="SCORESDE_DIST_TIMEOUT_S"):
        distributed.process_group_timeout()


@pytest.mark.slow
def test_rank_zero_evaluating_longer_than_the_timeout_does_not_fail_the_other_rank(tmp_path):
    """Rank 0 evaluates for 8 s under a 2 s process-group timeout: rank 1 must wait outside any
    collective (in one, gloo would raise after 2 s, as NCCL's watchdog would abort)."""
    import multiprocessing as mp
    from _ddp_workers import slow_eval_worker

    cfg = _config(["train.eval_every=3", "train.steps=6", "train.batch_size=32"])
    port = _free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=slow_eval_worker, args=(r, 2, port, str(tmp_path), cfg, 2.0, 8.0)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "ok_0").exists() and (tmp_path / "ok_1").exists()


_DROPOUT_UNET = ["model=unet", "data=digits", "model.nf=8", "model.ch_mult=[1]", "model.num_res_blocks=1",
                 "model.attn_resolutions=[]", "model.dropout=0.3", "data.n_test=16", "train.batch_size=16",
                 "eval.n_nll=0", "eval.n_samples=0", "eval.bound=false", "train.resume=auto",
                 "train.stop_check_every=5", "train.log_every=5", "train.ckpt_every=1000"]


@pytest.mark.slow
def test_two_gloo_ranks_with_dropout_sigterm_then_resume_equal_the_uninterrupted_run(tmp_path):
    """SIGTERM to every process of a 2-rank torchrun job (as SLURM signals a job step): both ranks
    stop at the same step (a multiple of stop_check_every), rank 0 writes that step's checkpoint;
    the same command again ends equal, in every tensor, to an uninterrupted run, dropout on (each
    rank its own CPU generator state in the checkpoint)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from _tiny import ROOT, env

    steps = 200
    def command(run_dir):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                "-m", "scoresde.apps.train", "train.progress=false", "train.device=cpu", "train.tensorboard=false",
                *_DROPOUT_UNET, f"train.steps={steps}", f"hydra.run.dir={run_dir}"]

    r = subprocess.run(command(tmp_path / "straight"), cwd=tmp_path, env=env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]

    run = tmp_path / "run"
    proc = subprocess.Popen(command(run), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (run / "train_log.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    marker = json.loads((run / "preempted.json").read_text())
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == marker["step"] and 0 < state["step"] < steps and state["step"] % 5 == 0, err[-3000:]
    a_rng, b_rng = (x["torch"] for x in state["rank_rng"])
    assert not torch.equal(a_rng, b_rng)                                  # per-rank dropout streams

    r = subprocess.run(command(run), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == steps
    for key in ("model", "ema"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    for x, y in zip(a["rank_rng"], b["rank_rng"]):
        assert torch.equal(x["torch"], y["torch"])


# -- submitit tasks as ranks (the sharded sample app under hydra/launcher=slurm or submitit_local) ----------
_SUBMITIT_VARS = ("SUBMITIT_EXECUTOR", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
                  "SUBMITIT_LOCAL_JOB_ID", "SUBMITIT_LOCAL_GLOBALID", "SUBMITIT_LOCAL_NTASKS", "SUBMITIT_LOCAL_LOCALID")


def _fake_env(monkeypatch, **env):
    for k in _SUBMITIT_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_submitit_tasks_give_rank_and_world_from_the_job_environment(monkeypatch):
    pytest.importorskip("submitit")
    _fake_env(monkeypatch, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="7", SLURM_PROCID="3", SLURM_NTASKS="4",
              SLURM_LOCALID="1")
    assert distributed.submitit_task() == (3, 4, 1, "slurm")
    assert distributed.task_rank_world() == (3, 4)
    _fake_env(monkeypatch, SUBMITIT_EXECUTOR="local", SUBMITIT_LOCAL_JOB_ID="12", SUBMITIT_LOCAL_GLOBALID="1",
              SUBMITIT_LOCAL_NTASKS="2", SUBMITIT_LOCAL_LOCALID="1")
    assert distributed.task_rank_world() == (1, 2)
    _fake_env(monkeypatch, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="7", SLURM_PROCID="0", SLURM_NTASKS="1")
    assert distributed.task_rank_world() == (0, 1)                     # one task: one process


def test_slurm_variables_without_submitit_are_not_ranks(monkeypatch):
    # the batch script of `sbatch --ntasks=4` has SLURM_PROCID=0, SLURM_NTASKS=4 and no task beside it
    _fake_env(monkeypatch, SLURM_JOB_ID="7", SLURM_PROCID="0", SLURM_NTASKS="4")
    assert distributed.submitit_task() is None and distributed.task_rank_world() == (0, 1)


def test_an_initialized_process_group_comes_before_submitit(monkeypatch):
    _fake_env(monkeypatch, SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="7", SLURM_PROCID="3", SLURM_NTASKS="4")
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.task_rank_world() == (1, 2)                     # torchrun inside a SLURM job
