"""The sample app's editing mode (scoresde/apps/_edit.py, conf/edit/): SDEdit at several t0,
encode/decode, interpolation, on a tiny U-Net trained a few steps on the digits."""

import json
import sys

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from scoresde.apps import _edit, sample as sample_app
from scoresde.apps import train as _train_app  # noqa: F401  (stores train_schema)

from _tiny import compose_conf as _compose

TINY_UNET = ["experiment=digits", "train.steps=2", "train.batch_size=16", "train.log_every=1", "train.progress=false",
             "train.device=cpu", "train.tensorboard=false", "train.threads=1", "model.nf=8", "model.attn_resolutions=[]",
             "data.n_test=32", "eval.n_samples=0", "train.ckpt_every=2"]

pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_sdedit_mode_writes_guides_edits_at_each_t0_and_a_grid(ckpt, tmp_path, monkeypatch):
    _app(monkeypatch, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}", "edit.mode=sdedit", "edit.n=3",
                       "edit.guide=blur", "edit.t0=[0.1,0.5]", "edit.steps=20", "seed=1"])
    info = json.loads((tmp_path / "sample.json").read_text())
    edits, guides = torch.load(tmp_path / "edits.pt"), torch.load(tmp_path / "guides.pt")
    assert edits.shape == (3, 2, 1, 8, 8) and guides.shape == (3, 1, 8, 8)
    assert [r["steps"] for r in info["runs"]] == [10, 10] and info["nfe"] == 20   # max(10, round(20 t0))
    assert torch.isfinite(edits).all()
    # the blur guide is constant on 2x2 blocks
    assert torch.equal(guides[..., ::2, ::2], guides[..., 1::2, 1::2])
    assert Image.open(tmp_path / "edit.png").size[0] > 100


@pytest.mark.slow
def test_encode_and_interpolate_modes(ckpt, tmp_path, monkeypatch):
    _app(monkeypatch, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'e'}", "edit.mode=encode", "edit.n=2"])
    info = json.loads((tmp_path / "e" / "sample.json").read_text())
    assert info["round_trip_rel_error_max"] < 1e-3 and info["nfe_encode"] > 0
    assert torch.load(tmp_path / "e" / "latents.pt").shape == (2, 1, 8, 8)
    _app(monkeypatch, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'i'}", "edit.mode=interpolate", "edit.n=2",
                       "edit.points=4", "edit.rtol=1e-4"])
    x = torch.load(tmp_path / "i" / "interpolation.pt")
    assert x.shape == (2, 4, 1, 8, 8)
    assert (tmp_path / "i" / "edit.png").is_file()


@pytest.mark.parametrize("override, match", [("edit.mode=paint", "edit.mode"), ("edit.t0=0", "edit.t0"),
                                             ("edit.guide=smudge", "edit.guide"), ("edit.points=1", "edit.points")])
def test_bad_edit_options_are_clear_errors(override, match):
    cfg = OmegaConf.to_container(_compose("sample", ["checkpoint=x", override]), resolve=True)
    with pytest.raises(ValueError, match=match):
        _edit.edit_options(**cfg["edit"])


def test_strokes_guide_is_two_levels():
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    g = _edit.make_guide(x, "strokes")
    assert set(g.unique().tolist()) == {-1.0, 1.0}


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("digits_cond")
    cfg = OmegaConf.to_container(_compose("train", ["experiment=digits_cond"] + TINY_UNET[1:]), resolve=True)
    from scoresde.training import train
    train(cfg, run_dir)
    return run_dir / "checkpoints" / "last.pt"


def test_sdedit_of_a_class_conditional_model_with_guidance_is_the_library_call(cond_ckpt):
    """labels= and guidance.scale= edit with the classifier-free guided score: the app's edits equal
    sd.edit.sdedit on sd.guidance.cfg_model(model, y, scale) from the same guides and seed."""
    import scoresde as sd
    from scoresde.checkpoints import load_score

    loaded = load_score(str(cond_ckpt), device="cpu")
    assert any("label" in name for name, _ in loaded.score_fn.named_parameters())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # two steps from a zero-initialised output leave the labels unused: make them matter
        for p in loaded.score_fn.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    opts = {"mode": "sdedit", "n": 2, "guide": "blur", "t0": [0.4], "steps": 20}
    out = _edit.edit_checkpoint(loaded, opts, seed=3, labels=[1, 7], guidance={"kind": "cfg", "scale": 2.0})
    assert out["info"]["labels"] == [1, 7] and out["info"]["guidance"]["scale"] == 2.0

    model, sde, _, meta = loaded
    scaler = sd.data.Scaler(**meta["scaler"])
    guides = scaler.to_model(out["guides"])
    guided = sd.guidance.cfg_model(model, torch.tensor([1, 7]), 2.0)
    ref = sd.edit.sdedit(guided, sde, guides, 0.4, sampler="sde", generator=torch.Generator().manual_seed(3), steps=10)
    assert torch.allclose(scaler.to_model(out["edits"][:, 0]), ref.x, atol=1e-5)
    plain = _edit.edit_checkpoint(loaded, opts, seed=3)   # unguided: the model's own (null-label) score
    assert not torch.allclose(plain["edits"], out["edits"], atol=1e-3)
