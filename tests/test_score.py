import math

import pytest
import torch
from torch import nn

import scoresde as sd
from scoresde.score import ScoreModel, build_score_model


class _Oracle(nn.Module):
    """A network that outputs what a perfect noise (or score) network would: from the exact score."""

    def __init__(self, mix, sde, parameterization):
        super().__init__()
        self.mix, self.sde, self.par = mix, sde, parameterization

    def forward(self, x, c):
        t = self.t
        s = self.mix.score_t(x, self.sde, t)
        return -self.sde.std(t)[:, None] * s if self.par == "noise" else s


@pytest.mark.parametrize("parameterization", ["noise", "score"])
def test_score_model_of_a_perfect_network_is_the_exact_score(sde, parameterization):
    mix = sd.ring8()
    net = _Oracle(mix, sde, parameterization)
    model = ScoreModel(net, sde, parameterization)
    x = torch.randn(64, 2, dtype=torch.float64) * 3
    t = torch.rand(64, dtype=torch.float64) * 0.99 + 0.01
    net.t = t
    assert torch.allclose(model(x, t), mix.score_t(x, sde, t), rtol=1e-10, atol=1e-10)
    assert model.sde is sde


def test_noise_parameterization_divides_by_std():
    class Ones(nn.Module):
        def forward(self, x, t):
            return torch.ones_like(x)

    sde = sd.VPSDE()
    model = ScoreModel(Ones(), sde, "noise")
    t = torch.tensor([1e-3, 0.5, 1.0])
    out = model(torch.zeros(3, 2), t)
    assert torch.allclose(out, -1.0 / sde.std(t)[:, None].expand(3, 2))


@pytest.mark.parametrize("time_input", ["t", "log_sigma", "log_snr", "sigma"])
def test_time_input_is_what_the_network_sees(time_input):
    seen = {}

    class Spy(nn.Module):
        def forward(self, x, c):
            seen["c"] = c
            return torch.zeros_like(x)

    sde = sd.VESDE()
    model = ScoreModel(Spy(), sde, "score", time_input)
    t = torch.tensor([0.1, 0.7])
    model(torch.zeros(2, 2), t)
    want = {"t": t, "log_sigma": torch.log(sde.std(t)), "log_snr": sde.log_snr(t), "sigma": sde.std(t)}[time_input]
    assert torch.allclose(seen["c"], want)


def test_float_time_is_broadcast_to_the_batch():
    sde = sd.VPSDE()
    model = build_score_model({"sde": {"name": "vp"}, "model": {"name": "mlp", "data_shape": [2], "width": 8, "depth": 1}})
    assert model(torch.randn(5, 2), 0.3).shape == (5, 2)


def test_bad_names_are_value_errors():
    net = nn.Identity()
    with pytest.raises(ValueError, match="noise"):
        ScoreModel(net, sd.VPSDE(), "eps")
    with pytest.raises(ValueError, match="log_sigma"):
        ScoreModel(net, sd.VPSDE(), "noise", "sigma2")
    with pytest.raises(ValueError, match="SDE"):
        ScoreModel(net, "vp")


def test_build_score_model_records_its_spec():
    spec = {"sde": {"name": "ve", "sigma_max": 10.0}, "model": {"name": "mlp", "data_shape": [2], "width": 8, "depth": 1},
            "parameterization": "score"}
    model = build_score_model(spec)
    assert isinstance(model.sde, sd.VESDE) and model.sde.sigma_max == 10.0
    assert model.spec["parameterization"] == "score" and model.spec["time_input"] == "t"
    assert build_score_model(model.spec).spec == model.spec
