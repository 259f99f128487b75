import math

import pytest
import torch

import scoresde as sd
from scoresde.losses import DSMLoss, dsm_loss, importance_norm, importance_time, sample_time


def _quad_norm(sde, eps, n=200_001):
    # int_eps^T g^2 / sigma^2 dt on a log-spaced grid (the integrand is ~1/t near 0 for VP)
    u = torch.linspace(math.log(eps), math.log(sde.T), n, dtype=torch.float64)
    t = torch.exp(u)
    f = sde.diffusion(t) ** 2 / sde.std(t) ** 2 * t       # dt = t du
    return float(torch.trapezoid(f, u))


def test_importance_norm_is_the_integral_of_g2_over_sigma2(sde):
    assert math.isclose(importance_norm(sde, 1e-5), _quad_norm(sde, 1e-5), rel_tol=1e-6)


def test_importance_times_follow_g2_over_sigma2(sde):
    """Kolmogorov-Smirnov against the exact CDF F(t) = (lam(eps) - lam(t)) / (lam(eps) - lam(T))."""
    n, eps = 20000, 1e-5
    t = importance_time(sde, n, eps, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert t.min() >= eps and t.max() <= sde.T
    ts, _ = torch.sort(t)
    lam = lambda s: sde.log_snr(s)
    F = (lam(torch.tensor(eps, dtype=torch.float64)) - lam(ts)) / (lam(torch.tensor(eps, dtype=torch.float64)) - lam(torch.tensor(sde.T, dtype=torch.float64)))
    emp_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    d = max(float((emp_hi - F).abs().max()), float((F - (emp_hi - 1.0 / n)).abs().max()))
    assert d < 1.95 / math.sqrt(n)                          # KS critical value at p = 0.001


def test_uniform_times_cover_eps_to_T():
    t = sample_time(sd.VPSDE(), 50000, 1e-5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert t.min() >= 1e-5 and t.max() <= 1.0
    assert abs(float(t.mean()) - 0.5) < 4 * (1 / math.sqrt(12)) / math.sqrt(50000)


def _common(sde, n, eps, seed=0, importance=False):
    g = torch.Generator().manual_seed(seed)
    mix = sd.ring8()
    x0 = mix.sample(n, generator=g, dtype=torch.float64)
    t = (importance_time if importance else sample_time)(sde, n, eps, generator=g, dtype=torch.float64)
    z = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return mix, x0, t, z


def test_likelihood_weighting_and_its_importance_sampled_form_agree_sample_by_sample(sde):
    """l_lik(t) = (T - eps) q(t) l_IS(t) with q = g^2 / (sigma^2 Z): the weights are exact."""
    eps = 1e-5
    mix, x0, t, z = _common(sde, 256, eps)
    score = mix.score_fn(sde)
    lik = dsm_loss(score, sde, x0, weighting="likelihood", t=t, noise=z, eps=eps)
    imp = dsm_loss(score, sde, x0, weighting="likelihood", importance_sampling=True, t=t, noise=z, eps=eps)
    q = sde.diffusion(t) ** 2 / sde.std(t) ** 2 / importance_norm(sde, eps)
    assert torch.allclose(lik, (sde.T - eps) * q * imp, rtol=1e-5)


def test_importance_sampled_loss_is_unbiased_for_the_likelihood_weighted_loss(sde):
    """Same expectation, two independent Monte Carlo estimates (eps = 1e-2 keeps the uniform
    estimate's variance finite enough to compare)."""
    n, eps = 40_000, 1e-2
    mix, x0, t, z = _common(sde, n, eps, seed=1)
    score = mix.score_fn(sde)
    lik = dsm_loss(score, sde, x0, weighting="likelihood", t=t, noise=z, eps=eps)
    mix, x0, t, z = _common(sde, n, eps, seed=2, importance=True)
    imp = dsm_loss(score, sde, x0, weighting="likelihood", importance_sampling=True, t=t, noise=z, eps=eps)
    se = math.sqrt(float(lik.var()) / n + float(imp.var()) / n)
    assert abs(float(lik.mean()) - float(imp.mean())) < 4 * se
    if not isinstance(sde, sd.VESDE):                       # for VE, q(t) is uniform: the same loss
        assert float(imp.std()) < float(lik.std())          # and it has the lower variance


def test_dsm_loss_with_the_exact_score_equals_its_minimum(sde):
    """Vincent's identity: at the true score, E[sigma^2 |s + z/sigma|^2] / D = E_t[1 - sigma^2 E|grad log p_t|^2 / D],
    the right side estimated from independent draws of x_t ~ p_t."""
    n, eps, D = 40_000, 1e-5, 2
    mix, x0, t, z = _common(sde, n, eps, seed=3)
    score = mix.score_fn(sde)
    loss = dsm_loss(score, sde, x0, weighting="sigma2", t=t, noise=z)
    mix, x0, t, z = _common(sde, n, eps, seed=4)
    xt = sde.perturb(x0, t, z)
    rhs = 1.0 - sde.std(t) ** 2 * score(xt, t).pow(2).sum(1) / D
    se = math.sqrt(float(loss.var()) / n + float(rhs.var()) / n)
    assert abs(float(loss.mean()) - float(rhs.mean())) < 4 * se


def test_dsm_excess_loss_is_the_weighted_score_error(sde):
    """loss(s* + d) - loss(s*) = E[sigma^2 |d|^2] / D (the cross term has mean zero)."""
    n, D = 40_000, 2
    mix, x0, t, z = _common(sde, n, 1e-5, seed=5)
    exact = mix.score_fn(sde)
    delta = lambda x, tt: 0.3 * torch.tanh(x) / sde.std(tt)[:, None]
    base = dsm_loss(exact, sde, x0, t=t, noise=z)
    pert = dsm_loss(lambda x, tt: exact(x, tt) + delta(x, tt), sde, x0, t=t, noise=z)
    xt = sde.perturb(x0, t, z)
    want = sde.std(t) ** 2 * delta(xt, t).pow(2).sum(1) / D
    diff = pert - base
    se = float((diff - want).std()) / math.sqrt(n)
    assert abs(float(diff.mean()) - float(want.mean())) < 4 * se + 1e-12
    assert float(diff.mean()) > 0


def test_sum_reduction_is_half_the_sum_over_dimensions():
    sde = sd.VPSDE()
    mix, x0, t, z = _common(sde, 64, 1e-5)
    s = lambda x, tt: torch.zeros_like(x)
    mean = dsm_loss(s, sde, x0, t=t, noise=z, reduction="mean")
    total = dsm_loss(s, sde, x0, t=t, noise=z, reduction="sum")
    assert torch.allclose(total, 0.5 * 2 * mean)
    assert torch.allclose(mean, z.pow(2).mean(1))             # zero score: sigma^2 |z/sigma|^2


def test_loss_draws_are_reproducible_with_a_generator():
    sde = sd.VPSDE()
    x0 = torch.randn(32, 2)
    model = lambda x, tt: -x
    model.sde = sde
    loss = DSMLoss("likelihood", True)
    assert torch.equal(loss(model, x0, torch.Generator().manual_seed(0)), loss(model, x0, torch.Generator().manual_seed(0)))


def test_bad_loss_options_are_value_errors():
    sde = sd.VPSDE()
    x0 = torch.randn(4, 2)
    s = lambda x, t: x
    with pytest.raises(ValueError, match="sigma2"):
        dsm_loss(s, sde, x0, weighting="uniform")
    with pytest.raises(ValueError, match="mean"):
        dsm_loss(s, sde, x0, reduction="max")
    with pytest.raises(ValueError, match="likelihood"):
        dsm_loss(s, sde, x0, importance_sampling=True)
    with pytest.raises(ValueError, match="eps"):
        dsm_loss(s, sde, x0, eps=0.0)
    with pytest.raises(ValueError, match="likelihood"):
        DSMLoss("sigma2", True)


def _expected_logpdf(mean, var, m, C):
    # E_{y ~ N(mean, var I)} log N(y; m, diag C), summed over dims
    return float(-0.5 * (torch.log(2 * math.pi * C).sum() + (var / C).sum() + ((mean - m) ** 2 / C).sum()))


def test_training_bound_is_the_constant_minus_the_scaled_loss_to_1e_10(sde):
    from scoresde.losses import bound_constant, dsm_bound

    mix = sd.GaussianMixture([1.0, 2.0], [[0.5, -1.0], [1.0, 2.0]], [0.3, 0.7])
    g = torch.Generator().manual_seed(0)
    x0 = mix.sample(32, generator=g, dtype=torch.float64)
    t = importance_time(sde, 32, 1e-5, generator=g, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    score = mix.score_fn(sde)
    bound, loss = dsm_bound(score, sde, x0, t=t, noise=noise)
    ref = dsm_loss(score, sde, x0, weighting="likelihood", importance_sampling=True, reduction="sum",
                   t=t, noise=noise)
    assert torch.equal(loss, ref)
    C = bound_constant(sde, x0, 1e-5)
    assert torch.allclose(bound, C - (sde.T - 1e-5) * ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("importance_sampling", [True, False])
def test_training_bound_is_tight_for_the_exact_score_up_to_the_prior_mismatch(sde, importance_sampling):
    """E over the DSM draws of the bound = E_{x_eps | x0} log p_eps(x_eps) + E_{x_T | x0}[log pi - log p_T]
    for the exact score of a Gaussian (every term closed form), within 4 standard errors."""
    from scoresde.losses import dsm_bound

    mu, c = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, 0.5, 1.2])
    mix = sd.GaussianMixture([1.0], mu[None].double(), c[None].double())
    x0 = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    n = 40_000 if importance_sampling else 400_000   # uniform t: the 1/t spike of the weighting
    bound, _ = dsm_bound(mix.score_fn(sde), sde, x0.expand(n, 3).contiguous(), importance_sampling=importance_sampling,
                         generator=torch.Generator().manual_seed(1))
    e = torch.tensor([1e-5, sde.T], dtype=torch.float64)
    al, sg = sde.mean_coef(e), sde.std(e)
    c, mu = c.double(), mu.double()
    expected = (_expected_logpdf(al[0] * x0, sg[0] ** 2, al[0] * mu, al[0] ** 2 * c + sg[0] ** 2)
                + _expected_logpdf(al[1] * x0, sg[1] ** 2, 0 * mu, torch.full((3,), sde.prior_std ** 2))
                - _expected_logpdf(al[1] * x0, sg[1] ** 2, al[1] * mu, al[1] ** 2 * c + sg[1] ** 2))
    se = float(bound.std()) / math.sqrt(n)
    assert abs(float(bound.mean()) - expected) < 4 * se


# -- label dropout --------------------------------------------------------------------------------
class _RecordLabels:
    """A score that ignores its inputs and records the labels it was given."""

    num_classes = 3

    def __init__(self):
        self.seen = []

    def __call__(self, x, t, y=None):
        self.seen.append(y)
        return torch.zeros_like(x)


def test_label_dropout_draws_the_null_label_at_rate_p_uncond_and_keeps_t_and_noise():
    sde = sd.VPSDE()
    x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4000) % 3
    rec = _RecordLabels()
    with_labels = sd.dsm_loss(rec, sde, x0, labels=labels, p_uncond=0.2, generator=torch.Generator().manual_seed(1))
    without = sd.dsm_loss(lambda x, t: torch.zeros_like(x), sde, x0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(with_labels, without)   # same t and noise draws
    y = rec.seen[0]
    dropped = y == 3
    assert torch.equal(y[~dropped], labels[~dropped])
    n = 4000   # Binomial(n, 0.2): 4.5 standard deviations
    assert abs(int(dropped.sum()) - 0.2 * n) < 4.5 * math.sqrt(n * 0.2 * 0.8)
    rec = _RecordLabels()
    rec.sde = sde
    sd.DSMLoss(p_uncond=0.0)(rec, x0, torch.Generator().manual_seed(1), labels=labels)
    assert torch.equal(rec.seen[0], labels)
    with pytest.raises(ValueError, match="p_uncond"):
        sd.DSMLoss(p_uncond=1.5)
    with pytest.raises(ValueError, match="class-conditional"):
        sd.dsm_loss(lambda x, t, y=None: x, sde, x0, labels=labels)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        sd.dsm_loss(rec, sde, x0, labels=labels + 1)


def test_label_dropout_fit_learns_the_class_scores_and_the_unconditional_score_at_the_null_label():
    """A conditional MLP fitted for 500 steps on two 1-d classes N(-/+2, 0.5^2).

    Judged where the classes overlap (t in {0.3, 0.45, 0.6}; at small t the class score equals
    the unconditional one almost everywhere), in units of the squared gap E|s_y - s|^2 between
    the class scores and the unconditional score: a label-blind network scores about 1 on one of
    the two checks (measured 1.09); the fit scores about 0.1 on both (measured 0.10 and 0.085), so 0.25 leaves room for the
    optimiser's noise and fails if the labels or the dropout do not work.
    """
    torch.manual_seed(0)
    mix = sd.GaussianMixture([1.0, 1.0], [[-2.0], [2.0]], [0.25, 0.25])
    sde = sd.VPSDE()
    net = sd.nn.build_model("mlp", data_shape=(1,), width=64, depth=2, emb_dim=32, num_classes=2)
    model = sd.ScoreModel(net, sde)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    loss = sd.DSMLoss(p_uncond=0.2)
    for _ in range(500):
        x, y = mix.sample_labelled(256, generator=g)
        value = loss(model, x, g, labels=y)
        opt.zero_grad()
        value.backward()
        opt.step()
    err_null = err_cond = err_blind = gap = 0.0
    with torch.no_grad():
        for t in (0.3, 0.45, 0.6):
            x, y = mix.sample_labelled(2000, generator=g, dtype=torch.float64)
            tt = torch.full((2000,), t, dtype=torch.float64)
            xt = sde.perturb(x, tt, torch.randn(x.shape, generator=g, dtype=torch.float64))
            s, sy = mix.score_t(xt, sde, tt), mix.class_score_t(xt, sde, tt, y)
            null = model(xt.float(), tt.float()).double()
            cond = model(xt.float(), tt.float(), y).double()
            gap += float(((sy - s) ** 2).mean())
            err_null += float(((null - s) ** 2).mean())
            err_cond += float(((cond - sy) ** 2).mean())
            err_blind += float(((null - sy) ** 2).mean())
    assert err_null / gap < 0.25 and err_cond / gap < 0.25, (err_null / gap, err_cond / gap)
    assert err_blind / gap > 0.5   # the null output is not the class score (the check has power)
