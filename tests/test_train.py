import hashlib
import json
import math
import os
import sys

import pytest
import torch

import scoresde as sd
from scoresde.checkpoints import CheckpointError, load_checkpoint, load_model, save_checkpoint
from scoresde.device import resolve_device
from scoresde.training import Trainer, TrainingDiverged, build_from_config, train


def tiny_config(steps=12, **train_kw):
    return {
        "seed": 3,
        "sde": {"name": "vp"},
        "model": {"name": "mlp", "width": 16, "depth": 1, "emb_dim": 8, "parameterization": "noise"},
        "data": {"name": "ring8", "n_test": 64},
        "loss": {"name": "dsm", "weighting": "likelihood", "importance_sampling": True},
        "optim": {"lr": 1e-3, "warmup": 3},
        "train": {"steps": steps, "batch_size": 32, "log_every": 4, "ckpt_every": 0, "progress": False,
                  "ema_decay": 0.9, **train_kw},
        "eval": {"n_nll": 16, "n_samples": 40, "rtol": 1e-3, "atol": 1e-3},
        "sampler": {"name": "ode"},
    }


def make_trainer(config, out_dir):
    model, data, loss = build_from_config(config)
    return Trainer(model, data, loss, optim=config["optim"], train=config["train"], eval=config["eval"],
                   sampler=config["sampler"], out_dir=out_dir, config=config, seed=config["seed"])


def run_steps(trainer, n):
    for _ in range(n):
        trainer.train_step()


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_resume_continues_bit_exactly(tmp_path):
    n = 12
    straight = make_trainer(tiny_config(n), tmp_path / "a")
    run_steps(straight, n)
    first = make_trainer(tiny_config(n), tmp_path / "b")
    run_steps(first, n // 2)
    ckpt = first.save()
    # perturb the global RNG: resume must restore it
    torch.rand(100)
    second = make_trainer(tiny_config(n, resume=str(ckpt)), tmp_path / "c")
    assert second.step == n // 2
    run_steps(second, n - n // 2)
    for a, b in [(straight.model, second.model), (straight.ema.model, second.ema.model)]:
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(pa, pb), name
    sa, sb = straight.opt.state_dict()["state"], second.opt.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)


def test_interrupted_fit_resumed_from_its_checkpoint_matches_a_straight_fit(tmp_path, monkeypatch):
    n = 8
    cfg = tiny_config(n, ckpt_every=n // 2)
    cfg["eval"] = {"n_nll": 0, "n_samples": 0}
    straight = make_trainer(cfg, tmp_path / "a")
    straight.fit()
    crashed = make_trainer(cfg, tmp_path / "b")
    step = crashed.train_step

    def crash_after_checkpoint():
        if crashed.step == n // 2:
            raise KeyboardInterrupt
        return step()

    monkeypatch.setattr(crashed, "train_step", crash_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    resumed = make_trainer({**cfg, "train": {**cfg["train"], "resume": str(crashed.ckpt_path)}}, tmp_path / "c")
    assert resumed.step == n // 2
    resumed.fit()
    for a, b in [(straight.model, resumed.model), (straight.ema.model, resumed.ema.model)]:
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(pa, pb), name


def test_checkpoint_holds_everything(tmp_path):
    t = make_trainer(tiny_config(4), tmp_path)
    run_steps(t, 4)
    state = load_checkpoint(t.save())
    for key in ("model", "ema", "optimizer", "step", "rng", "config", "spec", "data"):
        assert key in state
    assert state["step"] == 4 and state["config"]["seed"] == 3
    # every generator training draws from, and no other (numpy's and Python's are not used)
    assert set(state["rng"]) == {"torch", "cuda", "train"}


def test_training_draws_on_neither_numpy_nor_pythons_global_generator(tmp_path):
    """Why the checkpoint does not save them: other global numpy / random states, same run."""
    import random
    import numpy as np
    states = []
    for k, seed in enumerate((1, 2)):
        np.random.seed(seed)
        random.seed(seed)
        t = make_trainer(tiny_config(6, ckpt_every=3), tmp_path / str(k))
        run_steps(t, 6)
        states.append(t.state_dict())
    for (name, a), b in zip(states[0]["model"].items(), states[1]["model"].values()):
        assert torch.equal(a, b), name
    assert torch.equal(states[0]["rng"]["train"], states[1]["rng"]["train"])


def test_resume_auto_starts_fresh_then_continues_from_the_run_dirs_checkpoint(tmp_path):
    cfg = tiny_config(6, resume="auto")
    first = make_trainer(cfg, tmp_path)
    assert first.step == 0 and not first.ckpt_path.exists()
    run_steps(first, 4)
    first.save()
    again = make_trainer(cfg, tmp_path)               # the same command, the same run dir
    assert again.step == 4
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint({"format": "x", "v": torch.ones(3)}, path)
    before = _digest(path)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "x", "v": torch.zeros(3)}, path)
    assert _digest(path) == before
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]           # no temp file left behind


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        make_trainer(tiny_config(resume=str(tmp_path / "nope.pt")), tmp_path)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    t = make_trainer(tiny_config(2), tmp_path)
    run_steps(t, 2)
    good = t.save()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    for bad in (truncated, garbage):
        with pytest.raises(CheckpointError, match="corrupt"):
            load_model(bad)
    with pytest.raises(CheckpointError, match="not a scoresde checkpoint"):
        load_checkpoint(foreign)


