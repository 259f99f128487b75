"""The reverse-SDE variational bound against closed forms (scoresde/likelihood/elbo.py).

With the exact score of a mixture and its exact p_T as prior, the bound is tight for every point
(its gap is a path KL that vanishes), so the Monte Carlo mean must equal log p_eps(x) of the
mixture: every check below allows 4 standard errors of the estimate itself, per point and pooled
over the points (the pooled z-score is what catches a small bias).  Everything runs in float64.
"""
import math

import pytest
import torch
from scipy.integrate import solve_ivp

import scoresde as sd
from scoresde.likelihood import gaussian_decoder_logp

EPS = 1e-5
COMBOS = [("dsm", "stein"), ("ism", "exact"), ("ism", "hutchinson"), ("ism", "stein")]


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def exact_prior(mix, sde):
    return lambda z: mix.log_prob_t(z, sde, sde.T)


def assert_unbiased(est, se, exact, k=4.0):
    """Per point within k standard errors, and the pooled z-score of the sum within k."""
    diff = est.double() - exact.double()
    assert (diff.abs() <= k * se.double()).all(), (diff / se).tolist()
    pooled = float(diff.sum() / se.double().pow(2).sum().sqrt())
    assert abs(pooled) <= k, pooled


@pytest.mark.parametrize("estimator,divergence", COMBOS)
def test_bound_is_tight_for_the_exact_score_and_exact_prior(sde, estimator, divergence):
    mix = sd.ring8()
    x = mix.sample(6, generator=torch.Generator().manual_seed(1))
    res = sd.elbo(mix.score_fn(sde), sde, x, n_t=1500, estimator=estimator, divergence=divergence,
                  prior_logp=exact_prior(mix, sde), generator=torch.Generator().manual_seed(2))
    assert_unbiased(res.elbo, res.stderr, mix.log_prob_t(x, sde, EPS))
    assert res.elbo.shape == res.stderr.shape == res.prior.shape == (6,)
    assert torch.allclose(res.elbo, res.prior + res.drift + res.diffusion)


@pytest.mark.parametrize("estimator,divergence", COMBOS)
def test_bound_is_tight_on_an_image_shaped_mixture(estimator, divergence):
    sde = sd.VPSDE()
    g = torch.Generator().manual_seed(3)
    D = 12
    means = 2.0 * torch.randn(3, D, generator=g)
    covs = 0.05 + torch.rand(3, D, generator=g)
    mix = sd.GaussianMixture([1.0, 2.0, 3.0], means, covs, event_shape=(1, 2, 6))
    x = mix.sample(4, generator=g)
    assert x.shape == (4, 1, 2, 6)
    res = sd.elbo(mix.score_fn(sde), sde, x, n_t=1500, estimator=estimator, divergence=divergence,
                  probes=1, prior_logp=exact_prior(mix, sde), generator=torch.Generator().manual_seed(4))
    assert_unbiased(res.elbo, res.stderr, mix.log_prob_t(x, sde, EPS))


def test_the_bound_measures_the_model_not_the_data(sde):
    data = sd.ring8()
    model = sd.ring8(radius=3.0, std=0.5)
    x = data.sample(6, generator=torch.Generator().manual_seed(5))
    res = sd.elbo(model.score_fn(sde), sde, x, n_t=1500, prior_logp=exact_prior(model, sde),
                  generator=torch.Generator().manual_seed(6))
    assert_unbiased(res.elbo, res.stderr, model.log_prob_t(x, sde, EPS))
    # and it is not the data's density (the two differ by over 4 standard errors here)
    assert ((res.elbo - data.log_prob_t(x, sde, EPS)).abs() > 4 * res.stderr).all()


def gaussian_expected_logpdf(mean, var, m, C):
    """E_{y ~ N(mean, var I)} log N(y; m, diag C), summed over dims: ``[B]``."""
    return -0.5 * (torch.log(2 * math.pi * C).sum() + (var / C).sum() + ((mean - m) ** 2 / C).sum(-1))


def test_standard_prior_shifts_the_bound_by_the_prior_mismatch(sde):
    mu = torch.tensor([0.5, -1.0, 2.0])
    c = torch.tensor([0.3, 0.5, 1.2])
    mix = sd.GaussianMixture([1.0], mu[None], c[None])
    x = mix.sample(6, generator=torch.Generator().manual_seed(7))
    kw = dict(n_t=1500, generator=None)
    exact = sd.elbo(mix.score_fn(sde), sde, x, prior_logp=exact_prior(mix, sde), **{**kw, "generator": torch.Generator().manual_seed(8)})
    std = sd.elbo(mix.score_fn(sde), sde, x, **{**kw, "generator": torch.Generator().manual_seed(8)})
    # the same draws give the same diffusion part: only the prior term changes
    assert torch.equal(exact.diffusion, std.diffusion)
    T, e = torch.tensor([sde.T]), torch.tensor([EPS])
    aT, vT = (float(v) for v in sde.transition(T, e))
    alT, sgT = float(sde.mean_coef(T)), float(sde.std(T))
    mean = aT * x
    shift = (gaussian_expected_logpdf(mean, vT, torch.zeros(3), torch.full((3,), sde.prior_std ** 2))
             - gaussian_expected_logpdf(mean, vT, alT * mu, alT ** 2 * c + sgT ** 2))
    # closed-form prior term: exactly E log pi(x_T) under N(a_T x, v_T I)
    assert torch.allclose(std.prior, gaussian_expected_logpdf(mean, vT, torch.zeros(3),
                                                              torch.full((3,), sde.prior_std ** 2)), atol=1e-10)
    assert_unbiased(std.elbo, std.stderr, mix.log_prob_t(x, sde, EPS) + shift)


