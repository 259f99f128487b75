"""The training step makes no device-to-host transfer (issue 29.3): ``aten._local_scalar_dense``
(what ``.item()``, ``float(t)`` and ``if t:`` dispatch to) is counted over N steps: zero per step,
and a whole ``fit`` reads a constant number of values, not one per step.

AdamW's per-parameter step counters are excluded by identity: without ``capturable`` or ``fused``
torch keeps them on the host (asserted below) and reads them to form the bias corrections, which
is host arithmetic, not a transfer from the device."""

import pytest
import torch

from scoresde.bench.syncs import SyncCount

from test_train import make_trainer, tiny_config


def _step_counters(trainer):
    steps = [s["step"] for s in trainer.opt.state.values()]
    assert steps and all(s.device.type == "cpu" for s in steps)     # host-resident: reading them is no sync
    return steps


def _cfg(steps):
    cfg = tiny_config(steps, log_every=steps)
    # the default loss (sigma^2 weighting): with importance sampling losses.importance_norm reads its
    # constant Z from a float64 tensor on the host once a call (host arithmetic, no device transfer)
    cfg["loss"] = {"name": "dsm"}
    cfg["eval"] = {"n_nll": 0, "n_samples": 0, "bound": False}
    return cfg


@pytest.mark.parametrize("n", [5, 40])
def test_training_steps_read_nothing_back_from_the_device(tmp_path, n):
    t = make_trainer(_cfg(100), tmp_path)
    t.train_step()                                   # creates the optimizer state
    with SyncCount(_step_counters(t)) as reads:
        for _ in range(n):
            t.train_step()
    assert reads.n == 0


def test_a_fit_reads_a_constant_number_of_values_not_one_per_step(tmp_path):
    counts = []
    for n in (10, 60):
        t = make_trainer(_cfg(n), tmp_path / str(n))
        t.train_step()
        t.step = 0                                    # the state exists; fit runs all n steps
        with SyncCount(_step_counters(t)) as reads:
            t.fit()                                   # one log step, the final checkpoint, no evaluation
        counts.append(reads.n)
    assert counts[0] == counts[1] and counts[0] <= 8, counts


def test_a_nan_is_still_caught_at_the_next_log_step_and_nothing_is_written(tmp_path):
    from scoresde.training import TrainingDiverged
    cfg = tiny_config(12, log_every=5, ckpt_every=0)
    t = make_trainer(cfg, tmp_path)
    step = t.train_step

    def poisoned():
        if t.step == 2:
            with torch.no_grad():
                t.model.net.inp.weight.fill_(float("nan"))
        return step()

    t.train_step = poisoned
    with pytest.raises(TrainingDiverged, match=r"nan at step 2 \(noticed at step 5"):
        t.fit()
    assert not t.ckpt_path.exists()
