"""The probability-flow ODE sampler (scoresde/samplers/probability_flow.py): reversibility, time
variables, the adaptive solver's probes."""


import pytest
import torch

import scoresde as sd

from scoresde.samplers import integrate_probability_flow


pytestmark = pytest.mark.usefixtures("one_thread")


# -- the probability-flow ODE ------------------------------------------------------------------------
@pytest.mark.parametrize("time_variable", ["t", "sigma", "log_sigma", "vp"])
def test_ode_forward_then_backward_returns_start(sde, time_variable):
    mix = sd.ring8()
    score = mix.score_fn(sde)
    x0 = mix.sample(64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eps = 1e-3
    z, _ = integrate_probability_flow(score, sde, x0, eps, sde.T, rtol=1e-8, atol=1e-8,
                                      time_variable=time_variable)
    assert z.std() > 0.5 * sde.prior_std  # it did travel to the prior's scale
    back, _ = integrate_probability_flow(score, sde, z, sde.T, eps, rtol=1e-8, atol=1e-8,
                                         time_variable=time_variable)
    assert (back - x0).abs().max() < 1e-4


def test_ode_time_variables_agree_on_the_solution(sde):
    mix = sd.ring8()
    score = mix.score_fn(sde)
    z = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    outs = [integrate_probability_flow(score, sde, z, sde.T, 1e-3, rtol=1e-9, atol=1e-9, time_variable=v)[0]
            for v in ("t", "sigma", "log_sigma", "vp")]
    # samples on a boundary between modes are sensitive; compare the bulk
    for o in outs[1:]:
        assert (o - outs[0]).norm(dim=1).median() < 1e-5


def test_adaptive_ode_never_evaluates_outside_eps_T():
    sde, mix = sd.VPSDE(), sd.ring8()
    seen = []
    score = mix.score_fn(sde)

    def spy(x, t):
        seen.append(t)
        return score(x, t)

    for v in ("t", "sigma", "log_sigma", "vp"):
        out = sd.sample(spy, sde, (32, 2), sampler="ode", time_variable=v, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out.x).all()
    ts = torch.cat(seen).double()
    assert ts.min() >= 1e-3 * (1 - 1e-5) and ts.max() <= sde.T * (1 + 1e-6)
