import doctest
import math

import pytest
import torch
import torchsde

import scoresde as sd
import scoresde.sde as sde_module


def test_docstring_example_of_a_user_sde_runs():
    result = doctest.testmod(sde_module, raise_on_error=False, verbose=False)
    assert result.attempted >= 5
    assert result.failed == 0


def test_song_et_al_formulas_and_defaults():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    vp = sd.VPSDE()
    m = torch.exp(-t ** 2 * (20 - 0.1) / 4 - t * 0.1 / 2)
    torch.testing.assert_close(vp.mean_coef(t), m)
    torch.testing.assert_close(vp.std(t), torch.sqrt(1 - m ** 2))
    torch.testing.assert_close(vp.diffusion(t), torch.sqrt(0.1 + t * 19.9))
    sub = sd.SubVPSDE()
    torch.testing.assert_close(sub.std(t), 1 - m ** 2)
    torch.testing.assert_close(sub.diffusion(t) ** 2, (0.1 + t * 19.9) * (1 - torch.exp(-2 * 0.1 * t - 19.9 * t ** 2)))
    ve = sd.VESDE()
    sig = 0.01 * (50 / 0.01) ** t
    torch.testing.assert_close(ve.std(t), sig)
    torch.testing.assert_close(ve.diffusion(t), sig * math.sqrt(2 * math.log(50 / 0.01)))
    assert vp.prior_std == 1.0 and sub.prior_std == 1.0 and ve.prior_std == 50.0
    assert vp.T == sub.T == ve.T == 1.0


def test_coefficients_are_consistent_with_the_sde(sde):
    """d log alpha/dt = f and d sigma^2/dt = 2 f sigma^2 + g^2, checked by autograd."""
    t = torch.linspace(1e-3, 1.0, 50, dtype=torch.float64, requires_grad=True)
    log_a = torch.log(sde.mean_coef(t)) + 0 * t   # VE: alpha = 1 does not depend on t
    var = sde.std(t) ** 2
    dlog_a, = torch.autograd.grad(log_a.sum(), t)
    dvar, = torch.autograd.grad(var.sum(), t)
    f = sde.drift_coef(t).detach()
    g2 = sde.diffusion(t).detach() ** 2
    torch.testing.assert_close(dlog_a, f, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dvar, 2 * f * var.detach() + g2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t_end", [0.1, 0.5, 1.0])
def test_marginal_matches_monte_carlo_simulation_of_forward_sde(sde, t_end):
    n = 20_000
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64)

    class Forward(torch.nn.Module):
        noise_type = "diagonal"
        sde_type = "ito"

        def f(self, t, y):
            return sde.sde(y, t)[0]

        def g(self, t, y):
            return sde.diffusion(t.reshape(1).to(y)).expand_as(y)

    y0 = x0.expand(n, 2).contiguous()
    bm = torchsde.BrownianInterval(t0=0.0, t1=t_end, size=(n, 2), dtype=torch.float64,
                                   entropy=1234, levy_area_approximation="space-time")
    ts = torch.tensor([0.0, t_end], dtype=torch.float64)
    ys = torchsde.sdeint(Forward(), y0, ts, method="srk", dt=t_end / 100, bm=bm)
    xt = ys[-1]
    # started exactly at x0, the simulation has the transition 0 -> t; the marginal adds
    # sigma(0)^2 to it, which is 0 for VP and sub-VP and sigma_min^2 for VE (Song et al.)
    a, v = sde.transition(ts[1:], ts[:1])
    mean, var = a * x0, v
    _, std0 = sde.coefs(ts[:1], dtype=torch.float64)
    torch.testing.assert_close(sde.marginal(x0[None], t_end)[1] ** 2, v + (a * std0) ** 2)
    # 5-sigma Monte Carlo tolerances from the sample size
    se_mean = math.sqrt(var / n)
    se_var = var * math.sqrt(2.0 / (n - 1))
    assert (xt.mean(0) - mean).abs().max() < 5 * se_mean
    assert (xt.var(0) - var).abs().max() < 5 * se_var


