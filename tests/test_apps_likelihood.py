"""The likelihood app's methods (scoresde/apps/likelihood.py): the probability-flow ODE, the reverse
SDE's variational bound (method=elbo) and both side by side, on exact scores (closed form) and a tiny
trained checkpoint (the app's plumbing: JSON, table, schema)."""

import json
import math
import sys

import pytest
import torch
from omegaconf import OmegaConf

import scoresde as sd
from scoresde.apps import likelihood as likelihood_app
from scoresde.apps import train as _train_app  # noqa: F401  (stores train_schema)

from _tiny import CONF, TINY


class _ExactScore(torch.nn.Module):
    """An exact score under VP with what the app reads from a loaded checkpoint (step, data config)."""

    def __init__(self, data_cfg, score):
        super().__init__()
        self.sde = sd.VPSDE()
        self.score = score
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.checkpoint = {"step": 0, "config": {"data": data_cfg}}

    def forward(self, x, t):
        return self.score(x, t)


def _ring8():
    mix = sd.build_mixture("ring8")
    return _ExactScore({"name": "ring8", "n_test": 64}, mix.score_fn(sd.VPSDE()))


def test_elbo_of_the_exact_score_matches_the_ode_nll_within_4_standard_errors():
    """Exact ring8 score, VP, standard prior (its mismatch with p_T at T = 1 is below 1e-3 nats): both methods
    estimate -log p_eps on the same points; the paired difference is 0 within 4 Monte Carlo standard errors."""
    out = likelihood_app.checkpoint_likelihood(_ring8(), n=32, batch_size=16, method="both", n_t=1000, seed=2)
    assert out["method"] == "both" and out["n_t"] == 1000 and out["estimator"] == "dsm"
    assert abs(out["kl"]) < 1e-3                                        # the ODE of the exact score
    assert out["elbo_mc_se"] > 0 and len(out["elbo_nfe_per_batch"]) == 2
    assert abs(out["elbo_minus_ode"]) < 4 * out["elbo_mc_se"] + 1e-3
    assert out["elbo_minus_ode"] == pytest.approx(out["elbo_nll"] - out["nll"], abs=1e-9)
    # method=ode draws the same points first: its keys equal those of method=both, without the ELBO's
    ode = likelihood_app.checkpoint_likelihood(_ring8(), n=32, batch_size=16, seed=2)
    assert ode["nll"] == out["nll"] and "elbo_nll" not in ode and ode["method"] == "ode"
    # the ism estimator with the exact divergence, method=elbo alone (a list): the same quantity
    ism = likelihood_app.checkpoint_likelihood(_ring8(), n=32, batch_size=32, method=["elbo"], estimator="ism",
                                               n_t=1000, seed=2)
    assert "nll" not in ism and abs(ism["elbo_nll"] - out["nll"]) < 4 * ism["elbo_mc_se"] + 1e-3


def test_image_bits_per_dim_both_ways_for_the_standard_normal_score():
    """Data N(0, I) under VP has p_t = N(0, I) and score -x at every t: the ODE and the ELBO (prior exact, so
    the bound is tight) give the same dequantized bits/dim of the digits, paired on the same dequantization."""
    for dequantize in (False, True):
        model = _ExactScore({"name": "digits", "n_test": 12, "dequantize": dequantize}, lambda x, t: -x)
        out = likelihood_app.checkpoint_likelihood(model, n=12, method="both", n_t=400, rtol=1e-6, atol=1e-6,
                                                   seed=1)
        D = 64
        assert out["levels"] == 17
        for p in ("", "elbo_"):
            assert out[p + "bits_per_dim"] == pytest.approx(out[p + "nll"] / (D * math.log(2)), rel=1e-12)
        assert abs(out["elbo_minus_ode"]) < 4 * out["elbo_mc_se"] + 1e-3
        # closed form of the ODE's value: -(log N(x_u; 0, I) + D log cell) with x_u drawn as the app does
        data = sd.data.build_dataset("digits", n_test=12, dequantize=dequantize)
        L = 17
        k = sd.data.images.from_model_range(data.test, L, dequantized=dequantize).double()
        lo, hi = (-1.0, 1.0) if dequantize else (-L / (L - 1), L / (L - 1))
        g = torch.Generator().manual_seed(1)
        u = torch.rand((1,) + tuple(k.shape), generator=g, dtype=torch.float64)[0]
        xu = lo + (hi - lo) * (k + u) / L
        logp = -0.5 * (xu.reshape(12, -1).pow(2).sum(1) + D * math.log(2 * math.pi)) + D * math.log((hi - lo) / L)
        assert out["nll"] == pytest.approx(float(-logp.mean()), abs=1e-3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from hydra import compose, initialize_config_dir
    run_dir = tmp_path_factory.mktemp("trained")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="train", overrides=TINY + ["eval.n_nll=0",
                                                                                     "eval.n_samples=0"]), resolve=True)
    from scoresde.training import train
    train(cfg, run_dir)
    return run_dir / "checkpoints" / "last.pt"


def _app(monkeypatch, argv):
    monkeypatch.setattr(sys, "argv", ["app"] + argv)
    likelihood_app.main()


def test_method_both_and_the_list_form_write_the_same_json_and_a_table(trained, tmp_path, monkeypatch, capsys):
    common = [f"checkpoint={trained}", "n=8", "rtol=1e-3", "atol=1e-3", "n_t=50", "seed=4"]
    _app(monkeypatch, common + [f"hydra.run.dir={tmp_path / 'a'}", "method=both"])
    logged = "".join(capsys.readouterr())                # Hydra's console handler: the table is logged
    _app(monkeypatch, common + [f"hydra.run.dir={tmp_path / 'b'}", "method=[ode,elbo]"])
    a, b = (json.loads((tmp_path / d / "likelihood.json").read_text()) for d in "ab")
    for key in ("nll", "nll_se", "elbo_nll", "elbo_nll_se", "elbo_mc_se", "elbo_minus_ode", "elbo_minus_ode_se",
                "elbo_nfe", "nfe"):
        assert math.isfinite(a[key]) and a[key] == b[key], key
    assert a["elbo_nfe"] == 1                         # one batch: all 8 points' 50 draws in one score call
    md = (tmp_path / "a" / "likelihood.md").read_text()
    assert "| ode " in md and "| elbo " in md and "elbo - ode" in md and f"{a['elbo_nll']:.4f}" in md
    assert "elbo - ode" in logged and "| elbo " in logged


@pytest.mark.parametrize("override, needle", [("method=elb", "elb"), ("n_t=many", "n_t"),
                                              ("estimatr=dsm", "estimatr"), ("estimator=sm", "sm"),
                                              ("importance_sampling=maybe", "importance_sampling"),
                                              ("method=[ode,sde]", "sde"), ("n_t=1", "n_t")])
def test_method_options_are_checked_and_name_the_problem(trained, tmp_path, monkeypatch, capsys, override, needle):
    with pytest.raises(SystemExit) as info:
        _app(monkeypatch, [f"checkpoint={trained}", f"hydra.run.dir={tmp_path}", "n=4", override])
    assert info.value.code != 0 and needle in capsys.readouterr().err