def test_nan_loss_stops_without_overwriting_the_checkpoint(tmp_path):
    cfg = tiny_config(10, ckpt_every=2)
    t = make_trainer(cfg, tmp_path)
    run_steps(t, 2)
    t.save()
    before = _digest(t.ckpt_path)
    with torch.no_grad():
        t.model.net.inp.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match=r"nan at step 2.*step 2\) is kept"):
        t.fit()
    assert _digest(t.ckpt_path) == before
    assert not (tmp_path / "metrics.json").exists()


def test_load_model_returns_the_ema_score_model(tmp_path):
    cfg = tiny_config(6)
    cfg["eval"] = {"n_nll": 0, "n_samples": 0}
    metrics = train(cfg, tmp_path)
    model = load_model(tmp_path / "checkpoints" / "last.pt")
    assert isinstance(model, sd.ScoreModel) and isinstance(model.sde, sd.VPSDE)
    assert not model.training and model.checkpoint["step"] == 6
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["ema"][k])
    x = torch.randn(8, 2)
    t = torch.rand(8)
    assert model(x, t).shape == (8, 2)
    # the loaded model is a score function for the samplers and for the likelihood
    out = sd.sample(model, model.sde, (8, 2), sampler="ode", generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (8, 2) and torch.isfinite(out.x).all()
    ll = sd.log_likelihood(model, model.sde, x, divergence="exact", rtol=1e-3, atol=1e-3, eps=1e-5)
    assert ll.logp.shape == (8,) and torch.isfinite(ll.logp).all()
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 6 == metrics["step"]


def test_fit_writes_metrics_samples_and_logs(tmp_path):
    metrics = train(tiny_config(8, eval_every=4), tmp_path)
    for f in ("checkpoints/last.pt", "metrics.json", "samples.png", "train_log.csv", "eval_log.csv",
              "samples/step_0000004.png"):
        assert (tmp_path / f).is_file(), f
    for key in ("train_loss", "heldout_loss", "nll", "kl", "kl_entropy", "entropy", "mode_w2", "sample_nfe"):
        assert key in metrics, key
    mix = sd.ring8()                                   # well-separated modes: H = log 8 + H(N(0, 0.25^2 I))
    assert abs(metrics["entropy"] - (math.log(8) + float(mix.gaussian_entropies()[0]))) < 1e-9
    assert abs(metrics["kl_entropy"] - (metrics["nll"] - metrics["entropy"])) < 1e-9
    rows = (tmp_path / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 3      # header + steps 4, 8


def test_device_auto_picks_cpu_without_cuda():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("tpu:banana")


def test_bad_options_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="setps"):
        make_trainer({**tiny_config(), "train": {"setps": 3}}, tmp_path)
    with pytest.raises(ValueError, match="cosine"):
        make_trainer({**tiny_config(), "optim": {"schedule": "step"}}, tmp_path)
    with pytest.raises(ValueError, match="dsm"):
        make_trainer({**tiny_config(), "loss": {"name": "sliced"}}, tmp_path)
    with pytest.raises(ValueError, match="bf16"):
        make_trainer({**tiny_config(), "train": {"amp": "fp8"}}, tmp_path)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    t = make_trainer(tiny_config(3, amp="bf16"), tmp_path)
    run_steps(t, 3)
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


@pytest.mark.slow
def test_default_config_fits_ring8_to_small_kl(tmp_path):
    """The default app config (ring8, VP, 3000 steps) reaches KL(data || model) well under 0.05 nats
    (paired estimate on 500 held-out points; the benchmark uses 2,000)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    conf = os.path.join(os.path.dirname(__file__), "..", "conf")
    with initialize_config_dir(config_dir=os.path.abspath(conf), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="train", overrides=[
            "eval.n_nll=500", "eval.n_samples=2000", "train.progress=false"]), resolve=True)
    m = train(cfg, tmp_path)
    assert m["kl"] < 0.05 + 3 * m["kl_se"]
    assert m["mode_w2"] < 0.1


def test_reported_training_bound_is_the_constant_minus_the_scaled_loss_to_1e_10(tmp_path):
    """heldout_nll_bound = -(mean_i [C(x_i) - (T - eps) l_i] + log|det scaler|), l_i the likelihood-weighted,
    importance-sampled, sum-reduced DSM loss with the trainer's t and noise (recomputed here by hand)."""
    from scoresde.losses import bound_constant, importance_norm, importance_time
    cfg = tiny_config(3)
    cfg["loss"] = {"name": "dsm"}                     # trained with sigma^2 weighting: the bound is still likelihood-weighted
    cfg["eval"] = {"n_nll": 0, "n_samples": 0, "eps": 1e-4, "seed": 5}
    t = make_trainer(cfg, tmp_path)
    run_steps(t, 3)
    t.ema.model.double()
    t.data.test = t.data.test.double()
    out = t.heldout_bound()
    x0, sde, eps = t.data.test, t.ema.model.sde, 1e-4
    g = torch.Generator().manual_seed(5)
    tt = importance_time(sde, x0.shape[0], eps, generator=g, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    xt = sde.mean_coef(tt)[:, None] * x0 + sde.std(tt)[:, None] * z
    with torch.no_grad():
        s = t.ema.model(xt, tt)
    loss = 0.5 * importance_norm(sde, eps) / (sde.T - eps) * (sde.std(tt)[:, None] * s + z).pow(2).sum(1)
    bound = bound_constant(sde, x0, eps) - (sde.T - eps) * loss
    want = -(bound.mean() + t.data.scaler.log_det(t.data.event_shape))
    assert abs(out["heldout_nll_bound"] - float(want)) < 1e-10
    assert abs(out["heldout_bound_loss"] - float(loss.mean())) < 1e-10
    assert abs(out["heldout_nll_bound_se"] - float(bound.std() / math.sqrt(len(bound)))) < 1e-10
    assert "heldout_bpd_bound" not in out                     # ring8 is not an image set


def test_training_bound_keys_in_metrics_json_and_eval_log(tmp_path):
    metrics = train(tiny_config(4), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("heldout_bound_loss", "heldout_nll_bound", "heldout_nll_bound_se"):
        assert key in saved and math.isfinite(saved[key]) and saved[key] == metrics[key], key
    assert "heldout_nll_bound" in (tmp_path / "eval_log.csv").read_text().splitlines()[0]
    cfg = tiny_config(4)
    cfg["eval"] = {"n_nll": 0, "n_samples": 0, "bound": False}
    assert "heldout_nll_bound" not in train(cfg, tmp_path / "off")


@pytest.mark.parametrize("dequantize", [False, True])
def test_image_training_bound_reports_bits_per_dim(tmp_path, dequantize):
    cfg = {"seed": 0, "sde": {"name": "vp"},
           "model": {"name": "unet", "nf": 8, "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": []},
           "data": {"name": "digits", "n_test": 16, "dequantize": dequantize},
           "train": {"steps": 2, "batch_size": 8, "log_every": 1, "ckpt_every": 0, "progress": False},
           "eval": {"n_nll": 0, "n_samples": 0, "bound_repeats": 2}, "sampler": {"name": "ode"}}
    t = make_trainer({**cfg, "optim": {}, "loss": {"name": "dsm"}}, tmp_path)
    run_steps(t, 2)
    out = t.heldout_bound()
    D = 64
    assert out["heldout_bpd_bound"] == pytest.approx(out["heldout_nll_bound"] / (D * math.log(2)), rel=1e-12)
    # an upper bound on -log2 P(k) / D of a model that has barely trained: positive, finite
    assert 0 < out["heldout_bpd_bound"] < 100 and out["heldout_bpd_bound_se"] > 0
    with pytest.raises(ValueError, match="bound_repeats"):
        t.eval_cfg.bound_repeats = 0
        t.heldout_bound()


class _Stream:
    """A stand-in for sys.stderr that says whether it is a terminal and keeps what is written."""

    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s):
        self.text += s
        return len(s)

    def flush(self):
        pass


def _quiet_config(steps=8):
    cfg = tiny_config(steps, progress=True)
    cfg["eval"] = {"n_nll": 0, "n_samples": 0, "bound": False}
    return cfg


def test_without_a_terminal_fit_logs_a_progress_line_every_log_every_steps(tmp_path, monkeypatch, caplog):
    import logging
    import re
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))       # nohup, SLURM: no tqdm bar
    with caplog.at_level(logging.INFO, logger="scoresde"):
        train(_quiet_config(8), tmp_path)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [int(re.match(r"step (\d+)/8 ", m).group(1)) for m in lines] == [4, 8], lines
    pattern = r"step 4/8 \(50%\)  loss \d+\.\d{4}  lr [0-9.e-]+  \d+\.\d steps/s  ETA (\d+m\d\ds|\d+h\d\dm)"
    assert re.fullmatch(pattern, lines[0]), lines[0]
    assert sys.stderr.text == ""