def test_marginal_and_sde_broadcast_over_any_shape_and_dtype(sde):
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 2, 4, 4, dtype=dtype)
        t = torch.tensor([0.1, 0.5, 0.9], dtype=dtype)
        mean, std = sde.marginal(x, t)
        assert mean.shape == x.shape and std.shape == (3,)
        assert mean.dtype == dtype and std.dtype == dtype
        torch.testing.assert_close(mean[1], sde.mean_coef(t[1:2])[0] * x[1])
        drift, g = sde.sde(x, 0.5)
        assert drift.shape == x.shape and g.shape == (3,)
        assert g.dtype == dtype
        torch.testing.assert_close(drift, sde.drift_coef(torch.full((3,), 0.5, dtype=dtype)).reshape(3, 1, 1, 1) * x)


def test_prior_sample_and_logp(sde, gen):
    z = sde.prior_sample((50_000, 2), generator=gen, dtype=torch.float64)
    s = sde.prior_std
    assert abs(z.std().item() - s) < 5 * s * math.sqrt(2 / z.numel()) * 2
    lp = sde.prior_logp(z[:10])
    ref = torch.distributions.Normal(0.0, s).log_prob(z[:10]).sum(1)
    torch.testing.assert_close(lp, ref)
    img = sde.prior_sample((4, 1, 3, 3), generator=gen)
    assert sde.prior_logp(img).shape == (4,)
    # same seed, same draw
    a = sde.prior_sample((5, 2), generator=torch.Generator().manual_seed(3))
    b = sde.prior_sample((5, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_reverse_sde_and_probability_flow_drift(sde):
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)

    def score_fn(x, t):
        return -x * (1 + t[:, None])

    f, g = sde.sde(x, t)
    rdrift, rdiff = sde.reverse(score_fn).sde(x, t)
    torch.testing.assert_close(rdrift, f - g[:, None] ** 2 * score_fn(x, t))
    torch.testing.assert_close(rdiff, g)
    pdrift, pdiff = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    torch.testing.assert_close(pdrift, f - 0.5 * g[:, None] ** 2 * score_fn(x, t))
    assert torch.count_nonzero(pdiff) == 0


def test_discretize_gives_ddpm_and_smld_steps():
    x = torch.randn(4, 2, dtype=torch.float64)
    t, s = torch.full((4,), 0.5, dtype=torch.float64), torch.full((4,), 0.49, dtype=torch.float64)
    vp = sd.VPSDE()
    f, G = vp.discretize(x, t, s)
    a = vp.mean_coef(t) / vp.mean_coef(s)
    beta_i = 1 - a ** 2                              # DDPM: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z
    torch.testing.assert_close(f, (a[:, None] - 1) * x)
    torch.testing.assert_close(G, torch.sqrt(beta_i))
    # beta_i = 1 - exp(-beta dt) is beta(t) dt to first order, as in Song et al.'s N-step discretization
    bdt = vp.beta(torch.tensor(0.495, dtype=torch.float64)).item() * 0.01
    assert abs(beta_i[0].item() - bdt) < bdt ** 2
    ve = sd.VESDE()
    f, G = ve.discretize(x, t, s)
    assert torch.count_nonzero(f) == 0
    torch.testing.assert_close(G, torch.sqrt(ve.std(t) ** 2 - ve.std(s) ** 2))


def test_discrete_transitions_compose_to_the_marginal(sde):
    """Chaining exact steps 0 -> s -> t gives the marginal at t (checks transition for all SDEs)."""
    r = torch.tensor([1e-3], dtype=torch.float64)
    s = torch.tensor([0.3], dtype=torch.float64)
    t = torch.tensor([0.8], dtype=torch.float64)
    a1, v1 = sde.transition(s, r)
    a2, v2 = sde.transition(t, s)
    a, v = sde.transition(t, r)
    torch.testing.assert_close(a1 * a2, a)
    torch.testing.assert_close(a2 ** 2 * v1 + v2, v)


def test_ancestral_steps(sde):
    x = torch.randn(5, 2, dtype=torch.float64)
    score = torch.randn(5, 2, dtype=torch.float64)
    t, s = torch.full((5,), 0.6, dtype=torch.float64), torch.full((5,), 0.55, dtype=torch.float64)
    mean, std = sde.ancestral_step(x, t, s, score)
    a, v = sde.transition(t, s)
    if isinstance(sde, sd.SubVPSDE):
        # generic Gaussian posterior q(x_s | x_t, x0 = Tweedie)
        at, st, as_, ss = sde.mean_coef(t), sde.std(t), sde.mean_coef(s), sde.std(s)
        x0 = (x + st[:, None] ** 2 * score) / at[:, None]
        prec = a ** 2 / v + 1 / ss ** 2
        ref_mean = ((a / v)[:, None] * x + (as_ / ss ** 2)[:, None] * x0) / prec[:, None]
        torch.testing.assert_close(mean, ref_mean)
        torch.testing.assert_close(std, torch.sqrt(1 / prec))
    elif isinstance(sde, sd.VPSDE):
        torch.testing.assert_close(mean, (x + v[:, None] * score) / a[:, None])
        torch.testing.assert_close(std, torch.sqrt(v))
    else:
        st, ss = sde.std(t), sde.std(s)
        torch.testing.assert_close(mean, x + (st ** 2 - ss ** 2)[:, None] * score)
        torch.testing.assert_close(std, torch.sqrt(ss ** 2 * (st ** 2 - ss ** 2) / st ** 2))


def test_log_snr_inverse_round_trips(sde):
    t = torch.linspace(1e-5, 1.0, 101, dtype=torch.float64)
    lam = sde.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    torch.testing.assert_close(sde.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    # the generic bisection agrees with the closed forms
    torch.testing.assert_close(sd.SDE.t_from_log_snr(sde, lam), t, rtol=1e-7, atol=1e-7)


def test_float_scalars_equal_the_tensor_functions(sde):
    """sde.scalars (closed forms in math for the built-ins) against the tensor functions."""
    ts = [0.0, 1e-7, 1e-5, 1e-3, 0.1, 0.37, 0.9, 1.0]
    t = torch.tensor(ts, dtype=torch.float64)
    ref = [fn(t).tolist() for fn in (sde.drift_coef, sde.diffusion, sde.mean_coef, sde.std)]
    for i, tt in enumerate(ts):
        got = sde.scalars(tt)
        assert all(isinstance(v, float) for v in got)
        for name, g, r in zip(("f", "g", "alpha", "sigma"), got, (col[i] for col in ref)):
            assert g == pytest.approx(r, rel=1e-13, abs=1e-300), (name, tt)
    lam = sde.log_snr(t[1:])
    back = [sde.scalar_t_from_log_snr(v) for v in lam.tolist()]
    torch.testing.assert_close(torch.tensor(back, dtype=torch.float64), sde.t_from_log_snr(lam),
                               rtol=1e-12, atol=1e-15)
    # far out in log-SNR (sub-VP's closed form avoids exp(-lam)^2 overflowing)
    for v in (-300.0, -40.0, 40.0):
        ref_t = float(sde.t_from_log_snr(torch.tensor([v], dtype=torch.float64)))
        assert sde.scalar_t_from_log_snr(v) == pytest.approx(ref_t, rel=1e-12, abs=1e-300) or math.isnan(ref_t)


def test_generic_scalars_of_a_user_sde_use_its_tensor_functions():
    class Lin(sd.SDE):  # sigma(t) = t, no drift: only the tensor functions are given
        def drift_coef(self, t):
            return torch.zeros_like(t)

        def diffusion(self, t):
            return torch.sqrt(2.0 * t)

        def mean_coef(self, t):
            return torch.ones_like(t)

        def std(self, t):
            return t

        @property
        def prior_std(self):
            return 1.0

    c = Lin().scalars(0.25)
    assert c == (0.0, pytest.approx(math.sqrt(0.5)), 1.0, 0.25)
    assert Lin().scalar_t_from_log_snr(-math.log(0.25)) == pytest.approx(0.25, rel=1e-6)


def test_ancestral_coefs_of_floats_equal_those_of_tensors(sde):
    t, s = 0.6, 0.55
    got = sde.ancestral_coefs(*sde.scalars(t)[2:], *sde.scalars(s)[2:])
    tt, ss = (torch.tensor([v], dtype=torch.float64) for v in (t, s))
    ref = sde.ancestral_coefs(sde.mean_coef(tt), sde.std(tt), sde.mean_coef(ss), sde.std(ss))
    for g, r in zip(got, ref):
        assert float(g) == pytest.approx(float(r), rel=1e-13)


def test_std_keeps_precision_at_tiny_t():
    t = torch.tensor([1e-7], dtype=torch.float64)
    vp = sd.VPSDE()
    # sigma^2 ~ b0 t for small t
    assert abs(vp.std(t).item() ** 2 / (0.1 * 1e-7) - 1) < 1e-5
    assert vp.std(torch.tensor([1e-7], dtype=torch.float32)).item() > 0


@pytest.mark.parametrize("ctor, kwargs, word", [
    (sd.VPSDE, {"beta_min": -0.1}, "beta_min"),
    (sd.VPSDE, {"beta_min": 1.0, "beta_max": 1.0}, "beta_max"),
    (sd.SubVPSDE, {"beta_min": 5.0, "beta_max": 1.0}, "beta_max"),
    (sd.VESDE, {"sigma_min": 0.0}, "sigma_min"),
    (sd.VESDE, {"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_max"),
    (sd.VPSDE, {"T": 0.0}, "T"),
])
def test_bad_parameters_raise_naming_them(ctor, kwargs, word):
    with pytest.raises(ValueError, match=word):
        ctor(**kwargs)


def test_unknown_sde_name_lists_valid_ones():
    with pytest.raises(ValueError, match="vpp.*subvp.*ve.*vp"):
        sd.build_sde("vpp")
    assert isinstance(sd.build_sde("sub-vp"), sd.SubVPSDE)


def test_time_of_wrong_shape_raises(sde):
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="batch size"):
        sde.marginal(x, torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        sde.sde(x, torch.zeros(4, 1))


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(sigma_max=20.0)], ids=["vp", "subvp", "ve"])
def test_prior_mean_is_tweedie_at_zero_in_closed_form(sde):
    # one Gaussian N(m, c^2 I): p_T = N(alpha m, (alpha^2 c^2 + sigma^2) I), so
    # sigma^2 grad log p_T(0) = sigma^2 alpha m / (alpha^2 c^2 + sigma^2), close to alpha m
    m, c2 = torch.tensor([3.0, -2.0]), 0.3
    mix = sd.GaussianMixture([1.0], m[None], c2 * torch.eye(2)[None])
    like = torch.zeros(5, 2, dtype=torch.float64)
    got = sde.prior_mean(mix.score_fn(sde), like)
    T = torch.tensor([float(sde.T)], dtype=torch.float64)
    a, s = float(sde.mean_coef(T)[0]), float(sde.std(T)[0])
    want = s ** 2 * a * m.double() / (a ** 2 * c2 + s ** 2)
    assert got.shape == (5, 2)
    torch.testing.assert_close(got, want.expand(5, 2), rtol=1e-10, atol=1e-12)
    assert (got[0] - a * m.double()).abs().max() <= 1e-2 * (a * m.abs().max() + 1e-12)


def test_prior_logp_with_a_mean_is_the_shifted_gaussian():
    sde = sd.VESDE(sigma_max=5.0)
    z, mean = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    want = torch.distributions.Normal(mean, 5.0).log_prob(z).sum(1)
    torch.testing.assert_close(sde.prior_logp(z, mean=mean), want)
    torch.testing.assert_close(sde.prior_logp(z), sde.prior_logp(z, mean=torch.zeros_like(z)))


def test_sub_vp_log_snr_inverse_keeps_relative_precision_at_small_t():
    # t = 1e-9 .. 1e-3: lambda ~ 10 .. 24, where log alpha ~ -e^-lambda / 2 is tiny; checked
    # against the inverse written in 50-digit arithmetic
    import mpmath
    sde = sd.SubVPSDE()
    t = torch.tensor([1e-9, 1e-7, 1e-5, 1e-3, 0.5], dtype=torch.float64)
    lam = sde.log_snr(t)
    mpmath.mp.dps = 50
    b0, db = mpmath.mpf(sde.beta_min), mpmath.mpf(sde.beta_max - sde.beta_min)

    def exact(v):
        log_m = -mpmath.asinh(mpmath.exp(-mpmath.mpf(v)) / 2)
        return float(-4 * log_m / (b0 + mpmath.sqrt(b0 ** 2 - 4 * db * log_m)))

    ref = torch.tensor([exact(v) for v in lam.tolist()], dtype=torch.float64)
    torch.testing.assert_close(sde.t_from_log_snr(lam), ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.tensor([sde.scalar_t_from_log_snr(v) for v in lam.tolist()],
                                            dtype=torch.float64), ref, rtol=1e-14, atol=0)
