"""Class-conditional sampling in the sample app (scoresde/apps/sample.py: labels, conf/guidance/),
on a tiny class-conditional checkpoint trained on ring8 (one class a mode)."""

import json
import sys

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import scoresde as sd
from scoresde.apps import sample as sample_app
from scoresde.apps import train as _train_app  # noqa: F401  (stores train_schema)

from _tiny import TINY, compose_conf as _compose


@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    """A class-conditional ring8 model (model.num_classes=8) trained a few steps; its checkpoint."""
    run_dir = tmp_path_factory.mktemp("cond")
    cfg = OmegaConf.to_container(_compose("train", TINY + ["data=ring8", "model.num_classes=8"]), resolve=True)
    from scoresde.training import train
    train(cfg, run_dir)
    ckpts = sorted((run_dir / "checkpoints").glob("*.pt"))
    assert ckpts, list(run_dir.iterdir())
    return ckpts[-1]


def _app(monkeypatch, argv):
    monkeypatch.setattr(sys, "argv", ["app"] + argv)
    sample_app.main()


def test_conditional_checkpoint_loads_conditional(cond_ckpt):
    model = sd.load_model(cond_ckpt)
    assert model.num_classes == 8
    x, t = torch.zeros(4, 2), torch.full((4,), 0.5)
    # the label table was trained from zero: the labels now change the output
    assert not torch.equal(model(x, t, torch.tensor([0, 1, 2, 8])), model(x, t, torch.full((4,), 8)))


@pytest.mark.parametrize("scale", [2.0, 1.0])
def test_sample_app_with_labels_is_cfg_model_in_one_batched_call(cond_ckpt, tmp_path, monkeypatch, scale):
    _app(monkeypatch, [f"checkpoint={cond_ckpt}", f"hydra.run.dir={tmp_path}", "labels=[3,3,7]",
                       "guidance.kind=cfg", f"guidance.scale={scale}", "sampler=dpm_solver", "sampler.steps=4",
                       "seed=5"])
    x = torch.load(tmp_path / "samples.pt")
    info = json.loads((tmp_path / "sample.json").read_text())
    assert x.shape == (3, 2) and info["n"] == 3 and info["labels"] == [3, 3, 7]
    assert info["guidance"] == {"kind": "cfg", "scale": scale}
    # one network call a guided evaluation; two forward passes of the batch above scale 1
    assert info["network_calls"] == info["nfe"] > 0
    assert info["forward_passes"] == (2 if scale == 2.0 else 1) * info["nfe"]
    # the same as the library call (data space of ring8: the identity scaler or its inverse)
    model = sd.load_model(cond_ckpt)
    fn = sd.guidance.cfg_model(model, torch.tensor([3, 3, 7]), scale)
    ref = sd.sample(fn, model.sde, (3, 2), sampler="dpm_solver", steps=4, generator=torch.Generator().manual_seed(5))
    scaler = sd.data.Scaler(**model.checkpoint["data"]["scaler"])
    torch.testing.assert_close(x, scaler.to_data(ref.x), rtol=0, atol=0)


def test_one_integer_label_gives_n_samples_of_that_class(cond_ckpt):
    x, info = sample_app.sample_checkpoint(str(cond_ckpt), {"name": "heun", "steps": 2}, n=5, labels=2,
                                           guidance={"scale": 3.0})
    assert x.shape == (5, 2) and info["labels"] == [2] * 5 and info["forward_passes"] == 2 * info["nfe"]


def test_per_class_labels_give_n_samples_of_every_class_class_by_class(cond_ckpt):
    x, info = sample_app.sample_checkpoint(str(cond_ckpt), {"name": "dpm_solver", "steps": 3}, n=2,
                                           labels="per_class", guidance={"scale": 2.0}, seed=4)
    want = torch.arange(8).repeat_interleave(2)
    assert x.shape == (16, 2) and info["n"] == 16 and info["labels"] == want.tolist()
    # the library call with those labels, same noise
    model = sd.load_model(cond_ckpt)
    ref = sd.sample(sd.guidance.cfg_model(model, want, 2.0), model.sde, (16, 2), sampler="dpm_solver", steps=3,
                    generator=torch.Generator().manual_seed(4))
    scaler = sd.data.Scaler(**model.checkpoint["data"]["scaler"])
    torch.testing.assert_close(x, scaler.to_data(ref.x), rtol=0, atol=0)


def test_sample_app_per_class_passes_the_labels_to_the_png(cond_ckpt, tmp_path, monkeypatch):
    seen = {}
    real = sample_app.save_samples_png

    def spy(x, path, **kw):
        seen.update(kw, n=x.shape[0])
        return real(x, path, **kw)

    monkeypatch.setattr(sample_app, "save_samples_png", spy)
    _app(monkeypatch, [f"checkpoint={cond_ckpt}", f"hydra.run.dir={tmp_path}", "labels=per_class", "n=3",
                       "sampler=heun", "sampler.steps=2"])
    info = json.loads((tmp_path / "sample.json").read_text())
    assert info["labels"] == torch.arange(8).repeat_interleave(3).tolist() and seen["n"] == 24
    assert seen["labels"].tolist() == info["labels"] and (tmp_path / "samples.png").stat().st_size > 0
    # unconditional draws pass no labels
    _app(monkeypatch, [f"checkpoint={cond_ckpt}", f"hydra.run.dir={tmp_path / 'u'}", "n=3",
                       "sampler=heun", "sampler.steps=2"])
    assert seen["labels"] is None


