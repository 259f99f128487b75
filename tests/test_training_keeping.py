"""Keeping checkpoints (scoresde/training/keeping.py): the last k, the best by a metric, and a
corrupt last.pt: a warning and the previous good checkpoint, or (k = 1) an error naming the file;
never a silent restart from step 0."""

import csv

import pytest
import torch

from scoresde.checkpoints import CheckpointError, load_checkpoint
from scoresde.training.keeping import kept_steps

from test_train import make_trainer, tiny_config


def _cfg(steps=8, **kw):
    cfg = tiny_config(steps, **{"ckpt_every": 2, **kw})
    cfg["eval"] = {"n_nll": 0, "n_samples": 0, "bound": False}
    return cfg


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def test_keep_three_keeps_last_and_the_two_before_it(tmp_path):
    make_trainer(_cfg(keep=3), tmp_path).fit()
    ck = tmp_path / "checkpoints"
    assert [s for s, _ in kept_steps(ck)] == [6, 4]
    assert load_checkpoint(ck / "last.pt")["step"] == 8
    for s, p in kept_steps(ck):
        assert load_checkpoint(p)["step"] == s
    make_trainer(_cfg(), tmp_path / "one").fit()
    assert kept_steps(tmp_path / "one" / "checkpoints") == []          # keep=1: last.pt alone


def test_corrupt_last_falls_back_to_the_previous_checkpoint_with_a_warning(tmp_path):
    straight = make_trainer(_cfg(12, keep=2), tmp_path / "straight")
    straight.fit()
    run = tmp_path / "run"
    make_trainer(_cfg(6, keep=2), run).fit()                           # last.pt at 6, step_000000004.pt
    _truncate(run / "checkpoints" / "last.pt")
    with pytest.warns(RuntimeWarning, match=r"last\.pt"):
        t = make_trainer(_cfg(12, keep=2, resume="auto"), run)
    assert t.step == 4                                                  # not 0
    t.fit()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 12
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(run / "checkpoints" / "last.pt")
    for name, v in a["model"].items():                                  # the same run, resumed from step 4
        assert torch.equal(v, b["model"][name]), name


def test_corrupt_last_with_keep_one_is_an_error_naming_the_file(tmp_path):
    make_trainer(_cfg(4), tmp_path).fit()
    _truncate(tmp_path / "checkpoints" / "last.pt")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match=r"last\.pt.*train\.keep=1"):
        make_trainer(_cfg(8, resume="auto"), tmp_path)


def test_best_checkpoint_is_the_evaluation_with_the_lowest_metric(tmp_path):
    t = make_trainer(_cfg(12, eval_every=2, best_metric="heldout_loss"), tmp_path)
    t.fit()
    rows = list(csv.DictReader(open(tmp_path / "eval_log.csv")))
    losses = [(float(r["heldout_loss"]), int(r["step"])) for r in rows]
    assert len(losses) == 6
    value, step = min(losses)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["step"] == step and best["best"]["step"] == step
    assert best["best"]["value"] == pytest.approx(value, rel=1e-12)
    # a run resumed from last.pt remembers the best of the evaluations before it (last.pt is
    # written before the final evaluation)
    before = min(v for v, s in losses if s < 12)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["best"]["value"] == pytest.approx(before, rel=1e-12)


def test_best_by_max_and_an_unknown_metric_writes_no_best(tmp_path):
    make_trainer(_cfg(4, eval_every=2, best_metric="heldout_loss", best_mode="max"), tmp_path / "max").fit()
    rows = list(csv.DictReader(open(tmp_path / "max" / "eval_log.csv")))
    assert load_checkpoint(tmp_path / "max" / "checkpoints" / "best.pt")["best"]["value"] == pytest.approx(
        max(float(r["heldout_loss"]) for r in rows), rel=1e-12)
    make_trainer(_cfg(4, eval_every=2, best_metric="no_such_metric"), tmp_path / "none").fit()
    assert not (tmp_path / "none" / "checkpoints" / "best.pt").exists()


@pytest.mark.parametrize("kw, needle", [({"keep": 0}, "train.keep"), ({"stop_check_every": 0}, "stop_check_every"),
                                        ({"best_mode": "lowest"}, "best_mode"),
                                        ({"preempt_signals": "SIGNOPE"}, "preempt_signals")])
def test_bad_keeping_options_are_value_errors_naming_them(tmp_path, kw, needle):
    with pytest.raises(ValueError, match=needle):
        make_trainer(_cfg(4, **kw), tmp_path)


def test_a_kill_between_the_rename_and_the_new_last_resumes_from_the_newest_step_file(tmp_path):
    make_trainer(_cfg(8, keep=3), tmp_path).fit()
    (tmp_path / "checkpoints" / "last.pt").unlink()         # as if killed right after the rename
    t = make_trainer(_cfg(12, keep=3, resume="auto"), tmp_path)
    assert t.step == 6
    t.fit()
    assert [s for s, _ in kept_steps(tmp_path / "checkpoints")] == [10, 8]
