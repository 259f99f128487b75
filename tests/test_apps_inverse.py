"""Inverse problems in the sample app (scoresde/apps/_inverse.py, conf/inverse/): inpainting,
super-resolution and colorization on a tiny U-Net trained a few steps on the digits."""

import json
import sys

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from PIL import Image

import scoresde as sd
from scoresde.apps import _inverse, sample as sample_app
from scoresde.apps import train as _train_app  # noqa: F401  (stores train_schema)
from scoresde.checkpoints import load_score
from scoresde.data import build_dataset

from _tiny import compose_conf as _compose

TINY_UNET = ["experiment=digits", "train.steps=2", "train.batch_size=16", "train.log_every=1", "train.progress=false",
             "train.device=cpu", "train.tensorboard=false", "train.threads=1", "model.nf=8", "model.attn_resolutions=[]",
             "data.n_test=32", "eval.n_samples=0", "train.ckpt_every=2"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("digits")
    cfg = OmegaConf.to_container(_compose("train", TINY_UNET), resolve=True)
    from scoresde.training import train
    train(cfg, run_dir)
    return run_dir / "checkpoints" / "last.pt"


def _app(monkeypatch, argv):
    monkeypatch.setattr(sys, "argv", ["app"] + argv)
    sample_app.main()


def _held_out():
    data = build_dataset("digits", n_test=32)
    return data.scaler.to_data(data.test)


@pytest.mark.parametrize("method", ["smc", "replacement", "dps"])
def test_inpainting_keeps_the_observed_pixels_and_writes_the_png(ckpt, tmp_path, monkeypatch, method):
    _app(monkeypatch, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}", "inverse.op=mask", "inverse.mask=lower_half",
                       f"inverse.method={method}", "inverse.n=3", "inverse.samples=2", "inverse.steps=4", "seed=1"])
    x = torch.load(tmp_path / "samples.pt")
    orig = _held_out()[:3]
    assert x.shape == (3, 2, 1, 8, 8) and torch.isfinite(x).all()
    # noise 0: the upper four rows are the original's (to float rounding of the data <-> model map)
    torch.testing.assert_close(x[:, :, :, :4], orig[:, None, :, :4].expand(3, 2, 1, 4, 8), rtol=0, atol=1e-6)
    # the unobserved rows are drawn, not copied
    assert not torch.allclose(x[:, :, :, 4:], orig[:, None, :, 4:].expand(3, 2, 1, 4, 8), atol=1e-3)
    torch.testing.assert_close(torch.load(tmp_path / "observation.pt"), orig.reshape(3, -1)[:, :32])
    png = Image.open(tmp_path / "inverse.png")
    assert png.size[0] > png.size[1] > 100
    info = json.loads((tmp_path / "sample.json").read_text())
    assert info["method"] == method and info["n"] == 3 and info["observed_fraction"] == 0.5 and info["nfe"] > 0


def test_app_is_the_library_call_in_model_space(ckpt, tmp_path, monkeypatch):
    """super-resolution with observation noise: the app's samples are sample_posterior's on
    y_model = scale (y - A shift) with noise std scale * noise_std, mapped back to data space."""
    _app(monkeypatch, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}", "inverse.op=downsample", "inverse.factor=2",
                       "inverse.method=projection", "inverse.n=2", "inverse.samples=1", "inverse.steps=3",
                       "inverse.noise_std=0.1", "seed=5"])
    model = sd.load_model(ckpt)
    g = torch.Generator().manual_seed(5)
    op = sd.ops.Downsample(2, noise_std=0.2)
    orig = _held_out()[:2]
    y = op.forward(orig) + 0.1 * torch.randn((2, 1, 4, 4), generator=g)
    torch.testing.assert_close(torch.load(tmp_path / "observation.pt"), y, rtol=0, atol=0)
    ref = sd.sample_posterior(model, model.sde, op, (y - 0.5) * 2.0, method="projection", sampler="pc",
                              generator=g, steps=3, predictor="reverse_diffusion")
    torch.testing.assert_close(torch.load(tmp_path / "samples.pt")[:, 0], ref.x / 2.0 + 0.5, rtol=0, atol=0)


