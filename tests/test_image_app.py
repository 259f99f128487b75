"""Image sets in the data registry, the U-Net in the model registry, the digits preset through the app."""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

import scoresde as sd
from scoresde.apps import train as train_app
from scoresde.data import build_dataset
from scoresde.data.images import DIGITS_LEVELS, digits_split, from_model_range
from scoresde.nn import build_model
from scoresde.training import build_from_config

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_unet_is_registered_and_sized_by_the_data_shape():
    net = build_model("unet", data_shape=[3, 16, 16], nf=8, ch_mult=[1, 2], num_res_blocks=1)
    x = torch.randn(2, 3, 16, 16)
    assert net(x, torch.rand(2)).shape == x.shape
    with pytest.raises(ValueError, match="square images"):
        build_model("unet", data_shape=[2])


def test_digits_dataset_is_the_digits_split_in_model_space():
    data = build_dataset("digits", n_test=300, seed=0)
    xtr, _, xte, _ = digits_split(n_test=300, seed=0)
    assert data.event_shape == (1, 8, 8)
    assert torch.equal(data.train, xtr) and torch.equal(data.test, xte)
    # data space is intensity in [0, 1]: level k -> k / 16
    torch.testing.assert_close(data.scaler.to_data(data.test), (from_model_range(xte, DIGITS_LEVELS).float() / 16))


def test_dequantized_digits_draw_fresh_noise_inside_the_level_bins():
    data = build_dataset("digits", dequantize=True)
    g = torch.Generator().manual_seed(0)
    a, b = data.batch(512, g), data.batch(512, g)
    assert a.shape == (512, 1, 8, 8) and not torch.equal(a, b)
    frac = ((a + 1) * DIGITS_LEVELS / 2) % 1          # position inside the level's bin
    assert frac.min() >= 0 and abs(float(frac.mean()) - 0.5) < 0.01   # U[0, 1): mean 1/2, se 0.0016
    assert data.test.min() >= -1 and data.test.max() < 1


def test_image_folder_dataset_reads_written_images(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8), "RGB").save(tmp_path / f"{i:02d}.png")
    data = build_dataset("image_folder", root=str(tmp_path), size=8, channels=1, n_test=4)
    assert data.event_shape == (1, 8, 8) and data.train.shape[0] == 8 and data.test.shape[0] == 4
    assert data.train.min() >= -1 and data.train.max() <= 1
    with pytest.raises(ValueError, match="n_test"):
        build_dataset("image_folder", root=str(tmp_path), size=8, n_test=12)


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="train", overrides=list(overrides)), resolve=True)


def test_unet_and_image_data_config_typos_fail_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="nff"):
        _compose(["model=unet", "data=digits", "model.nff=3"])
    with pytest.raises(ConfigCompositionException, match="n_tset"):
        _compose(["data=digits", "data.n_tset=3"])
    with pytest.raises(ValueError, match="root"):
        build_dataset("image_folder")


def test_digits_preset_composes_into_the_unet_on_digits():
    cfg = _compose(["experiment=digits"])
    assert (cfg["model"]["name"], cfg["data"]["name"], cfg["sampler"]["name"]) == ("unet", "digits", "pc")
    model, data, _ = build_from_config(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"digits preset U-Net: {n_params} parameters")
    assert 0.5e6 < n_params < 1e6
    assert model(data.test[:2], torch.full((2,), 0.5)).shape == (2, 1, 8, 8)


