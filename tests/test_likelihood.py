"""Probability-flow log-likelihoods against closed forms (scoresde/likelihood/).

The mixture oracle gives log p_t exactly at every t, so with the exact score the ODE's answer can
differ from ``mix.log_prob_t(x, sde, eps)`` only by the solver error, once the prior term uses the
exact p_T (``prior_logp=``); the default N(0, prior_std^2) prior adds the SDE's own prior mismatch.
At rtol = atol = 1e-5 the measured mean error is about 5e-5 nats/dim (benchmarks/likelihood.py);
the tests allow 5e-4 nats/dim.
"""
import math

import pytest
import torch

import scoresde as sd
from scoresde.likelihood import TIME_VARIABLES

TOL_PER_DIM = 5e-4


def exact_prior(mix, sde):
    return lambda z: mix.log_prob_t(z, sde, sde.T)


def mean_err_per_dim(logp, exact, dim):
    return float((logp.double() - exact.double()).abs().mean()) / dim


@pytest.mark.parametrize("name,n", [("ring8", 24), ("aniso8", 12)])
def test_exact_trace_logp_matches_mixture_density(sde, name, n):
    mix = sd.build_mixture(name)
    x = mix.sample(n, generator=torch.Generator().manual_seed(1))
    res = sd.log_likelihood(mix.score_fn(sde), sde, x, prior_logp=exact_prior(mix, sde))
    exact = mix.log_prob_t(x, sde, 1e-5)
    assert res.logp.shape == (n,)
    assert mean_err_per_dim(res.logp, exact, mix.dim) < TOL_PER_DIM


@pytest.mark.slow
def test_exact_trace_logp_matches_mixture_density_aniso16(sde):
    mix = sd.build_mixture("aniso16")
    x = mix.sample(64, generator=torch.Generator().manual_seed(1))
    res = sd.log_likelihood(mix.score_fn(sde), sde, x, prior_logp=exact_prior(mix, sde))
    assert mean_err_per_dim(res.logp, mix.log_prob_t(x, sde, 1e-5), mix.dim) < TOL_PER_DIM


@pytest.mark.parametrize("time_variable", TIME_VARIABLES)
def test_every_time_variable_gives_the_same_logp(time_variable):
    sde = sd.VESDE()
    mix = sd.ring8()
    x = mix.sample(16, generator=torch.Generator().manual_seed(2))
    res = sd.log_likelihood(mix.score_fn(sde), sde, x, time_variable=time_variable,
                            prior_logp=exact_prior(mix, sde))
    assert mean_err_per_dim(res.logp, mix.log_prob_t(x, sde, 1e-5), mix.dim) < TOL_PER_DIM


def gaussian_flow(mix, sde, x, s, t):
    """The PF-ODE map from time s to t for a single Gaussian N(mu, C): every step closed form,
    x_t = alpha_t mu + S_t S_s^{-1} (x_s - alpha_s mu) with S = (alpha^2 C + sigma^2 I)^{1/2}."""
    lam, U = torch.linalg.eigh(mix.covs[0])
    mu = mix.means[0]

    def coefs(tt):
        tt = torch.tensor([tt], dtype=torch.float64)
        return float(sde.mean_coef(tt)), float(sde.std(tt))

    a_s, g_s = coefs(s)
    a_t, g_t = coefs(t)
    ratio = torch.sqrt((a_t ** 2 * lam + g_t ** 2) / (a_s ** 2 * lam + g_s ** 2))
    M = (U * ratio) @ U.T
    return a_t * mu + (x.double() - a_s * mu) @ M.T, torch.log(ratio).sum()