def test_observation_from_image_and_tensor_files_and_mask_files(ckpt, tmp_path, monkeypatch):
    orig = _held_out()[:2]
    Image.fromarray((orig[0, 0].numpy() * 255).round().astype(np.uint8), "L").resize((32, 32), Image.NEAREST) \
        .save(tmp_path / "digit.png")
    keep = torch.zeros(8, 8, dtype=torch.bool)
    keep[:, :3] = True
    np.save(tmp_path / "mask.npy", keep.numpy())
    _app(monkeypatch, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'a'}", "inverse.op=mask",
                       f"inverse.mask={tmp_path / 'mask.npy'}", f"inverse.data={tmp_path / 'digit.png'}",
                       "inverse.samples=2", "inverse.steps=3", "inverse.method=projection"])
    x = torch.load(tmp_path / "a" / "samples.pt")
    # the PNG is 4x the model's size, box-filtered back to 8 x 8: the original up to 8-bit rounding
    assert x.shape == (1, 2, 1, 8, 8)
    torch.testing.assert_close(x[0, :, 0, :, :3], orig[0, 0, :, :3].expand(2, 8, 3), rtol=0, atol=1 / 255)
    # a tensor file of the observation's shape (low resolution) is y itself: no original column
    low = sd.ops.Downsample(2).forward(orig)
    torch.save(low, tmp_path / "low.pt")
    _app(monkeypatch, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'b'}", "inverse.op=downsample",
                       f"inverse.data={tmp_path / 'low.pt'}", "inverse.samples=1", "inverse.steps=3",
                       "inverse.method=smc"])
    xb = torch.load(tmp_path / "b" / "samples.pt")
    info = json.loads((tmp_path / "b" / "sample.json").read_text())
    assert xb.shape == (2, 1, 1, 8, 8) and info["original_given"] is False
    torch.testing.assert_close(sd.ops.Downsample(2).forward(xb[:, 0]), low, rtol=0, atol=1e-5)
    assert (tmp_path / "b" / "inverse.png").stat().st_size > 1000


def test_named_masks():
    m = _inverse.named_mask("lower_half", (1, 8, 8))
    assert m[:, :4].all() and not m[:, 4:].any()
    c = _inverse.named_mask("center", (3, 8, 8))
    assert c.shape == (3, 8, 8) and int((~c[0]).sum()) == 16 and not c[:, 2:6, 2:6].any()
    r = _inverse.named_mask("random", (1, 32, 32), 0.25, torch.Generator().manual_seed(0))
    assert abs(float(r.float().mean()) - 0.25) < 0.05   # 1,024 pixels: se 0.014
    assert _inverse.named_mask("left_half", (1, 8, 8))[:, :, 4:].all()


def test_bad_inverse_options_are_clear_errors(ckpt, tmp_path):
    loaded = load_score(str(ckpt), "cpu")
    run = lambda **o: _inverse.inverse_checkpoint(loaded, {"steps": 2, "n": 1, **o})  # noqa: E731
    with pytest.raises(ValueError, match="unknown inverse.op 'blur'; valid: mask, downsample"):
        run(op="blur")
    with pytest.raises(ValueError, match="unknown inverse.method 'magic'; valid: .*smc"):
        run(op="mask", method="magic")
    with pytest.raises(ValueError, match="unknown inverse.mask 'lower'; valid names: lower_half"):
        run(op="mask", mask="lower")
    with pytest.raises(ValueError, match=r"factor=3 does not divide the image size \(8, 8\)"):
        run(op="downsample", factor=3)
    with pytest.raises(ValueError, match="grayscale needs RGB"):
        run(op="grayscale")
    np.save(tmp_path / "bad.npy", np.ones((7, 8), dtype=bool))
    with pytest.raises(ValueError, match=r"shape \(7, 8\); the data's is \(1, 8, 8\)"):
        run(op="mask", mask=str(tmp_path / "bad.npy"))
    with pytest.raises(FileNotFoundError, match="inverse.data file not found"):
        run(op="mask", data=str(tmp_path / "none.png"))
    with pytest.raises(FileNotFoundError, match="inverse.mask file not found"):
        run(op="mask", mask=str(tmp_path / "none.npy"))
    torch.save(torch.zeros(2, 5, 5), tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match=r"shape \(2, 5, 5\); expected"):
        run(op="mask", data=str(tmp_path / "wrong.pt"))
    with pytest.raises(ValueError, match="inverse.matrix=FILE"):
        run(op="matrix")
    with pytest.raises(ValueError, match="own loop"):
        run(op="mask", method="smc", sampler="ode")