def test_on_a_terminal_fit_draws_the_bar_and_logs_no_progress_lines(tmp_path, monkeypatch, caplog):
    import logging
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    with caplog.at_level(logging.INFO, logger="scoresde"):
        train(_quiet_config(8), tmp_path)
    assert not [r for r in caplog.records if r.getMessage().startswith("step ")]
    assert "train" in sys.stderr.text and "8/8" in sys.stderr.text


def _documented_keys():
    """The keys docs/outputs.md names in backticks."""
    import re
    from pathlib import Path
    page = Path(__file__).resolve().parent.parent / "docs" / "outputs.md"
    return set(re.findall(r"`([a-z][a-z0-9_]*)`", page.read_text()))


def test_metrics_json_puts_each_distance_beside_its_exact_sample_floor_and_every_key_is_documented(tmp_path):
    cfg = tiny_config(4)
    cfg["eval"] = {"n_nll": 16, "n_samples": 400, "rtol": 1e-3, "atol": 1e-3}
    cfg["sampler"] = {"name": "dpm_solver", "steps": 4}
    train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    keys = list(metrics)
    assert keys[keys.index("mode_w2") + 1] == "mode_w2_floor"
    assert keys[keys.index("mode_weight_error") + 1] == "mode_weight_error_floor"
    mix = sd.ring8()
    assert metrics["mode_w2_floor"] == sd.metrics.exact_floor(mix, 400, repeats=5, seed=0)
    # a 4-step model sits far above what exact samples score at the same n
    assert 0 < metrics["mode_w2_floor"] < metrics["mode_w2"]
    assert 0 < metrics["mode_weight_error_floor"] < 0.2
    assert set(metrics) - _documented_keys() == set()
