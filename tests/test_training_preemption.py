"""Pre-emption (scoresde/training/preemption.py): SIGTERM / SIGUSR1 in the middle of training stop
the run after the step in progress, write the checkpoint of that step (not the last periodic one)
and a requeue marker, exit 124 from the app; the same command with train.resume=auto then ends
equal, in every tensor, to an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from scoresde.checkpoints import load_checkpoint
from scoresde.training import REQUEUE_EXIT_CODE, TrainingPreempted
from scoresde.training.preemption import PreemptionGuard, parse_signals

from test_train import make_trainer, tiny_config


def assert_same_tensors(a, b, path="state"):
    """Every tensor (and every other leaf) of two checkpoint states is equal; returns the count."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
        return 1
    if isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        return sum(assert_same_tensors(a[k], b[k], f"{path}[{k!r}]") for k in a)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        return sum(assert_same_tensors(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert a == b, (path, a, b)
    return 0


def _no_eval(steps, **kw):
    cfg = tiny_config(steps, **kw)
    cfg["eval"] = {"n_nll": 0, "n_samples": 0, "bound": False}
    return cfg


def test_signal_names_parse_and_unknown_ones_are_errors():
    assert parse_signals("SIGTERM, usr1,12") == (signal.SIGTERM, signal.SIGUSR1, 12)
    assert parse_signals("") == ()
    with pytest.raises(ValueError, match="preempt_signals.*SIGFOO"):
        parse_signals("SIGFOO")


def test_guard_records_the_signal_and_restores_the_previous_handler():
    seen = []
    prev = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    try:
        with PreemptionGuard((signal.SIGUSR1,)) as g:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)
            assert g.requested and g.signum == signal.SIGUSR1 and seen == []   # trapped, not passed on
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert seen == [signal.SIGUSR1]                                        # the previous one is back
    finally:
        signal.signal(signal.SIGUSR1, prev)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_mid_fit_checkpoints_that_step_and_resume_auto_equals_a_straight_run(tmp_path, signum):
    n, stop_at = 12, 5
    straight = make_trainer(_no_eval(n), tmp_path / "straight")
    straight.fit()

    run = tmp_path / "run"
    cfg = _no_eval(n, resume="auto", ckpt_every=4)
    t = make_trainer(cfg, run)
    step = t.train_step

    def step_then_signal():
        out = step()
        if t.step == stop_at:
            os.kill(os.getpid(), signum)       # as SLURM would: the handler runs in the main thread
        return out

    t.train_step = step_then_signal
    before = signal.getsignal(signum)
    with pytest.raises(TrainingPreempted) as e:
        t.fit()
    assert e.value.step == stop_at and e.value.signum == signum
    assert signal.getsignal(signum) is before                       # handlers restored
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == stop_at   # not the periodic step 4
    marker = json.loads((run / "preempted.json").read_text())
    assert marker["step"] == stop_at and marker["signal"] == signal.Signals(signum).name

    resumed = make_trainer(cfg, run)                                # the same "command" again
    assert resumed.step == stop_at
    resumed.fit()
    assert not (run / "preempted.json").exists()
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in ("model", "ema", "optimizer", "rng", "grad_scaler", "step"):
        assert_same_tensors(a[key], b[key], key)


def test_preempted_chains_to_the_handler_installed_before_it(tmp_path):
    calls = []
    prev = signal.signal(signal.SIGUSR2, lambda s, f: calls.append(s))   # e.g. submitit's requeue
    try:
        t = make_trainer(_no_eval(6), tmp_path)
        step = t.train_step

        def step_then_signal():
            out = step()
            if t.step == 2:
                os.kill(os.getpid(), signal.SIGUSR2)
            return out

        t.train_step = step_then_signal
        with pytest.raises(TrainingPreempted) as e:
            t.fit()
        assert calls == []                      # not during the step: after the checkpoint
        e.value.chain()
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, prev)


# -- the app in a subprocess ----------------------------------------------------------------------
_OVERRIDES = ["train.steps=300", "train.ckpt_every=100", "train.resume=auto", "train.batch_size=64",
              "train.log_every=10", "train.progress=false", "train.device=cpu", "train.tensorboard=false",
              "train.threads=1", "model.width=16", "model.depth=1", "model.emb_dim=8", "data.n_test=32",
              "eval.n_nll=0", "eval.n_samples=0", "eval.bound=false", "seed=7"]


def _command(run_dir):
    return [sys.executable, "-m", "scoresde", "train", *_OVERRIDES, f"hydra.run.dir={run_dir}"]


def _signal_mid_run(run_dir, signum):
    """Start the app, send ``signum`` once it has logged its first steps; (exit status, seconds to stop)."""
    from _tiny import ROOT, env
    log = run_dir / "train_log.csv"
    proc = subprocess.Popen(_command(run_dir), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while not log.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, f"the run ended before the signal: {proc.stderr.read()[-3000:]}"
        proc.send_signal(signum)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=120)
        return proc.returncode, time.monotonic() - t0, err
    finally:
        if proc.poll() is None:
            proc.kill()


def _app_signal_then_resume(tmp_path, signum):
    from omegaconf import OmegaConf
    from _tiny import ROOT, compose_conf, env
    from scoresde.apps import train  # noqa: F401  (stores the train schema)

    run = tmp_path / "run"
    code, seconds, err = _signal_mid_run(run, signum)
    assert code == REQUEUE_EXIT_CODE, err[-3000:]
    assert seconds < 10, seconds
    assert "preempted:" in err and "Traceback" not in err
    stopped = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 0 < stopped < 100, stopped                  # its own step, before the first periodic checkpoint
    assert json.loads((run / "preempted.json").read_text())["step"] == stopped

    r = subprocess.run(_command(run), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    # the uninterrupted run, in this process (the same config, one thread)
    from scoresde.training import Trainer, build_from_config
    cfg = OmegaConf.to_container(compose_conf("train", [o for o in _OVERRIDES if not o.startswith("train.resume")]),
                                 resolve=True)
    model, data, loss = build_from_config(cfg)
    straight = Trainer(model, data, loss, optim=cfg["optim"], train=cfg["train"], eval=cfg["eval"],
                       sampler=cfg["sampler"], out_dir=tmp_path / "straight", config=cfg, seed=cfg["seed"])
    straight.fit()
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 300
    n = sum(assert_same_tensors(a[k], b[k], k) for k in ("model", "ema", "optimizer", "rng"))
    assert n >= 3 * len(a["model"]) + 2


def test_sigterm_to_the_train_app_stops_checkpoints_exits_124_and_resumes_to_the_straight_run(tmp_path):
    _app_signal_then_resume(tmp_path, signal.SIGTERM)


@pytest.mark.slow
def test_sigusr1_to_the_train_app_stops_checkpoints_exits_124_and_resumes_to_the_straight_run(tmp_path):
    _app_signal_then_resume(tmp_path, signal.SIGUSR1)
