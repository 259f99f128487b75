import math

import pytest
import torch

import scoresde as sd


def _autograd_score(mix, sde, x, t):
    x = x.clone().requires_grad_(True)
    lp = mix.log_prob_t(x, sde, t)
    g, = torch.autograd.grad(lp.sum(), x)
    return g


@pytest.mark.parametrize("name", ["ring8", "aniso16"])
@pytest.mark.parametrize("t", [1e-5, 1e-3, 0.1, 0.5, 1.0])
def test_score_matches_autograd_of_log_prob_t(sde, name, t):
    mix = sd.build_mixture(name)
    g = torch.Generator().manual_seed(1)
    x0 = mix.sample(64, generator=g, dtype=torch.float64)
    xt = sde.perturb(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    # points in between modes too, where the responsibilities are mixed
    xt = torch.cat([xt, 0.5 * (xt[:16] + xt[16:32])])
    ref = _autograd_score(mix, sde, xt, t)
    got = mix.score_fn(sde)(xt, torch.full((xt.shape[0],), t, dtype=torch.float64))
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.5])
def test_log_prob_t_integrates_to_one_on_a_grid(sde, t):
    mix = sd.ring8()
    half = 6.0 if not isinstance(sde, sd.VESDE) or t < 0.1 else 6.0 + 8 * float(sde.std(torch.tensor([t])))
    h = 0.02
    ax = torch.arange(-half, half + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(ax, ax, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    if t == 0.0:
        lp = mix.log_prob(pts)
    else:
        lp = mix.log_prob_t(pts, sde, t)
    total = float(lp.exp().sum() * h * h)
    assert abs(total - 1.0) < 1e-6


def test_log_prob_matches_torch_distributions():
    mix = sd.build_mixture("aniso8")
    comp = torch.distributions.MultivariateNormal(mix.means, covariance_matrix=mix.covs)
    ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(mix.weights), comp)
    x = mix.sample(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(mix.log_prob(x), ref.log_prob(x), rtol=1e-10, atol=1e-10)
    # log_prob_t is the density of the explicitly diffused mixture
    sde = sd.SubVPSDE()
    torch.testing.assert_close(mix.log_prob_t(x, sde, 0.3), mix.marginal_t(sde, 0.3).log_prob(x), rtol=1e-10, atol=1e-10)


def test_samples_have_the_mixture_moments():
    mix = sd.build_mixture("aniso8")
    n = 200_000
    x, labels = mix.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64, return_labels=True)
    frac = torch.bincount(labels, minlength=mix.n_components).double() / n
    se = torch.sqrt(mix.weights * (1 - mix.weights) / n)
    assert ((frac - mix.weights).abs() < 5 * se).all()
    for k in range(mix.n_components):
        xk = x[labels == k]
        nk = xk.shape[0]
        var = torch.diagonal(mix.covs[k])
        assert ((xk.mean(0) - mix.means[k]).abs() < 5 * torch.sqrt(var / nk)).all()
        cov = torch.cov(xk.T)
        # se of a sample covariance entry: sqrt((C_ii C_jj + C_ij^2) / n)
        se_c = torch.sqrt((var[:, None] * var[None, :] + mix.covs[k] ** 2) / nk)
        assert ((cov - mix.covs[k]).abs() < 5 * se_c).all()


def test_same_generator_seed_same_samples():
    mix = sd.ring8()
    a = mix.sample(10, generator=torch.Generator().manual_seed(7))
    b = mix.sample(10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert a.dtype == torch.get_default_dtype() and a.shape == (10, 2)


def test_score_is_stable_far_away_and_at_tiny_t(sde):
    mix = sd.ring8()
    x = torch.tensor([[1e3, -2e3], [4.0, 0.0], [0.0, 0.0]], dtype=torch.float32)
    t = torch.full((3,), 1e-5)
    s = mix.score_fn(sde)(x, t)
    assert s.dtype == torch.float32 and torch.isfinite(s).all()
    # far away only the nearest component matters: score = -(x - alpha mu_k) / (alpha^2 c + sigma^2)
    a, sg = sde.mean_coef(t[:1].double()), sde.std(t[:1].double())
    k = int(((x[0].double()[None] - mix.means) ** 2).sum(1).argmin())
    mu = mix.means[k]
    ref = -(x[0].double() - a * mu) / (a ** 2 * 0.0625 + sg ** 2)
    torch.testing.assert_close(s[0].double(), ref, rtol=1e-5, atol=0)
    # at a mode centre the score vanishes
    assert s[1].abs().max() < 1e-3
    # at the ring's centre all modes are equally likely: symmetric, so zero
    assert s[2].abs().max() < 1e-3


def test_image_shaped_event():
    mix = sd.GaussianMixture(torch.ones(2), torch.randn(2, 16, dtype=torch.float64), torch.ones(2), event_shape=(1, 4, 4))
    x = mix.sample(5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 4, 4)
    s = mix.score_fn(sd.VPSDE())(x, torch.full((5,), 0.5))
    assert s.shape == x.shape
    with pytest.raises(ValueError, match="shape"):
        mix.log_prob(torch.zeros(5, 3, 4, 4))


def test_ring8_entropy_is_log8_plus_gaussian_entropy():
    mix = sd.ring8()
    exact = math.log(8) + float(mix.gaussian_entropies()[0])
    h, se = mix.entropy(n=50_000, generator=torch.Generator().manual_seed(0))
    # exact is the separated-modes limit: neighbours sit 3.06 apart = 12.2 std, so the overlap term
    # E[log r_k] is of the order of the tail mass P(|z| > 6.1) ~ 1e-9, and so is the standard error
    assert se < 1e-8 and abs(h - exact) < 5 * se + 1e-8


def _overlapping():
    return sd.GaussianMixture([1.0, 3.0], [[0.0, 0.0], [1.0, 0.0]], [1.0, 0.5])


def test_entropy_matches_plain_monte_carlo_on_overlapping_modes_with_a_smaller_error():
    mix = _overlapping()
    h, se = mix.entropy(n=50_000, generator=torch.Generator().manual_seed(0))
    x = mix.sample(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lp = mix.log_prob(x)
    plain, plain_se = float(-lp.mean()), float(lp.std()) / math.sqrt(lp.numel())
    # independent draws: the difference has standard error sqrt(se^2 + plain_se^2)
    assert abs(h - plain) < 4 * math.hypot(se, plain_se)
    # the point of the split: a smaller spread per draw, even for modes this close (about half here)
    assert se * math.sqrt(50_000) < 0.7 * plain_se * math.sqrt(200_000)


def test_entropy_standard_error_is_the_spread_over_seeds():
    mix = _overlapping()
    runs = torch.tensor([mix.entropy(n=2000, generator=torch.Generator().manual_seed(s)) for s in range(40)],
                        dtype=torch.float64)
    spread, se = float(runs[:, 0].std()), float(runs[:, 1].mean())
    # the sample sd of 40 estimates is within ~23% of the true sd at 2 sigma (relative sd 1/sqrt(2*39))
    assert 0.6 * se < spread < 1.5 * se


def test_entropy_ignores_components_of_weight_zero_and_rejects_tiny_n():
    a = sd.GaussianMixture([1.0, 0.0], [[0.0, 0.0], [5.0, 0.0]], [1.0, 1.0])
    h, se = a.entropy(n=1000, generator=torch.Generator().manual_seed(0))
    # a single Gaussian: exactly its entropy, every responsibility 1
    assert h == pytest.approx(float(a.gaussian_entropies()[0]), abs=1e-12) and se == 0.0
    with pytest.raises(ValueError, match="n must be"):
        a.entropy(n=1)


def test_ready_made_anisotropic_mixture_is_anisotropic():
    mix = sd.build_mixture("aniso16")
    assert mix.dim == 16 and mix.n_components == 4
    lam = torch.linalg.eigvalsh(mix.covs)
    assert (lam.max(1).values / lam.min(1).values > 50).all()
    off = mix.covs - torch.diag_embed(torch.diagonal(mix.covs, dim1=1, dim2=2))
    assert off.abs().max() > 0.05        # rotated, not axis-aligned
    assert len(set(mix.weights.tolist())) == 4


@pytest.mark.parametrize("weights, means, covs, word", [
    ([1.0, -1.0], [[0.0], [1.0]], [1.0, 1.0], "non-negative"),
    ([0.0, 0.0], [[0.0], [1.0]], [1.0, 1.0], "all zero"),
    ([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 2.0], [2.0, 1.0]]], "positive semi-definite"),
    ([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [1.0, -1.0], "positive semi-definite"),
    ([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[[1.0, 0.5], [0.0, 1.0]]] * 2, "symmetric"),
    ([1.0, 1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0], "means must have shape"),
    ([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0, 1.0]] * 2, "diagonal covs"),
    ([[1.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]], [1.0, 1.0], "weights must have shape"),
])
def test_bad_mixtures_raise_naming_the_problem(weights, means, covs, word):
    with pytest.raises(ValueError, match=word):
        sd.GaussianMixture(weights, means, covs)


def test_wrong_data_shape_raises():
    mix = sd.ring8()
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        mix.score_fn(sd.VPSDE())(torch.zeros(4, 3), torch.zeros(4))


def test_unknown_mixture_name_lists_valid_ones():
    with pytest.raises(ValueError, match="ring8"):
        sd.build_mixture("ring9")


# -- exact posteriors for linear inverse problems ----------------------------------------------------
from scoresde import ops as _ops  # noqa: E402


def _random_gaussian(D, seed):
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(D, D, generator=g, dtype=torch.float64)
    return torch.randn(D, generator=g, dtype=torch.float64), L @ L.T + 0.1 * torch.eye(D, dtype=torch.float64)


def test_condition_matches_schur_complement_for_one_gaussian_noiseless():
    mu, C = _random_gaussian(5, 0)
    mix = sd.GaussianMixture(torch.ones(1), mu[None], C[None])
    obs = torch.tensor([True, False, False, True, False])
    y = torch.tensor([0.7, -1.2], dtype=torch.float64)
    post = mix.condition(_ops.Mask(obs), y)
    o, u = obs, ~obs
    S_uo, S_oo = C[u][:, o], C[o][:, o]
    mean_u = mu[u] + S_uo @ torch.linalg.solve(S_oo, y - mu[o])
    cov_u = C[u][:, u] - S_uo @ torch.linalg.solve(S_oo, S_uo.T)
    torch.testing.assert_close(post.means[0, u], mean_u, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(post.means[0, o], y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(post.covs[0][u][:, u], cov_u, rtol=1e-10, atol=1e-12)
    assert post.covs[0][o].abs().max() < 1e-12     # zero variance along the observed entries
    # the singular posterior samples exactly on the observation
    x = post.sample(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(x[:, o], y.expand(100, 2), rtol=0, atol=1e-12)
    assert torch.isfinite(post.log_prob(x)).all()


@pytest.mark.parametrize("name,rows,noise", [("ring8", 1, 0.5), ("aniso8", 2, 1.0)])
def test_condition_matches_importance_weighted_prior_samples(name, rows, noise):
    mix = sd.build_mixture(name)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(rows, mix.dim, generator=g, dtype=torch.float64)
    x_true = mix.sample(1, generator=g, dtype=torch.float64)
    y = x_true @ A.T + noise * torch.randn(1, rows, generator=g, dtype=torch.float64)
    post = mix.condition(A, y, noise_std=noise)
    n = 400_000
    x, labels = mix.sample(n, generator=g, dtype=torch.float64, return_labels=True)
    logw = -0.5 * ((y - x @ A.T) ** 2).sum(1) / noise ** 2
    w = torch.softmax(logw, 0)
    ess = float(1 / (w ** 2).sum())
    assert ess > 2000
    # component masses: each a weighted mean of an indicator, standard error <= sqrt(p (1 - p) / ess)
    mass = torch.zeros(mix.n_components, dtype=torch.float64).index_add_(0, labels, w)
    se = (post.weights * (1 - post.weights) / ess).sqrt() + 1e-4
    assert ((mass - post.weights).abs() <= 5 * se).all(), (mass, post.weights)
    # posterior mean and covariance
    mean_ref = (w[:, None] * x).sum(0)
    pm = (post.weights[:, None] * post.means).sum(0)
    cov = (post.weights[:, None, None] * (post.covs + post.means[:, :, None] * post.means[:, None, :])).sum(0) - pm[:, None] * pm[None]
    se_mean = (torch.diagonal(cov) / ess).sqrt()
    assert ((mean_ref - pm).abs() <= 5 * se_mean).all(), (mean_ref, pm)


def _joint_log_density(mix, M, noise, sde, x, y, t):
    """log p_t(x_t, y) from the joint Gaussian of (x_t, y) under each component (independent of condition)."""
    tt = torch.tensor([t], dtype=torch.float64)
    a, s = float(sde.mean_coef(tt)), float(sde.std(tt))
    D, m = mix.dim, M.shape[0]
    means = torch.cat([a * mix.means, mix.means @ M.T], 1)
    covs = torch.zeros(mix.n_components, D + m, D + m, dtype=torch.float64)
    covs[:, :D, :D] = a ** 2 * mix.covs + s ** 2 * torch.eye(D, dtype=torch.float64)
    covs[:, :D, D:] = a * mix.covs @ M.T
    covs[:, D:, :D] = a * M @ mix.covs
    covs[:, D:, D:] = M @ mix.covs @ M.T + noise ** 2 * torch.eye(m, dtype=torch.float64)
    joint = sd.GaussianMixture(mix.weights, means, covs)
    return joint.log_prob(torch.cat([x, y.expand(x.shape[0], m)], 1))


@pytest.mark.parametrize("noise", [0.0, 0.3])
@pytest.mark.parametrize("t", [1e-3, 0.1, 0.5, 1.0])
def test_conditional_score_matches_autograd_of_joint_density(sde, noise, t):
    mix = sd.build_mixture("aniso8")
    g = torch.Generator().manual_seed(4)
    M = torch.randn(3, mix.dim, generator=g, dtype=torch.float64)
    y = mix.sample(1, generator=g, dtype=torch.float64) @ M.T
    post = mix.condition(_ops.Matrix(M, noise_std=noise), y)
    x0 = post.sample(32, generator=g, dtype=torch.float64)
    xt = sde.perturb(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    xg = xt.clone().requires_grad_(True)
    ref, = torch.autograd.grad(_joint_log_density(mix, M, noise, sde, xg, y, t).sum(), xg)
    got = post.score_fn(sde)(xt, torch.full((32,), t, dtype=torch.float64))
    # the joint (x_t, y) covariance is ill-conditioned at tiny sigma(t) (noise 0): relative 1e-5
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    # and the posterior's own p_t: its score is the gradient of its log-density
    xg = xt.clone().requires_grad_(True)
    ref2, = torch.autograd.grad(post.log_prob_t(xg, sde, t).sum(), xg)
    torch.testing.assert_close(got, ref2, rtol=1e-9, atol=1e-9)


def test_ring8_posterior_weights_given_x1():
    post = sd.ring8().condition(_ops.Mask(torch.tensor([True, False])), torch.tensor([3.6]))
    w = post.prune(1e-6).weights
    assert w.shape == (3,)
    torch.testing.assert_close(w, torch.tensor([0.942, 0.029, 0.029], dtype=torch.float64), rtol=0, atol=2e-3)
    assert post.prune(1e-6).n_components == 3


def test_negative_covariance_rejected_and_psd_accepted():
    with pytest.raises(ValueError, match="positive semi-definite"):
        sd.GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1.0, 0.0], [0.0, -0.5]]]))
    mix = sd.GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    x = mix.sample(10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (x[:, 1] == 0).all()


def test_condition_rejects_bad_input():
    mix = sd.ring8()
    with pytest.raises(ValueError, match="m=1 values"):
        mix.condition(_ops.Mask(torch.tensor([True, False])), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="singular"):
        mix.condition(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("sampler,options", [
    ("pc", {"predictor": "reverse_diffusion", "steps": 500}),
    ("ode", {}),
    ("dpm_solver", {"steps": 20}),
])
def test_sampling_with_exact_conditional_score_reaches_posterior_floor(sampler, options):
    mix = sd.ring8()
    sde = sd.VPSDE()
    post = mix.condition(_ops.Mask(torch.tensor([True, False])), torch.tensor([3.6])).prune(1e-6)
    n = 2000
    out = sd.sample(post.score_fn(sde), sde, (n, 2), sampler=sampler, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64, **options)
    st = sd.metrics.mode_w2(out.x, post)
    floor = sd.metrics.exact_floor(post, n)
    # TV of multinomial frequencies: E ~ sum_k sqrt(w_k (1 - w_k) / n) / 2 ~ 0.005; allow 4x
    assert st.weight_error < 4 * 0.5 * float((post.weights * (1 - post.weights) / n).sqrt().sum())
    assert st.w2 < 1.5 * floor, (st.w2, floor)


# -- classes ------------------------------------------------------------------------------------
def _grouped():
    mix = sd.build_mixture("aniso8")     # 3 components, unequal weights 1:2:3
    return sd.GaussianMixture(mix.weights, mix.means, mix.covs, labels=[1, 0, 1])


def test_default_labels_give_each_component_its_own_class():
    mix = sd.ring8()
    assert mix.num_classes == 8 and mix.labels.tolist() == list(range(8))
    assert sd.build_mixture("aniso16").num_classes == 4
    x = mix.sample(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sde = sd.VPSDE()
    torch.testing.assert_close(mix.class_log_prob_t(x, sde, 0.2).exp(), mix.responsibilities(x, sde, 0.2),
                               rtol=1e-10, atol=1e-12)


def test_conditional_keeps_the_class_components_with_renormalised_weights():
    mix = _grouped()
    c1 = mix.conditional(1)
    torch.testing.assert_close(c1.weights, torch.tensor([1.0, 3.0], dtype=torch.float64) / 4)
    torch.testing.assert_close(c1.means, mix.means[[0, 2]])
    assert c1.labels.tolist() == [1, 1] and c1.num_classes == 2
    torch.testing.assert_close(mix.class_weights(), torch.tensor([2.0, 4.0], dtype=torch.float64) / 6)
    # p(x) = sum_y W_y p(x | y)
    x = mix.sample(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mixed = torch.logsumexp(torch.stack([mix.class_weights()[y].log() + mix.conditional(y).log_prob(x)
                                         for y in range(2)]), 0)
    torch.testing.assert_close(mixed, mix.log_prob(x), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="owns no component"):
        c1.conditional(0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        mix.conditional(2)


@pytest.mark.parametrize("t", [1e-3, 0.1, 0.5, 1.0])
def test_exact_classifier_is_bayes_and_its_gradient_is_class_score_minus_score(sde, t):
    mix = _grouped()
    g = torch.Generator().manual_seed(3)
    x0 = mix.sample(64, generator=g, dtype=torch.float64)
    xt = sde.perturb(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    lp = mix.class_log_prob_t(xt, sde, t)
    torch.testing.assert_close(torch.logsumexp(lp, 1), torch.zeros(64, dtype=torch.float64), rtol=0, atol=1e-12)
    for y in range(2):
        cond = mix.conditional(y)
        # Bayes: log p_t(y | x) = log W_y + log p_t(x | y) - log p_t(x)
        bayes = mix.class_weights()[y].log() + cond.log_prob_t(xt, sde, t) - mix.log_prob_t(xt, sde, t)
        torch.testing.assert_close(lp[:, y], bayes, rtol=1e-9, atol=1e-9)
        (grad,) = torch.autograd.grad(lp[:, y].sum(), xt, retain_graph=True)
        diff = cond.score_t(xt.detach(), sde, t) - mix.score_t(xt.detach(), sde, t)
        torch.testing.assert_close(grad, diff, rtol=1e-8, atol=1e-8 * float(diff.abs().max()))
        torch.testing.assert_close(mix.class_score_t(xt.detach(), sde, t, y), cond.score_t(xt.detach(), sde, t),
                                   rtol=1e-10, atol=1e-10)


def test_class_score_takes_one_label_a_sample(sde):
    mix = _grouped()
    x = mix.sample(30, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.arange(30) % 2
    t = torch.full((30,), 0.3, dtype=torch.float64)
    got = mix.class_score_fn(sde, y)(x, t)
    for c in range(2):
        torch.testing.assert_close(got[y == c], mix.conditional(c).score_t(x[y == c], sde, 0.3), rtol=1e-10, atol=1e-10)
    lp = mix.class_log_prob_fn(sde, y)(x, t)
    torch.testing.assert_close(lp, mix.class_log_prob_t(x, sde, t)[torch.arange(30), y])
    with pytest.raises(ValueError, match="labels"):
        mix.class_score_t(x, sde, t, torch.full((30,), 2))


def test_sample_labelled_gives_the_classes_of_the_drawn_components():
    mix = _grouped()
    x, y = mix.sample_labelled(4000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x2, comp = mix.sample(4000, generator=torch.Generator().manual_seed(5), dtype=torch.float64, return_labels=True)
    assert torch.equal(x, x2) and torch.equal(y, mix.labels[comp])
    # well separated modes: the exact p_0 classifier recovers the drawn classes
    assert (mix.class_log_prob_t(x, None).argmax(1) == y).float().mean() > 0.999
    assert mix.marginal_t(sd.VPSDE(), 0.3).labels.tolist() == [1, 0, 1]


def test_labels_are_validated():
    w, m, c = [1.0, 1.0], [[0.0], [1.0]], [1.0, 1.0]
    with pytest.raises(ValueError, match="shape"):
        sd.GaussianMixture(w, m, c, labels=[0])
    with pytest.raises(ValueError, match="integers"):
        sd.GaussianMixture(w, m, c, labels=[0.5, 1])
    with pytest.raises(ValueError, match="non-negative"):
        sd.GaussianMixture(w, m, c, labels=[-1, 0])
    with pytest.raises(ValueError, match="num_classes"):
        sd.GaussianMixture(w, m, c, labels=[0, 3], num_classes=2)
    mix = sd.GaussianMixture(w, m, c, labels=[0, 2])   # class 1 is empty: probability 0, finite gradients
    x = torch.zeros(3, 1, dtype=torch.float64, requires_grad=True)
    lp = mix.class_log_prob_t(x, sd.VPSDE(), 0.5)
    assert torch.isinf(lp[:, 1]).all() and torch.isfinite(lp[:, [0, 2]]).all()
    (gr,) = torch.autograd.grad(lp[:, 0].sum(), x)
    assert torch.isfinite(gr).all()