def linear_model(sde, c, kappa, D, eps=EPS):
    """The reverse SDE of the linear score s = -kappa x / (alpha^2 c + sigma^2) started at the
    prior N(0, s^2 I) keeps isotropic Gaussians N(0, P(t) I): backwards from T,
    dP/dt = 2 (f + g^2 k) P - g^2 with k = kappa / (alpha^2 c + sigma^2).  Returns the score,
    P(eps) and, for points x at eps, the gap 1/2 int g^2 (k - 1/P)^2 (a^2 |x|^2 + D v) dt
    (integrated as G1 |x|^2 + G2 D along the same ODE)."""
    def k_of(t):
        return kappa / (sde.mean_coef(t) ** 2 * c + sde.std(t) ** 2)

    def score(x, t):
        return -sd.sde.expand_to(k_of(t), x) * x

    def rhs(t, y):
        P = y[0]
        tt = torch.tensor([t])
        f, g2 = float(sde.drift_coef(tt)), float(sde.diffusion(tt)) ** 2
        k = float(k_of(tt))
        a, v = (float(c) for c in sde.transition(tt, torch.full_like(tt, eps)))
        w = 0.5 * g2 * (k - 1.0 / P) ** 2
        # d/dt of P, and of minus the gap pieces (the integral runs from T down to eps)
        return [2 * (f + g2 * k) * P - g2, -w * a ** 2, -w * v]

    sol = solve_ivp(rhs, (sde.T, eps), [sde.prior_std ** 2, 0.0, 0.0], method="DOP853", rtol=1e-10, atol=1e-12)
    assert sol.success, sol.message
    P, G1, G2 = sol.y[:, -1]
    return score, float(P), lambda x: G1 * x.pow(2).sum(1) + G2 * D


@pytest.mark.parametrize("estimator,divergence", [("dsm", "stein"), ("ism", "exact")])
def test_a_score_of_no_diffusion_falls_short_by_the_girsanov_gap(sde, estimator, divergence):
    D, c, kappa = 3, 0.5, 1.3
    score, P, gap = linear_model(sde, c, kappa, D)
    x = math.sqrt(c) * torch.randn(6, D, generator=torch.Generator().manual_seed(9))
    log_q = -0.5 * D * math.log(2 * math.pi * P) - x.pow(2).sum(1) / (2 * P)
    res = sd.elbo(score, sde, x, n_t=6000, estimator=estimator, divergence=divergence,
                  generator=torch.Generator().manual_seed(10))
    assert_unbiased(res.elbo, res.stderr, log_q - gap(x))
    # the gap is real (about 1 nat a point): the mean shortfall is many pooled standard errors
    pooled_se = float(res.stderr.pow(2).sum().sqrt()) / x.shape[0]
    assert float((log_q - res.elbo).mean()) > 5 * pooled_se
    assert float(gap(x).min()) > 0.5


def test_gibbs_mean_bound_over_the_data_is_below_minus_the_entropy(sde):
    D = 3
    mu = torch.tensor([0.5, -1.0, 2.0])
    c = torch.tensor([0.3, 0.5, 1.2])
    mix = sd.GaussianMixture([1.0], mu[None], c[None])
    pe = mix.marginal_t(sde, EPS)
    neg_H = -float(pe.gaussian_entropies()[0])
    x = pe.sample(400, generator=torch.Generator().manual_seed(11))
    exact = mix.score_fn(sde)
    for scale, tight in ((1.0, True), (0.8, False)):
        def score(y, t, scale=scale):
            return scale * exact(y, t)
        res = sd.elbo(score, sde, x, n_t=8, prior_logp=exact_prior(mix, sde),
                      generator=torch.Generator().manual_seed(12))
        mean = float(res.elbo.mean())
        se = float(res.elbo.std() / math.sqrt(x.shape[0]))
        assert mean <= neg_H + 4 * se
        if tight:
            assert abs(mean - neg_H) <= 4 * se