def test_bad_names_exit_with_one_line(ckpt, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        _app(monkeypatch, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}", "inverse.op=mask", "inverse.mask=middle"])
    assert e.value.code == 1 and "unknown inverse.mask 'middle'" in capsys.readouterr().err


def test_inverse_group_is_schema_checked():
    cfg = _compose("sample", ["checkpoint=x"])
    assert cfg.inverse.op is None and cfg.inverse.method == "smc"
    with pytest.raises(ConfigCompositionException, match="mthod"):
        _compose("sample", ["checkpoint=x", "inverse.mthod=smc"])
    with pytest.raises(ConfigCompositionException, match="steps"):
        _compose("sample", ["checkpoint=x", "inverse.steps=many"])


@pytest.fixture(scope="module")
def rgb_ckpt(tmp_path_factory):
    """A tiny U-Net trained two steps on 24 coloured 8 x 8 PNGs (an image folder, RGB)."""
    root = tmp_path_factory.mktemp("rgb")
    g = np.random.default_rng(0)
    for i in range(24):
        base = g.integers(0, 256, size=3)
        ramp = np.linspace(0, 60, 8)[None, :, None] * g.choice([-1, 1], size=3)
        img = np.clip(base[None, None, :] + ramp, 0, 255).astype(np.uint8).repeat(8, 0)[:8]
        Image.fromarray(img, "RGB").save(root / f"{i:02d}.png")
    run_dir = tmp_path_factory.mktemp("rgb_run")
    cfg = OmegaConf.to_container(_compose("train", TINY_UNET + [
        "data=image_folder", f"data.root={root}", "data.size=8", "data.channels=3", "data.n_test=4"]), resolve=True)
    from scoresde.training import train
    train(cfg, run_dir)
    return run_dir / "checkpoints" / "last.pt", root


def test_colorization_is_the_library_call_in_model_space(rgb_ckpt, tmp_path, monkeypatch):
    """inverse.op=grayscale end to end: the observation is the held-out RGB images' luminance, and
    the samples are sample_posterior's with y_model = scale (y - A shift), mapped back to data space."""
    ckpt, root = rgb_ckpt
    _app(monkeypatch, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}", "inverse.op=grayscale",
                       "inverse.weights=luminance", "inverse.method=projection", "inverse.n=2", "inverse.samples=2",
                       "inverse.steps=3", "seed=3"])
    x = torch.load(tmp_path / "samples.pt")
    assert x.shape == (2, 2, 3, 8, 8) and torch.isfinite(x).all()
    data = build_dataset("image_folder", root=str(root), size=8, channels=3, n_test=4)
    orig = data.scaler.to_data(data.test)[:2]
    op = sd.ops.Grayscale("luminance")
    y = op.forward(orig)
    torch.testing.assert_close(torch.load(tmp_path / "observation.pt"), y, rtol=0, atol=0)
    model = sd.load_model(ckpt)
    g = torch.Generator().manual_seed(3)
    offset = op.forward(torch.full((1, 3, 8, 8), 0.5))
    ref = sd.sample_posterior(model, model.sde, op, ((y - offset) * 2.0).repeat_interleave(2, dim=0),
                              method="projection", sampler="pc", generator=g, steps=3, predictor="reverse_diffusion")
    torch.testing.assert_close(x.reshape(4, 3, 8, 8), ref.x / 2.0 + 0.5, rtol=0, atol=0)
    # two draws of one gray image differ in colour: the channels are sampled, not copied
    assert not torch.allclose(x[:, 0], x[:, 1], atol=1e-3)
    info = json.loads((tmp_path / "sample.json").read_text())
    assert info["inverse"]["op"] == "grayscale" and info["observation_shape"] == [1, 8, 8]
    assert (tmp_path / "inverse.png").stat().st_size > 100


def test_matrix_op_from_a_file_is_the_library_call(ckpt, tmp_path, monkeypatch):
    """inverse.op=matrix end to end with A [16, 64] from a .pt file and observation noise."""
    A = torch.randn(16, 64, generator=torch.Generator().manual_seed(7)) / 8.0
    torch.save(A, tmp_path / "A.pt")
    _app(monkeypatch, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'run'}", "inverse.op=matrix",
                       f"inverse.matrix={tmp_path / 'A.pt'}", "inverse.method=dps", "inverse.n=2", "inverse.samples=1",
                       "inverse.steps=3", "inverse.noise_std=0.05", "seed=4"])
    x = torch.load(tmp_path / "run" / "samples.pt")
    assert x.shape == (2, 1, 1, 8, 8) and torch.isfinite(x).all()
    model = sd.load_model(ckpt)
    g = torch.Generator().manual_seed(4)
    op = sd.ops.Matrix(A, noise_std=0.1, event_shape=(1, 8, 8))
    orig = _held_out()[:2]
    y = op.forward(orig) + 0.05 * torch.randn((2, 16), generator=g)
    torch.testing.assert_close(torch.load(tmp_path / "run" / "observation.pt"), y, rtol=0, atol=0)
    offset = op.forward(torch.full((1, 1, 8, 8), 0.5))
    ref = sd.sample_posterior(model, model.sde, op, (y - offset) * 2.0, method="dps", sampler="pc", generator=g,
                              steps=3, predictor="reverse_diffusion")
    torch.testing.assert_close(x[:, 0], ref.x / 2.0 + 0.5, rtol=0, atol=0)
    info = json.loads((tmp_path / "run" / "sample.json").read_text())
    assert info["inverse"]["op"] == "matrix" and info["observation_shape"] == [16]