def _run_app(run_dir, monkeypatch, extra):
    argv = ["scoresde-train", "experiment=digits", f"hydra.run.dir={run_dir}", "train.progress=false",
            "train.threads=null", "train.tensorboard=false", *extra]
    monkeypatch.setattr(sys, "argv", argv)
    train_app.train_main()
    for f in ("checkpoints/last.pt", "metrics.json", "samples.png", "train_log.csv"):
        assert (run_dir / f).is_file(), f
    model = sd.load_model(run_dir / "checkpoints" / "last.pt")
    out = sd.sample(model, model.sde, (3, 1, 8, 8), sampler="pc", predictor="reverse_diffusion",
                    corrector="none", steps=3, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (3, 1, 8, 8) and torch.isfinite(out.x).all()
    return json.loads((run_dir / "metrics.json").read_text())


def test_digits_preset_runs_end_to_end_with_a_tiny_unet(tmp_path, monkeypatch):
    metrics = _run_app(tmp_path / "run", monkeypatch,
                       ["train.steps=3", "train.batch_size=8", "train.log_every=1", "model.nf=8",
                        "eval.n_samples=4", "sampler.steps=3"])
    assert metrics["step"] == 3 and np.isfinite(metrics["heldout_loss"])


@pytest.mark.slow
def test_digits_preset_trains_a_few_steps_end_to_end(tmp_path, monkeypatch):
    metrics = _run_app(tmp_path / "run", monkeypatch,
                       ["train.steps=20", "train.log_every=10", "eval.n_samples=16", "sampler.steps=20"])
    assert metrics["step"] == 20 and metrics["train_loss"] < 1.0


class _GaussianScore(torch.nn.Module):
    """The exact score of N(0, s^2 I) data under the VP SDE, with what the likelihood app reads
    from a loaded checkpoint (``.sde``, ``.checkpoint``)."""

    def __init__(self, s: float, data_cfg: dict):
        super().__init__()
        self.s2 = s * s
        self.sde = sd.VPSDE()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.checkpoint = {"step": 0, "config": {"data": data_cfg}}

    def forward(self, x, t):
        al, sg = self.sde.mean_coef(t), self.sde.std(t)
        return -x / (al ** 2 * self.s2 + sg ** 2).reshape(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize("dequantize", [False, True])
def test_likelihood_app_bits_per_dim_is_the_dequantized_bound_on_the_training_grid(dequantize):
    """For data N(0, s^2 I) in model space the bound E_u log p(x_u) + D log(width) has a closed form,
    E[(c + w u)^2] = c^2 + c w + w^2 / 3 per pixel for x_u = c + w u: the cells must sit where the
    model was trained (centred on the plain grid 2k/16 - 1, or [2k/17 - 1, 2(k+1)/17 - 1) when it
    was trained on dequantized levels), and the digits have 17 levels, not 256."""
    from scoresde.apps.likelihood import checkpoint_likelihood

    s, L, n = 0.6, DIGITS_LEVELS, 64
    model = _GaussianScore(s, {"name": "digits", "n_test": 300, "seed": 0, "dequantize": dequantize})
    out = checkpoint_likelihood(model, n=n, batch_size=40, rtol=1e-6, atol=1e-6, eps=1e-5, seed=1)
    data = build_dataset("digits", n_test=300, seed=0, dequantize=dequantize)
    k = from_model_range(data.test[:n], L, dequantized=dequantize).double()
    w = 2.0 / L if dequantize else 2.0 / (L - 1)
    c = -1.0 + k * w if dequantize else -1.0 + k * w - w / 2  # cell starts
    e_sq = (c ** 2 + c * w + w ** 2 / 3).reshape(n, -1).sum(1)
    D = 64
    logp = -0.5 * D * math.log(2 * math.pi * s * s) - e_sq / (2 * s * s)
    expect = float(-(logp + D * math.log(w)).mean())
    # Monte Carlo over one u per pixel: per-sample sd of the quadratic term over 64 pixels
    se = float(((w ** 2 / 12) ** 0.5 * (2 * c.abs() + w) / (2 * s * s)).reshape(n, -1).pow(2).sum(1).sqrt().mean()) / math.sqrt(n)
    assert out["levels"] == L
    assert out["nll"] == pytest.approx(expect, abs=4 * se + 1e-3)
    assert out["bits_per_dim"] == pytest.approx(out["nll"] / (D * math.log(2.0)), rel=1e-12)
    assert out["nfe"] == sum(out["nfe_per_batch"]) and len(out["nfe_per_batch"]) == 2