def test_nfe_is_counted_and_draws_are_reproducible():
    sde = sd.VESDE()
    mix = sd.ring8()
    calls = []

    def score(x, t):
        calls.append(x.shape[0])
        return mix.score_t(x, sde, t)

    x = mix.sample(5, generator=torch.Generator().manual_seed(13))
    res = sd.elbo(score, sde, x, n_t=7, batch_size=2, generator=torch.Generator().manual_seed(14))
    assert res.nfe == len(calls) == 3          # three chunks of points, one batched call each
    assert sum(calls) == 5 * res.evaluations == 5 * 7 * 2
    again = sd.elbo(mix.score_fn(sde), sde, x, n_t=7, batch_size=2, generator=torch.Generator().manual_seed(14))
    assert torch.equal(res.elbo, again.elbo) and res.draws.shape == (7, 5)


def test_importance_sampling_is_unbiased_too():
    sde = sd.VPSDE()
    mix = sd.ring8()
    x = mix.sample(4, generator=torch.Generator().manual_seed(15))
    res = sd.elbo(mix.score_fn(sde), sde, x, n_t=2000, importance_sampling=True,
                  prior_logp=exact_prior(mix, sde), generator=torch.Generator().manual_seed(16))
    assert_unbiased(res.elbo, res.stderr, mix.log_prob_t(x, sde, EPS))


@pytest.mark.parametrize("kwargs,match", [
    (dict(estimator="vlb"), "estimator"),
    (dict(divergence="trace"), "divergence"),
    (dict(estimator="dsm", divergence="exact"), "divergence"),
    (dict(estimator="ism", divergence="hutchinson", noise="uniform"), "noise"),
    (dict(n_t=1), "n_t"),
    (dict(probes=2), "probes"),
    (dict(estimator="ism", probes=0, divergence="hutchinson"), "probes"),
    (dict(eps=0.0), "eps"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_options_raise_value_error_naming_them(kwargs, match):
    sde = sd.VPSDE()
    mix = sd.ring8()
    with pytest.raises(ValueError, match=match):
        sd.elbo(mix.score_fn(sde), sde, torch.zeros(2, 2), **kwargs)


def test_bits_per_dim_by_elbo_matches_the_closed_form_dequantized_bound(sde):
    """As the ODE's test in test_likelihood.py: a Gaussian's exact score on dequantized levels."""
    from tests.test_likelihood import expected_gaussian_bound

    levels, lo, hi = 16, -1.0, 1.0
    mu, s2 = 0.1, 0.3 ** 2
    mix = sd.GaussianMixture([1.0], [[mu, mu]], [s2])
    gen = torch.Generator().manual_seed(17)
    k = torch.randint(5, 11, (16, 2), generator=gen)
    repeats, n_t = 8, 200
    res = sd.bits_per_dim(mix.score_fn(sde), sde, k, levels=levels, data_range=(lo, hi), repeats=repeats,
                          generator=gen, prior_logp=exact_prior(mix, sde), method="elbo", n_t=n_t)
    tt = torch.tensor([EPS])
    a, g = float(sde.mean_coef(tt)), float(sde.std(tt))
    e, _ = expected_gaussian_bound(k, levels, lo, hi, a * mu, a ** 2 * s2 + g ** 2)
    D = 2
    exact_bpd = -(e + D * math.log((hi - lo) / levels)) / (D * math.log(2))
    # the repeats' spread holds both the dequantization and the ELBO noise
    se = float(res.stderr.double().pow(2).sum().sqrt()) / 16
    assert abs(float(res.bpd.double().mean() - exact_bpd.mean())) < 4 * se


def test_gaussian_decoder_bound_recovers_the_level_probabilities():
    """Data on 4 levels in 1-d, the model a mixture of spikes (std 1e-5) at the levels: the
    model's discrete probability of level k is its weight (the bins are 2/3 wide against
    sigma_eps ~ 3e-3), and the bound is tight up to the spikes' width (KL ~ 1e-5)."""
    sde = sd.VPSDE()
    levels = 4
    centres = torch.linspace(-1, 1, levels)[:, None]
    w = torch.tensor([0.1, 0.2, 0.3, 0.4])
    mix = sd.GaussianMixture(w, centres, torch.full((levels,), 1e-10))
    k = torch.arange(levels)[:, None]
    # the spikes make the integrand a 1/v spike at eps: there importance sampling in log-SNR pays
    res = sd.bits_per_dim(mix.score_fn(sde), sde, k, levels=levels, decoder="gaussian", method="elbo",
                          repeats=64, n_t=16, importance_sampling=True, prior_logp=exact_prior(mix, sde),
                          generator=torch.Generator().manual_seed(18))
    exact_bpd = -torch.log2(w)
    assert res.log_det == 0.0
    assert ((res.bpd.double() - exact_bpd).abs() <= 4 * res.stderr.double() + 1e-3).all()
    # the decoder at the level's own mean keeps almost all the mass; a neighbour's mean none
    e = torch.tensor([EPS])
    al = float(sde.mean_coef(e))
    own = gaussian_decoder_logp(k, al * centres, sde, EPS, levels)
    far = gaussian_decoder_logp(k, al * centres.roll(1, 0), sde, EPS, levels)
    assert (own > -1e-6).all() and (far < -1000).all()