def test_single_gaussian_latent_and_logp_are_closed_form(sde):
    C = torch.tensor([[0.5, 0.2, 0.0], [0.2, 0.3, -0.1], [0.0, -0.1, 0.2]], dtype=torch.float64)
    mix = sd.GaussianMixture([1.0], [[0.5, -1.0, 2.0]], C[None])
    x = mix.sample(16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = sd.log_likelihood(mix.score_fn(sde), sde, x, eps=1e-3)
    z, log_det = gaussian_flow(mix, sde, x, 1e-3, sde.T)
    scale = float(z.abs().max())
    assert torch.allclose(res.z, z, atol=1e-3 * scale)
    # with the default prior: log p_eps(x) = log N(z; 0, prior_std^2) + log |det dz/dx|
    expected = sde.prior_logp(z) + log_det
    assert mean_err_per_dim(res.logp, expected, 3) < TOL_PER_DIM
    assert torch.allclose(res.prior_logp, sde.prior_logp(res.z))
    assert torch.allclose(res.delta_logp, res.logp - res.prior_logp)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_mean_agrees_with_exact_trace_within_its_standard_error(noise):
    sde = sd.VPSDE()
    mix = sd.build_mixture("aniso8")
    n, probes = 8, 16
    x = mix.sample(n, generator=torch.Generator().manual_seed(4))
    exact = sd.log_likelihood(mix.score_fn(sde), sde, x)
    hut = sd.log_likelihood(mix.score_fn(sde), sde, x, divergence="hutchinson", probes=probes, noise=noise,
                            generator=torch.Generator().manual_seed(5))
    assert hut.stderr is not None and (hut.stderr > 0).all()
    zscore = (hut.logp - exact.logp) / hut.stderr
    # unbiased: z-scores centred on 0 (sd 1/sqrt(n) for their mean); calibrated: mean square ~ 1
    assert abs(float(zscore.mean())) < 4.0 / math.sqrt(n)
    assert 0.2 < float((zscore ** 2).mean()) < 3.0
    # the path x_t does not depend on the probes
    assert torch.allclose(hut.z, exact.z, rtol=1e-3, atol=1e-3)


def test_hutchinson_is_reproducible_with_a_generator_and_changes_without():
    sde = sd.VPSDE()
    mix = sd.ring8()
    x = mix.sample(8, generator=torch.Generator().manual_seed(6))
    run = lambda seed: sd.log_likelihood(mix.score_fn(sde), sde, x, divergence="hutchinson",
                                         generator=torch.Generator().manual_seed(seed)).logp
    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_nfe_counts_every_score_evaluation_and_time_stays_in_eps_T():
    sde = sd.VESDE()
    mix = sd.ring8()
    x = mix.sample(4, generator=torch.Generator().manual_seed(7))
    seen = []
    base = mix.score_fn(sde)

    def score_fn(xx, t):
        seen.append((float(t.min()), float(t.max())))
        return base(xx, t)

    eps = 1e-5
    for tv in TIME_VARIABLES:
        seen.clear()
        res = sd.log_likelihood(score_fn, sde, x, time_variable=tv, eps=eps)
        assert res.nfe == len(seen)
        lo = min(a for a, _ in seen)
        hi = max(b for _, b in seen)
        assert lo >= eps * (1 - 1e-5) and hi <= sde.T * (1 + 1e-6), (tv, lo, hi)


def test_batch_chunks_agree_with_one_solve():
    sde = sd.SubVPSDE()
    mix = sd.ring8()
    x = mix.sample(12, generator=torch.Generator().manual_seed(8))
    whole = sd.log_likelihood(mix.score_fn(sde), sde, x)
    parts = sd.log_likelihood(mix.score_fn(sde), sde, x, batch_size=5)
    assert parts.logp.shape == (12,) and parts.z.shape == x.shape
    assert mean_err_per_dim(parts.logp, whole.logp, 2) < TOL_PER_DIM
    assert parts.nfe > whole.nfe  # three solves


def test_image_shaped_data_gives_the_flat_answer():
    sde = sd.VPSDE()
    flat = sd.build_mixture("aniso8")
    img = sd.GaussianMixture(flat.weights, flat.means, flat.covs, event_shape=(2, 2, 2))
    x = flat.sample(6, generator=torch.Generator().manual_seed(9))
    a = sd.log_likelihood(flat.score_fn(sde), sde, x)
    b = sd.log_likelihood(img.score_fn(sde), sde, x.reshape(6, 2, 2, 2))
    assert b.z.shape == (6, 2, 2, 2)
    assert torch.allclose(a.logp, b.logp, atol=1e-4)


def expected_gaussian_bound(k, levels, lo, hi, mean, var):
    """E_u[log N(x; mean, var)] per sample for x = lo + (hi - lo)(k + u)/L, u ~ U[0,1)^D, and its
    variance over u: with d = centre - mean and w the bin width, (x - mean)^2 has mean d^2 + w^2/12
    and variance d^2 w^2 / 3 + w^4 / 180."""
    w = (hi - lo) / levels
    d = lo + w * (k.double() + 0.5) - mean
    e = -0.5 * math.log(2 * math.pi * var) - (d ** 2 + w ** 2 / 12) / (2 * var)
    v = (d ** 2 * w ** 2 / 3 + w ** 4 / 180) / (4 * var ** 2)
    return e.sum(1), v.sum(1)


def test_bits_per_dim_of_discrete_data_matches_the_closed_form_bound(sde):
    levels, lo, hi, eps = 16, -1.0, 1.0, 1e-5
    mu, s2 = 0.1, 0.3 ** 2
    mix = sd.GaussianMixture([1.0], [[mu, mu]], [s2])
    gen = torch.Generator().manual_seed(10)
    k = torch.randint(5, 11, (16, 2), generator=gen)  # near the mode: a small Monte Carlo spread
    repeats = 8
    res = sd.bits_per_dim(mix.score_fn(sde), sde, k, levels=levels, data_range=(lo, hi), repeats=repeats,
                          generator=gen, prior_logp=exact_prior(mix, sde), eps=eps)
    tt = torch.tensor([eps], dtype=torch.float64)
    a, g = float(sde.mean_coef(tt)), float(sde.std(tt))
    e, v = expected_gaussian_bound(k, levels, lo, hi, a * mu, a ** 2 * s2 + g ** 2)
    D = 2
    exact_bpd = -(e + D * math.log((hi - lo) / levels)) / (D * math.log(2))
    # Monte Carlo over 8 x 16 dequantizations, sd from the closed-form variance, plus the solver
    mc_sd = math.sqrt(repeats * float(v.sum())) / (repeats * 16) / (D * math.log(2))
    diff = float(res.bpd.double().mean() - exact_bpd.mean())
    assert abs(diff) < 4 * mc_sd + TOL_PER_DIM / math.log(2)
    assert res.bpd.shape == (16,) and res.stderr.shape == (16,)
    assert res.logp.shape == (repeats, 16)


def test_bits_per_dim_scaling_term_is_the_reference_offset():
    sde = sd.VPSDE()
    mix = sd.ring8()
    k = torch.randint(0, 256, (4, 2), generator=torch.Generator().manual_seed(11), dtype=torch.int64)
    res = sd.bits_per_dim(mix.score_fn(sde), sde, k, generator=torch.Generator().manual_seed(0))
    D = 2
    assert res.log_det == pytest.approx(D * math.log(2 / 256))
    # 7 bits/dim = log2(256 / 2): score_sde_pytorch's "offset" for centred 8-bit data
    bpd = -(res.logp[0].double() / (D * math.log(2))) + 7.0
    assert torch.allclose(res.bpd.double(), bpd, atol=1e-5)


def test_bits_per_dim_uncentered_offset_is_8_bits_and_solver_picks_the_ode_method():
    sde = sd.VPSDE()
    mix = sd.GaussianMixture([1.0], [[0.5, 0.5]], [0.2 ** 2])
    k = torch.randint(0, 256, (4, 2), generator=torch.Generator().manual_seed(11), dtype=torch.int64)
    kw = dict(data_range=(0.0, 1.0), divergence="hutchinson", rtol=1e-4, atol=1e-4)
    a = sd.bits_per_dim(mix.score_fn(sde), sde, k, generator=torch.Generator().manual_seed(0), **kw)
    assert a.log_det / (2 * math.log(2)) == pytest.approx(-8.0)   # log2(256 / 1): the uncentered offset
    b = sd.bits_per_dim(mix.score_fn(sde), sde, k, generator=torch.Generator().manual_seed(0), solver="adams", **kw)
    g = torch.Generator().manual_seed(0)        # the same draws by hand: u, then the probes
    x = ((k + torch.rand(k.shape, generator=g, dtype=torch.float64)) / 256).float()
    direct = sd.log_likelihood(mix.score_fn(sde), sde, x, method="adams", generator=g, divergence="hutchinson",
                               rtol=1e-4, atol=1e-4)
    assert b.nfe == direct.nfe and b.nfe != a.nfe
    assert torch.allclose(b.logp[0], direct.logp.double(), rtol=1e-6)
    assert torch.allclose(b.bpd.double(), a.bpd.double(), atol=1e-2)
    with pytest.raises(ValueError, match="solver"):
        sd.bits_per_dim(mix.score_fn(sde), sde, k, solver="adams", method="elbo")


@pytest.mark.parametrize("kwargs,match", [
    (dict(rtol=0.0), "rtol"),
    (dict(atol=-1e-5), "atol"),
    (dict(divergence="trace"), "divergence"),
    (dict(divergence="hutchinson", noise="uniform"), "noise"),
    (dict(eps=0.0), "eps"),
    (dict(eps=1.0), "eps"),
    (dict(method="rk45"), "method"),
    (dict(time_variable="tau"), "time_variable"),
    (dict(probes=0, divergence="hutchinson"), "probes"),
    (dict(probes=4), "probes"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_options_raise_value_error_naming_them(kwargs, match):
    sde = sd.VPSDE()
    mix = sd.ring8()
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=match):
        sd.log_likelihood(mix.score_fn(sde), sde, x, **kwargs)


def test_bad_data_raise_value_error():
    sde = sd.VPSDE()
    mix = sd.ring8()
    with pytest.raises(ValueError, match="shape"):
        sd.log_likelihood(mix.score_fn(sde), sde, torch.zeros(2))
    with pytest.raises(ValueError, match="score_fn returned shape"):
        sd.log_likelihood(lambda x, t: x[:, :1], sde, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="integers"):
        sd.bits_per_dim(mix.score_fn(sde), sde, torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="integers"):
        sd.bits_per_dim(mix.score_fn(sde), sde, torch.full((2, 2), 256))
    with pytest.raises(ValueError, match="levels"):
        sd.bits_per_dim(mix.score_fn(sde), sde, torch.zeros(2, 2), levels=1)
    with pytest.raises(ValueError, match="data_range"):
        sd.bits_per_dim(mix.score_fn(sde), sde, torch.zeros(2, 2), data_range=(1.0, -1.0))


def test_centred_prior_is_the_density_the_centred_sampler_draws_from():
    # one ring8 mode: N(0, I) misplaces p_T's mean alpha_T mu (0.026), which costs about
    # 1e-2 nats; the centred prior takes that term to the solver's own error
    sde, mix = sd.VPSDE(), sd.ring8()
    cond, fn = mix.conditional(0), mix.class_score_fn(sde, 0)
    x = cond.sample(200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = cond.log_prob_t(x, sde, 1e-5)
    err = {}
    for prior in sd.sde.PRIORS:
        res = sd.log_likelihood(fn, sde, x, prior=prior)
        err[prior] = float((res.logp - exact).abs().mean())
    assert err["sde"] > 5e-3, err
    assert err["centred"] < 0.05 * err["sde"], err
    with pytest.raises(ValueError, match="not both"):
        sd.log_likelihood(fn, sde, x[:4], prior="centred", prior_logp=sde.prior_logp)
    with pytest.raises(ValueError, match="unknown prior 'tweedie'"):
        sd.log_likelihood(fn, sde, x[:4], prior="tweedie")