def test_bad_labels_and_guidance_are_clear_errors(cond_ckpt, tmp_path_factory):
    opts = {"name": "heun", "steps": 2}
    with pytest.raises(ValueError, match=r"\[0, 8\).*\[8\]"):
        sample_app.sample_checkpoint(str(cond_ckpt), opts, n=2, labels=[1, 8])
    with pytest.raises(ValueError, match="integer"):
        sample_app.sample_checkpoint(str(cond_ckpt), opts, n=2, labels=[1.5])
    with pytest.raises(ValueError, match="'per_class'.*'each'"):
        sample_app.sample_checkpoint(str(cond_ckpt), opts, n=2, labels="each")
    with pytest.raises(ValueError, match="valid: cfg"):
        sample_app.sample_checkpoint(str(cond_ckpt), opts, n=2, labels=1, guidance={"kind": "nope"})
    # an unconditional checkpoint refuses labels
    run_dir = tmp_path_factory.mktemp("uncond")
    from scoresde.training import train
    train(OmegaConf.to_container(_compose("train", TINY), resolve=True), run_dir)
    unc = sorted((run_dir / "checkpoints").glob("*.pt"))[-1]
    with pytest.raises(ValueError, match="unconditional"):
        sample_app.sample_checkpoint(str(unc), opts, n=2, labels=[1])
    # without labels the conditional checkpoint's draw is unguided and reports no guidance
    _, info = sample_app.sample_checkpoint(str(cond_ckpt), opts, n=2)
    assert "labels" not in info and "guidance" not in info


def test_guidance_group_is_schema_checked():
    cfg = _compose("sample", ["checkpoint=x.pt"])
    assert OmegaConf.to_container(cfg.guidance) == {"kind": "cfg", "scale": 1.0, "classifier": None}
    assert cfg.labels is None
    with pytest.raises(ConfigCompositionException, match="scal"):
        _compose("sample", ["checkpoint=x.pt", "guidance.scal=2"])
    with pytest.raises(ConfigCompositionException, match="scale"):
        _compose("sample", ["checkpoint=x.pt", "guidance.scale=big"])


@pytest.fixture(scope="module")
def clf_ckpt(tmp_path_factory):
    """A tiny noisy classifier of ring8's 8 classes (task=classifier), trained a few steps."""
    run_dir = tmp_path_factory.mktemp("clf")
    over = [o for o in TINY if not o.startswith("model.")] + [
        "task=classifier", "data=ring8", "classifier=mlp", "classifier.width=16", "classifier.depth=1",
        "classifier.emb_dim=8"]
    cfg = OmegaConf.to_container(_compose("train", over), resolve=True)
    from scoresde.training import train_classifier
    train_classifier(cfg, run_dir)
    return sorted((run_dir / "checkpoints").glob("*.pt"))[-1]


def test_sample_app_classifier_guidance_is_the_library_call(cond_ckpt, clf_ckpt, tmp_path, monkeypatch):
    _app(monkeypatch, [f"checkpoint={cond_ckpt}", f"hydra.run.dir={tmp_path}", "labels=[1,6]",
                       "guidance.kind=classifier", f"guidance.classifier={clf_ckpt}", "guidance.scale=3",
                       "sampler=heun", "sampler.steps=3", "seed=2"])
    x = torch.load(tmp_path / "samples.pt")
    info = json.loads((tmp_path / "sample.json").read_text())
    assert info["guidance"] == {"kind": "classifier", "scale": 3.0, "classifier": str(clf_ckpt)}
    assert info["network_calls"] == info["forward_passes"] == info["classifier_calls"] == info["nfe"] > 0
    # the score is the conditional model's null label; the classifier's gradient is added
    model = sd.load_model(cond_ckpt)
    clf = sd.load_classifier(clf_ckpt)
    y = torch.tensor([1, 6])

    def uncond(x, t):
        return model(x, t, torch.full((x.shape[0],), 8))

    fn = sd.guidance.classifier(uncond, sd.classifier.classifier_log_prob_fn(clf, y), 3.0)
    ref = sd.sample(fn, model.sde, (2, 2), sampler="heun", steps=3, generator=torch.Generator().manual_seed(2))
    scaler = sd.data.Scaler(**model.checkpoint["data"]["scaler"])
    torch.testing.assert_close(x, scaler.to_data(ref.x), rtol=0, atol=0)
    # and the classifier's gradient matters: the unguided draw differs
    plain = sd.sample(uncond, model.sde, (2, 2), sampler="heun", steps=3, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(ref.x, plain.x)


def test_classifier_guidance_needs_its_checkpoint_and_the_kind():
    with pytest.raises(ValueError, match="guidance.classifier=PATH"):
        sample_app.guidance_options(kind="classifier")
    with pytest.raises(ValueError, match="only with guidance.kind=classifier"):
        sample_app.guidance_options(kind="cfg", classifier="c.pt")
