"""``checkpoint=diffusers:PATH`` in the sample and likelihood apps (scoresde/checkpoints.py's
load_score): a tiny random UNet2DModel + DDPMScheduler saved with save_pretrained in tmp_path
(nothing downloaded), run through both apps; missing and foreign folders fail with one line."""

import json
import math
import sys

import pytest
import torch

import scoresde as sd
from scoresde.apps import likelihood as likelihood_app, sample as sample_app
from scoresde.checkpoints import load_score

diffusers = pytest.importorskip("diffusers", reason="the interop extra: pip install 'scoresde[interop]'")
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402


def _tiny_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory):
    """A pipeline folder (model_index.json, unet/, scheduler/) and a folder of 8x8 gray images."""
    root = tmp_path_factory.mktemp("ddpm")
    DDPMPipeline(unet=_tiny_unet(), scheduler=DDPMScheduler()).save_pretrained(root / "model")
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    (root / "images").mkdir()
    for i in range(6):
        k = torch.randint(0, 256, (8, 8), generator=g, dtype=torch.uint8)
        Image.fromarray(k.numpy(), mode="L").save(root / "images" / f"{i}.png")
    return root


def _app(monkeypatch, main, argv):
    monkeypatch.setattr(sys, "argv", ["app"] + argv)
    main()


def test_load_score_of_a_diffusers_folder_is_from_diffusers_of_its_parts(ddpm_folder):
    loaded = load_score(f"diffusers:{ddpm_folder / 'model'}", device="cpu")
    score_fn, sde, shape, meta = loaded
    assert shape == (1, 8, 8) and meta["source"] == "diffusers" and meta["data"] is None
    # DDPM's linear table is the VP SDE with beta_min = N beta_start, beta_max = N beta_end
    assert type(sde) is sd.VPSDE and sde.beta_min == pytest.approx(0.1) and sde.beta_max == pytest.approx(20.0)
    direct = sd.interop.from_diffusers(_tiny_unet(), DDPMScheduler())
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.01, 0.4, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(score_fn(x, t), direct(x, t), rtol=0, atol=0)


@pytest.mark.parametrize("name,opts", [("ode", dict(method="rk4", steps=3)), ("sde", dict(steps=8))],
                         ids=["ode", "sde"])
def test_sample_app_on_a_diffusers_folder_writes_finite_pixels(ddpm_folder, tmp_path, monkeypatch, name, opts):
    _app(monkeypatch, sample_app.main, [f"checkpoint=diffusers:{ddpm_folder / 'model'}",
                                        f"hydra.run.dir={tmp_path}", "n=4", "device=cpu", f"sampler={name}"]
         + [f"sampler.{k}={v}" for k, v in opts.items()])
    x = torch.load(tmp_path / "samples.pt")
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    info = json.loads((tmp_path / "sample.json").read_text())
    assert info["source"] == "diffusers" and info["step"] is None and info["nfe"] > 0
    assert info["nfe"] == {"ode": 12, "sde": 8}[name]   # rk4: 4 evaluations a step
    assert (tmp_path / "samples.png").stat().st_size > 100
    # the same samples as the library call: data space is x / 2 + 1/2
    loaded = load_score(f"diffusers:{ddpm_folder / 'model'}", device="cpu")
    ref = sd.sample(loaded.score_fn, loaded.sde, (4, 1, 8, 8), sampler=name,
                    generator=torch.Generator().manual_seed(0), **opts).x
    torch.testing.assert_close(x, ref / 2 + 0.5, rtol=1e-5, atol=1e-5)


def test_likelihood_app_on_a_diffusers_folder_gives_bits_per_dim(ddpm_folder, tmp_path, monkeypatch):
    _app(monkeypatch, likelihood_app.main, [f"checkpoint=diffusers:{ddpm_folder / 'model'}",
                                            f"hydra.run.dir={tmp_path}", "data=image_folder",
                                            f"data.root={ddpm_folder / 'images'}", "data.size=8", "data.channels=1",
                                            "data.n_test=2", "n=2", "divergence=hutchinson", "rtol=1e-2",
                                            "atol=1e-2", "device=cpu"])
    out = json.loads((tmp_path / "likelihood.json").read_text())
    assert out["source"] == "diffusers" and out["n"] == 2 and out["dims"] == 64 and out["levels"] == 256
    assert math.isfinite(out["nll"]) and out["nfe"] > 0
    assert out["bits_per_dim"] == pytest.approx(out["nll"] / (64 * math.log(2.0)), rel=1e-12)
    # an untrained network scores random pixels: bits/dim is positive and finite, not below 0
    assert 0.0 < out["bits_per_dim"] < 100.0


def test_likelihood_of_a_diffusers_folder_needs_a_matching_data_set(ddpm_folder):
    ck = f"diffusers:{ddpm_folder / 'model'}"
    with pytest.raises(ValueError, match="carries no data set"):
        likelihood_app.checkpoint_likelihood(ck, n=2, device="cpu")
    with pytest.raises(ValueError, match=r"shape \(1, 4, 4\).*\(1, 8, 8\)"):
        likelihood_app.checkpoint_likelihood(ck, n=2, device="cpu", data=dict(
            name="image_folder", root=str(ddpm_folder / "images"), size=4, channels=1, n_test=2))


@pytest.mark.parametrize("app", [sample_app, likelihood_app], ids=["sample", "likelihood"])
@pytest.mark.parametrize("kind", ["missing", "empty", "foreign", "no_path"])
def test_a_bad_diffusers_folder_exits_1_naming_it(app, kind, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "model"
    if kind == "empty":
        folder.mkdir()
    elif kind == "foreign":   # unet/ and scheduler/ present, but nothing diffusers can read in them
        (folder / "unet").mkdir(parents=True)
        (folder / "scheduler").mkdir()
        (folder / "unet" / "config.json").write_text("not json")
    argv = ["checkpoint=diffusers:" if kind == "no_path" else f"checkpoint=diffusers:{folder}",
            f"hydra.run.dir={tmp_path / 'run'}", "device=cpu"]
    with pytest.raises(SystemExit) as info:
        _app(monkeypatch, app.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 1 and err[0].startswith("error: ")
    assert "diffusers" in err[0] and (kind == "no_path" or str(folder) in err[0])
