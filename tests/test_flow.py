"""The change of variables (scoresde/flow.py): sigma~(t) and t(sigma~) inverse to float64 rounding,
lambda monotone, the VP clock, the time variables, the grids, the denoiser."""

import math

import pytest
import torch

import scoresde as sd
from scoresde import flow
from scoresde.flow import time_grid

EPS = 1e-5


def _times(sde, n=2001):
    return torch.linspace(EPS, sde.T, n, dtype=torch.float64)


def test_sigma_tilde_is_sigma_over_alpha_and_exp_minus_lambda(sde):
    t = _times(sde)
    s = flow.sigma(sde, t)
    torch.testing.assert_close(s, sde.std(t) / sde.mean_coef(t), rtol=1e-13, atol=0)
    torch.testing.assert_close(flow.log_sigma(sde, t), -sde.log_snr(t), rtol=0, atol=0)


def test_sigma_tilde_and_t_of_sigma_are_inverses_over_eps_T(sde):
    t = _times(sde)
    torch.testing.assert_close(flow.t_of_sigma(sde, flow.sigma(sde, t)), t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.t_of_log_sigma(sde, flow.log_sigma(sde, t)), t, rtol=1e-12, atol=1e-12)
    s = torch.logspace(math.log10(float(flow.sigma(sde, t[:1]))), math.log10(float(flow.sigma(sde, t[-1:]))),
                       500, dtype=torch.float64)
    # relative: sigma~ runs from ~2e-6 to ~1e3, and sub-VP's inverse keeps the relative precision of
    # the smallest (log alpha = -asinh(sigma~ / 2), not a difference of two numbers near log 2)
    torch.testing.assert_close(flow.sigma(sde, flow.t_of_sigma(sde, s)), s, rtol=1e-12, atol=0)


def test_lambda_decreases_and_sigma_tilde_increases_strictly(sde):
    t = _times(sde)
    assert (sde.log_snr(t).diff() < 0).all()
    assert (flow.sigma(sde, t).diff() > 0).all()


def test_vp_clock_is_the_identity_for_the_default_vp_sde_and_inverts_for_every_sde(sde):
    t = _times(sde)
    tau = flow.vp_time(sde, t)
    assert (tau.diff() > 0).all()
    torch.testing.assert_close(flow.t_of_vp_time(sde, tau), t, rtol=1e-12, atol=1e-12)
    vp = sd.VPSDE()
    torch.testing.assert_close(flow.vp_time(vp, t), t, rtol=1e-12, atol=1e-12)
    # same noise level on both clocks
    torch.testing.assert_close(flow.sigma(flow.VP_CLOCK, tau), flow.sigma(sde, t), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", flow.TIME_VARIABLES)
def test_time_variables_invert_increase_and_agree_with_their_scalar_forms(sde, name):
    tv = flow.TimeVariable(sde, name)
    t = _times(sde, 301)
    u = tv.u_of_t(t)
    assert (u.diff() > 0).all()
    torch.testing.assert_close(tv.t_of_u(u), t, rtol=1e-12, atol=1e-12)
    for tt, uu in zip(t[::50].tolist(), u[::50].tolist()):
        assert tv.scalar_u_of_t(tt) == pytest.approx(uu, rel=1e-13, abs=1e-15)
        assert tv.scalar_t_of_u(uu) == pytest.approx(tt, rel=1e-11, abs=1e-12)
    if name != "t":
        s = flow.sigma(sde, t)
        torch.testing.assert_close(tv.u_of_sigma(s), u, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(tv.sigma_of_u(u), s, rtol=1e-12, atol=0)
        # sigma~ dsigma~/du against a central difference of sigma~(u)^2 / 2
        h = 1e-6 * (u[-1] - u[0])
        fd = (tv.sigma_of_u(u[1:-1] + h) ** 2 - tv.sigma_of_u(u[1:-1] - h) ** 2) / (4 * h)
        torch.testing.assert_close(tv.sigma_dsigma_du(u[1:-1], s[1:-1]), fd, rtol=1e-6, atol=0)


def test_unknown_time_variable_raises_listing_the_names():
    with pytest.raises(ValueError, match="log_sigma"):
        flow.TimeVariable(sd.VPSDE(), "log_snr")


def test_time_grids_run_from_T_to_eps_and_decrease():
    for sde in (sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()):
        for g in ("logsnr", "karras", "time_uniform", "time_quadratic", "vp_quadratic"):
            t = time_grid(sde, 12, 1e-3, g)
            assert t.shape == (13,) and float(t[0]) == sde.T and float(t[-1]) == 1e-3
            assert (t[1:] < t[:-1]).all(), (sde, g)
    lam = sd.VPSDE().log_snr(time_grid(sd.VPSDE(), 8, 1e-3, "logsnr"))
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(8), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 5, 40])
def test_each_grid_is_uniform_in_its_own_variable(sde, n):
    """logsnr: lambda; karras: sigma~^(1/rho); time_uniform: t; time_quadratic: sqrt t;
    vp_quadratic: sqrt tau; and vp_quadratic depends on sigma~ only, not on the SDE."""
    eps, rho = 1e-3, 7.0
    maps = {"logsnr": lambda t: sde.log_snr(t), "karras": lambda t: flow.sigma(sde, t) ** (1 / rho),
            "time_uniform": lambda t: t, "time_quadratic": lambda t: t.sqrt(),
            "vp_quadratic": lambda t: flow.vp_time(sde, t).sqrt()}
    assert set(maps) == set(flow.GRIDS)
    for g, m in maps.items():
        t = time_grid(sde, n, eps, g, rho)
        assert t.shape == (n + 1,) and t.dtype == torch.float64
        assert t[0] == sde.T and t[-1] == eps
        d = m(t).diff()
        torch.testing.assert_close(d, d.mean().expand(n), rtol=1e-9, atol=1e-12, msg=g)


def test_bad_grid_arguments_raise():
    with pytest.raises(ValueError, match="vp_quadratic"):
        time_grid(sd.VPSDE(), 4, 1e-3, "cosine")
    with pytest.raises(ValueError, match="step"):
        time_grid(sd.VPSDE(), 0, 1e-3)
    with pytest.raises(ValueError, match="rho"):
        time_grid(sd.VPSDE(), 4, 1e-3, "karras", rho=0.0)


def test_denoiser_is_tweedies_posterior_mean_for_a_gaussian(sde):
    """x0 ~ N(m, s^2 I): E[x0 | x_t] = m + s^2 alpha / (alpha^2 s^2 + sigma^2) (x_t - alpha m)."""
    m, s2 = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3
    mix = sd.GaussianMixture(torch.ones(1), m[None], s2 * torch.eye(2)[None].double())
    t = time_grid(sde, 5, 1e-3, "logsnr")
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    den = flow.Denoiser(mix.score_fn(sde), sde, t, x)
    for i in range(len(den)):
        al, sg = float(sde.mean_coef(t[i:i + 1])), float(sde.std(t[i:i + 1]))
        xt = den.scale(x, i)
        want = m + s2 * al / (al ** 2 * s2 + sg ** 2) * (x - al * m)
        torch.testing.assert_close(den(xt, i), want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(den.unscale(xt, i), x, rtol=1e-15, atol=0)
        assert den.sigma[i] == pytest.approx(sg / al, rel=1e-12)


def test_module_docstring_examples_run():
    import doctest

    result = doctest.testmod(flow, raise_on_error=False, verbose=False)
    assert result.attempted > 0 and result.failed == 0
