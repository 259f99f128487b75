"""``checkpoint=score_sde:PATH score_sde.config=NAME_OR_FILE`` in the sample and likelihood apps
(through scoresde.checkpoints.load_score), on the reference's tiny checkpoints in
tests/data/score_sde/, and bits/dim by the paper's protocol (``protocol=score_sde``): the app's
number is ``sd.bits_per_dim``'s on the same images, and the scaling's log-determinant is the
reference's offset, 7 bits/dim for centered data and 8 for uncentered."""

import json
import math
import os
import sys

import pytest
import torch

import scoresde as sd
from scoresde.apps import likelihood as likelihood_app, sample as sample_app
from scoresde.data import build_dataset
from scoresde.data.images import from_model_range
from scoresde.interop import from_score_sde

from _cifar import write_tiny_cifar10

DATA = os.path.join(os.path.dirname(__file__), "data", "score_sde")


def _paths(name):
    return os.path.join(DATA, name + ".pth"), os.path.join(DATA, name + ".json")


def _app(monkeypatch, main, argv):
    monkeypatch.setattr(sys, "argv", ["app"] + argv)
    main()


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar"))[0]


def test_sample_app_draws_from_a_score_sde_checkpoint_in_pixel_space(monkeypatch, tmp_path):
    ckpt, config = _paths("ddpmpp_vp")
    _app(monkeypatch, sample_app.main, [f"checkpoint=score_sde:{ckpt}", f"score_sde.config={config}", "n=2",
                                        "device=cpu", "sampler=ode", "sampler.method=euler", "sampler.steps=3",
                                        f"hydra.run.dir={tmp_path}"])
    info = json.loads((tmp_path / "sample.json").read_text())
    x = torch.load(tmp_path / "samples.pt", weights_only=True)
    assert info["source"] == "score_sde" and info["nfe"] == 3 and x.shape == (2, 3, 16, 16)
    assert torch.isfinite(x).all() and (tmp_path / "samples.png").is_file()


def test_sample_app_without_the_config_is_one_line_naming_score_sde_config(monkeypatch, tmp_path, capsys):
    ckpt, _ = _paths("ddpmpp_vp")
    with pytest.raises(SystemExit) as e:
        _app(monkeypatch, sample_app.main, [f"checkpoint=score_sde:{ckpt}", "n=2", "device=cpu",
                                            f"hydra.run.dir={tmp_path}"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "needs its score_sde_pytorch config" in err and "Traceback" not in err


@pytest.mark.parametrize("name,offset", [("ddpmpp_vp", 7.0), ("ncsnpp_fourier_ve", 8.0)],
                         ids=["centered", "uncentered"])
def test_likelihood_app_paper_protocol_equals_the_library_call(monkeypatch, tmp_path, cifar_root, name, offset):
    ckpt, config = _paths(name)
    n, repeats, tol = 2, 2, 0.1
    _app(monkeypatch, likelihood_app.main, [
        f"checkpoint=score_sde:{ckpt}", f"score_sde.config={config}", "protocol=score_sde", f"repeats={repeats}",
        f"n={n}", "device=cpu", f"rtol={tol}", f"atol={tol}", "data=cifar10", f"data.root={cifar_root}",
        "data.size=16", "data.stream=false", "data.flip=false", f"hydra.run.dir={tmp_path}"])
    out = json.loads((tmp_path / "likelihood.json").read_text())
    assert out["protocol"] == "score_sde" and out["divergence"] == "hutchinson" and out["levels"] == 256
    assert out["log_det_bits"] == pytest.approx(offset, abs=1e-12)    # the reference's offset
    # the same images, dequantization and probes through the library
    model = from_score_sde(ckpt, config)
    data = build_dataset("torchvision", dataset="CIFAR10", root=str(cifar_root), size=16)
    k = from_model_range(data.test[:n], 256)
    res = sd.bits_per_dim(model, model.sde, k, levels=256, data_range=model.data_range, repeats=repeats,
                          divergence="hutchinson", eps=1e-5, rtol=tol, atol=tol,
                          generator=torch.Generator().manual_seed(0))
    assert out["data_range"] == list(model.data_range)
    assert res.log_det / (k[0].numel() * math.log(2.0)) == pytest.approx(-offset)
    assert out["bits_per_dim"] == pytest.approx(float(res.bpd.double().mean()), rel=1e-6)
    assert out["nfe"] == res.nfe


def test_likelihood_protocol_score_sde_refuses_the_exact_divergence(tmp_path, cifar_root):
    ckpt, config = _paths("ddpmpp_vp")
    with pytest.raises(ValueError, match="divergence must be hutchinson"):
        likelihood_app.checkpoint_likelihood(f"score_sde:{ckpt}", n=1, divergence="exact", device="cpu",
                                             protocol="score_sde", score_sde_config=config,
                                             data=dict(name="torchvision", dataset="CIFAR10", root=str(cifar_root),
                                                       size=16))


@pytest.mark.parametrize("app", ["sample", "likelihood", "eval_app"])
def test_score_sde_config_is_a_key_of_each_app_and_a_typo_names_it(app):
    from scoresde.apps import eval as _eval_app  # noqa: F401  (stores the eval app's schema)
    from scoresde.apps._common import unknown_key_error
    assert unknown_key_error(app, ["checkpoint=score_sde:ck.pth", "score_sde.config=vp/cifar10_ddpmpp_continuous"]) is None
    msg = unknown_key_error(app, ["checkpoint=score_sde:ck.pth", "score_sde.confg=x"])
    assert "did you mean 'score_sde.config'" in msg
