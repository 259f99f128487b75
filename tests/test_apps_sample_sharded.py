"""Sharded sampling (scoresde/apps/_shard.py): per-item noise, the same samples for any world size
and batching, shards written as they finish and resumed, torchrun with 2 gloo processes."""
import json
import socket
import sys

import numpy as np
import pytest
import torch

from scoresde.apps import sample as sample_app
from scoresde.apps._shard import plan

from _tiny import ROOT, run as run_python

SDE_EULER = ["sampler=sde", "sampler.method=euler", "sampler.steps=3"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny digits U-Net trained for two steps."""
    from scoresde.apps import train as train_app
    run = tmp_path_factory.mktemp("digits")
    argv = ["scoresde-train", "experiment=digits", f"hydra.run.dir={run}", "train.progress=false",
            "train.threads=null", "train.tensorboard=false", "train.steps=2", "train.batch_size=8",
            "train.log_every=1", "model.nf=8", "eval.n_samples=4", "sampler.steps=2", "eval.n_nll=0"]
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", argv)
    try:
        train_app.train_main()
    finally:
        mp.undo()
    return run / "checkpoints" / "last.pt"


def _sample(monkeypatch, ckpt, out, *extra):
    monkeypatch.setattr(sys, "argv", ["scoresde-sample", f"checkpoint={ckpt}", f"hydra.run.dir={out}",
                                      "noise=per_item", "seed=5", *SDE_EULER, *extra])
    sample_app.main()
    return torch.load(out / "samples.pt"), json.loads((out / "sample.json").read_text())


def test_per_item_samples_do_not_depend_on_the_batch_size(ckpt, tmp_path, monkeypatch):
    a, info = _sample(monkeypatch, ckpt, tmp_path / "a", "n=12", "batch_size=4")
    b, _ = _sample(monkeypatch, ckpt, tmp_path / "b", "n=12", "batch_size=5")          # 5, 5, 2: n not divisible
    assert a.shape == (12, 1, 8, 8)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert info["noise"] == "per_item" and info["world_size"] == 1 and len(info["shards"]) == 3
    k = np.load(tmp_path / "a" / "samples.npz")["arr_0"]
    assert k.dtype == np.uint8 and k.shape == (12, 8, 8, 1)
    np.testing.assert_array_equal(k[..., 0], torch.round(a.clamp(0, 1) * 255).to(torch.uint8)[:, 0].numpy())


def test_a_killed_run_resumes_from_its_finished_shards(ckpt, tmp_path, monkeypatch):
    full, _ = _sample(monkeypatch, ckpt, tmp_path / "run", "n=9", "batch_size=3")
    shards = sorted((tmp_path / "run" / "shards").iterdir())
    kept = {p.name: p.stat().st_mtime_ns for p in shards[:2]}
    shards[2].unlink()                                       # as if killed before the last shard
    (tmp_path / "run" / "samples.pt").unlink()
    again, _ = _sample(monkeypatch, ckpt, tmp_path / "run", "n=9", "batch_size=3")
    assert torch.equal(again, full)
    assert {p.name: p.stat().st_mtime_ns for p in sorted((tmp_path / "run" / "shards").iterdir())[:2]} == kept
    with pytest.raises(SystemExit):                          # shards of another seed are refused, not mixed
        _sample(monkeypatch, ckpt, tmp_path / "run", "n=9", "batch_size=3", "seed=6")


def test_plan_rejects_more_ranks_than_samples_or_batches():
    assert plan(7, 3, 2) == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(ValueError, match="larger than n"):
        plan(2, 1, 3)
    with pytest.raises(ValueError, match="idle"):
        plan(8, 8, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, args):
    return run_python(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                       "-m", "scoresde.apps.sample", *args], cwd=tmp_path, timeout=300)


def test_two_gloo_ranks_each_sample_half_and_match_one_process(ckpt, tmp_path, monkeypatch):
    one, _ = _sample(monkeypatch, ckpt, tmp_path / "one", "n=12", "batch_size=3")
    r = _torchrun(tmp_path, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'two'}", "noise=per_item", "seed=5",
                             *SDE_EULER, "n=12", "batch_size=3"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    two = torch.load(tmp_path / "two" / "samples.pt")
    assert torch.equal(two, one)                             # bit for bit: equal per-rank batches
    info = json.loads((tmp_path / "two" / "sample.json").read_text())
    assert info["world_size"] == 2 and [s["rank"] for s in info["shards"]] == [0, 1, 0, 1]


def test_more_than_one_process_needs_per_item_noise(ckpt, tmp_path, monkeypatch, capsys):
    # one stream for all (noise=stream) cannot be split over ranks: a user error, not a silent mix
    monkeypatch.setattr("scoresde.training.distributed.world_size", lambda: 2)
    monkeypatch.setattr(sys, "argv", ["scoresde-sample", f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}", "n=4"])
    with pytest.raises(SystemExit) as info:
        sample_app.main()
    assert info.value.code == 1 and "noise=per_item" in capsys.readouterr().err


def test_class_labels_follow_their_indices_across_shards(tmp_path, monkeypatch):
    from omegaconf import OmegaConf
    from scoresde.apps import train as _train_app  # noqa: F401  (stores train_schema)
    from scoresde.training import train
    from _tiny import TINY, compose_conf
    run = tmp_path / "cond"
    cfg = compose_conf("train", TINY + ["data=ring8", "model.num_classes=8"])
    train(OmegaConf.to_container(cfg, resolve=True), run)
    ck = sorted((run / "checkpoints").glob("*.pt"))[-1]
    common = ["labels=[3,3,7,1]", "guidance.scale=2"]
    a, info = _sample(monkeypatch, ck, tmp_path / "a", "batch_size=1", *common)
    b, _ = _sample(monkeypatch, ck, tmp_path / "b", "batch_size=4", *common)
    assert a.shape == (4, 2) and info["labels"] == [3, 3, 7, 1] and info["n"] == 4
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(sys, "argv", ["scoresde-sample", f"checkpoint={ck}", f"hydra.run.dir={tmp_path / 'c'}",
                                      "noise=per_item", "labels=per_class", "n=2"])
    with pytest.raises(SystemExit):
        sample_app.main()


# -- submitit tasks as ranks: no process group; rank 0 waits for the shard files -------------------------------
def _drop_rank_zero_shards(run):
    for p in (run / "shards").iterdir():                        # keep rank 1's (batches 1 and 3 of 4)
        if p.name.split("-")[0] in ("00000000", "00000004"):
            p.unlink()


def test_rank_zero_without_a_process_group_gathers_the_other_tasks_shards(ckpt, tmp_path, monkeypatch, capsys):
    # as a submitit task: rank 0 of 2 makes its shards, finds the other task's files and gathers
    args = ("n=8", "batch_size=2")
    one, _ = _sample(monkeypatch, ckpt, tmp_path / "run", *args)
    _drop_rank_zero_shards(tmp_path / "run")
    (tmp_path / "run" / "samples.pt").unlink()
    monkeypatch.setattr("scoresde.training.distributed.task_rank_world", lambda: (0, 2))
    two, info = _sample(monkeypatch, ckpt, tmp_path / "run", *args)
    assert torch.equal(two, one) and info["world_size"] == 2
    assert [(s["start"], s["rank"]) for s in info["shards"]] == [(0, 0), (2, 0), (4, 0), (6, 0)]
    _drop_rank_zero_shards(tmp_path / "run")
    with pytest.raises(SystemExit):                              # the other task's shards are of seed 5, not 6
        _sample(monkeypatch, ckpt, tmp_path / "run", *args, "seed=6")
    assert "shards ['2-4', '6-8']" in capsys.readouterr().err


def test_waiting_for_shards_returns_when_all_exist_and_gives_up_when_none_appears(tmp_path):
    from scoresde.apps._shard import _wait_for_shards
    batches = [(0, 2), (2, 4)]
    (tmp_path / "00000000-00000002.pt").write_bytes(b"")
    with pytest.raises(RuntimeError, match="00000002-00000004.pt.*resume"):
        _wait_for_shards(tmp_path, batches, stall_s=0.2, poll_s=0.05)
    (tmp_path / "00000002-00000004.pt").write_bytes(b"")
    _wait_for_shards(tmp_path, batches, stall_s=0.0)


def test_two_submitit_local_tasks_are_two_ranks_and_match_one_process(ckpt, tmp_path, monkeypatch):
    # `hydra/launcher=slurm hydra.launcher.tasks_per_node=2` on a cluster; submitit's local executor here
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    one, _ = _sample(monkeypatch, ckpt, tmp_path / "one", "n=12", "batch_size=3")
    sweep = tmp_path / "sweep"
    r = run_python(["-m", "scoresde.apps.sample", "-m", "hydra/launcher=submitit_local",
                    "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1",
                    f"hydra.sweep.dir={sweep}", f"checkpoint={ckpt}", "noise=per_item", "seed=5", *SDE_EULER,
                    "n=12", "batch_size=3"], cwd=tmp_path, timeout=300)
    logs = "".join(p.read_text() for p in sorted((sweep / ".submitit").rglob("*_log.*")))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + logs[-3000:]
    assert torch.equal(torch.load(sweep / "0" / "samples.pt"), one)      # bit for bit: equal per-rank batches
    info = json.loads((sweep / "0" / "sample.json").read_text())
    assert info["world_size"] == 2 and [s["rank"] for s in info["shards"]] == [0, 1, 0, 1]
