import math

import pytest
import torch
from torchdiffeq import odeint

import scoresde as sd
from scoresde import ops
from scoresde.inverse.smc_moves import _langevin_moves

# few steps: these tests check the contract (shapes, observation, counts, seeds), not accuracy
FAST = {
    "replacement": {"steps": 8},
    "projection": {"steps": 8},
    "dps": {"steps": 8},
    "pigdm": {"steps": 8},
    "repaint": {"steps": 8, "jump_length": 2, "jumps": 2},
    "smc": {"steps": 8},
}


def _image_mixture(shape):
    D = math.prod(shape)
    mix = sd.anisotropic(dim=D, n_modes=2, seed=3)
    return sd.GaussianMixture(mix.weights, mix.means, mix.covs, event_shape=shape)


def _problem(kind, n=6):
    g = torch.Generator().manual_seed(5)
    if kind == "vector":
        mix, op = sd.ring8(), ops.Mask(torch.tensor([True, False]))
    elif kind == "image_mask":
        mix = _image_mixture((1, 4, 4))
        op = ops.Mask(torch.rand(1, 4, 4, generator=g) < 0.5)
    elif kind == "downsample":
        mix, op = _image_mixture((1, 4, 4)), ops.Downsample(2)
    else:
        mix, op = _image_mixture((3, 2, 2)), ops.Grayscale("luminance")
    x0 = mix.sample(1, generator=g)
    y = op.forward(x0).expand((n,) + op.forward(x0).shape[1:]).clone()
    return mix, op, y


@pytest.mark.parametrize("kind", ["vector", "image_mask", "downsample", "grayscale"])
@pytest.mark.parametrize("method", sorted(FAST))
def test_every_method_respects_a_noiseless_observation(method, kind):
    mix, op, y = _problem(kind)
    sde = sd.VPSDE()
    out = sd.sample_posterior(mix.score_fn(sde), sde, op, y, method=method,
                              generator=torch.Generator().manual_seed(0), **FAST[method])
    assert out.x.shape == (y.shape[0],) + mix.event_shape
    assert torch.isfinite(out.x).all()
    if isinstance(op, ops.Mask):
        assert torch.equal(op.forward(out.x), y)          # exactly, not to rounding
    else:
        torch.testing.assert_close(op.forward(out.x), y, rtol=1e-5, atol=1e-5)
    assert out.method == method and out.forward_passes == out.nfe > 0


@pytest.mark.parametrize("method,nfe,back", [
    ("replacement", 16, 0), ("projection", 8, 0), ("dps", 8, 8), ("pigdm", 8, 8), ("smc", 8, 0),
    ("repaint", sum(1 for a, b in zip(sd.inverse.repaint_schedule(8, 2, 2), sd.inverse.repaint_schedule(8, 2, 2)[1:]) if b < a), 0),
])
def test_nfe_and_backward_passes_are_counted(method, nfe, back):
    mix, op, y = _problem("vector")
    sde = sd.VPSDE()
    calls = []

    def score_fn(x, t):
        calls.append(1)
        return mix.score_t(x, sde, t)

    opts = dict(FAST[method])
    if method in ("projection", "dps", "pigdm"):
        opts["predictor"] = "reverse_diffusion"
    out = sd.sample_posterior(score_fn, sde, op, y, method=method, generator=torch.Generator().manual_seed(0), **opts)
    assert out.nfe == len(calls) == nfe
    assert out.backward_passes == back


def test_repaint_schedule_traverses_each_stretch_jumps_times():
    s = sd.inverse.repaint_schedule(20, jump_length=5, jumps=3)
    assert s[0] == 20 and s[-1] == 0
    assert all(abs(a - b) == 1 for a, b in zip(s, s[1:]))
    downs = sum(1 for a, b in zip(s, s[1:]) if b < a)
    # indices 0..14 are jump points 0, 5, 10: each of those stretches is walked down 3 times
    assert downs == 20 + 2 * 5 * 3


@pytest.mark.parametrize("method", sorted(FAST))
def test_same_seed_same_samples_and_only_the_generator_is_used(method):
    mix, op, y = _problem("vector")
    sde = sd.VPSDE()
    run = lambda seed: sd.sample_posterior(mix.score_fn(sde), sde, op, y, method=method,
                                           generator=torch.Generator().manual_seed(seed), **FAST[method]).x
    torch.manual_seed(123)
    a = run(0)
    torch.manual_seed(456)          # the global RNG must not matter
    assert torch.equal(a, run(0))
    assert not torch.equal(a, run(1))


@pytest.mark.parametrize("method,sampler", [("projection", "ode"), ("dps", "dpm_solver"), ("pigdm", "dpm_solver")])
def test_score_wrappers_run_under_other_samplers(method, sampler):
    mix, op, y = _problem("vector")
    sde = sd.VPSDE()
    opts = {} if sampler == "ode" else {"steps": 6}
    out = sd.sample_posterior(mix.score_fn(sde), sde, op, y, method=method, sampler=sampler,
                              generator=torch.Generator().manual_seed(0), **opts)
    assert torch.equal(op.forward(out.x), y) and out.sampler == sampler
    if method != "projection":
        assert out.backward_passes == out.nfe


def test_bad_arguments_raise():
    mix, op, y = _problem("vector")
    sde = sd.VPSDE()
    sf = mix.score_fn(sde)
    with pytest.raises(ValueError, match="valid methods"):
        sd.sample_posterior(sf, sde, op, y, method="magic")
    with pytest.raises(ValueError, match="own loop"):
        sd.sample_posterior(sf, sde, op, y, method="smc", sampler="ode")
    with pytest.raises(ValueError, match="valid options"):
        sd.sample_posterior(sf, sde, op, y, method="repaint", snr=0.1)
    y2 = y.clone()
    y2[0] += 1
    with pytest.raises(ValueError, match="same observation"):
        sd.sample_posterior(sf, sde, op, y2, method="smc")
    with pytest.raises(ValueError, match="divisor"):
        sd.sample_posterior(sf, sde, op, y, method="smc", particles=4)


# -- replacement's bias in closed form ------------------------------------------------------------
def _replacement_limit(sde, rho, x1, eps):
    """Mean and variance of x2 under replacement in the limit of many steps.

    The prior is N(0, [[1, rho], [rho, 1]]); at t its precision is P = (alpha^2 Sigma + sigma^2 I)^-1,
    so the score's x2 component is -(P21 x1 + P22 x2).  Replacement feeds x1 = alpha y plus fresh
    zero-mean noise each step (whose effect on x2 averages out as the steps shrink), so x2 follows
    the linear reverse SDE dx2 = (c x2 + d) dt + g dw_bar with c = f + g^2 P22, d = g^2 P21 alpha y:
    in forward time, dm/dt = c m + d and dV/dt = 2 c V - g^2, from m = 0, V = 1 at t = T.
    """

    def rhs(t, state):
        tt = t.reshape(1).to(torch.float64).clamp(0.0, sde.T)   # the adaptive solver may probe past 0
        a, s = sde.mean_coef(tt)[0], sde.std(tt)[0]
        f, g2 = sde.drift_coef(tt)[0], sde.diffusion(tt)[0] ** 2
        det = (a ** 2 + s ** 2) ** 2 - (a ** 2 * rho) ** 2
        c = f + g2 * (a ** 2 + s ** 2) / det
        d = g2 * (-(a ** 2) * rho / det) * a * x1
        return torch.stack([c * state[0] + d, 2 * c * state[1] - g2])

    out = odeint(rhs, torch.tensor([0.0, 1.0], dtype=torch.float64),
                 torch.tensor([sde.T, eps], dtype=torch.float64), rtol=1e-10, atol=1e-12)
    return float(out[-1, 0]), float(out[-1, 1])


def test_replacement_bias_matches_its_closed_form():
    sde, rho, x1 = sd.VPSDE(), 0.9, 1.5
    m, V = _replacement_limit(sde, rho, x1, 1e-3)
    assert abs(m - 0.94) < 0.005 and abs(V - 0.31) < 0.005           # the figures
    assert abs(m - rho * x1) > 0.4 and abs(V - (1 - rho ** 2)) > 0.1  # and not the truth N(1.35, 0.19)
    mix = sd.GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1.0, rho], [rho, 1.0]]]))
    n = 4000
    y = torch.full((n, 1), x1, dtype=torch.float64)
    out = sd.sample_posterior(mix.score_fn(sde), sde, ops.Mask(torch.tensor([True, False])), y,
                              method="replacement", corrector="none", steps=500, denoise=False,
                              generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x2 = out.x[:, 1]
    # standard errors of the sample mean and variance, plus 0.01 for 500 steps' discretization
    assert abs(float(x2.mean()) - m) < 4 * math.sqrt(V / n) + 0.01
    assert abs(float(x2.var()) - V) < 4 * V * math.sqrt(2 / n) + 0.01


# -- the SMC sampler against the exact posterior -----------------------------------------------------
def _ring8_problem():
    mix = sd.ring8()
    op = ops.Mask(torch.tensor([True, False]))
    post = mix.condition(op, torch.tensor([3.6])).prune(1e-6)
    return mix, op, post


def _smc_stats(mix, op, post, n, steps, seed=0, y0=(3.6,), **kw):
    sde = sd.VPSDE()
    y = torch.tensor([list(y0)]).expand(n, len(y0)).clone()
    out = sd.sample_posterior(mix.score_fn(sde), sde, op, y, method="smc", steps=steps,
                              generator=torch.Generator().manual_seed(seed), **kw)
    return sd.metrics.mode_w2(out.x, post), sd.metrics.exact_floor(post, n)


def test_smc_matches_ring8_posterior_weights_and_floor():
    mix, op, post = _ring8_problem()
    torch.testing.assert_close(post.weights, torch.tensor([0.942, 0.029, 0.029], dtype=torch.float64), rtol=0, atol=2e-3)
    st, floor = _smc_stats(mix, op, post, n=2000, steps=200)
    # multinomial TV noise at n = 2000 is about 0.005; resampling correlates the particles (fewer
    # distinct samples than independent draws), so allow 0.03 and 2.5x the independent-sample
    # floor (measured over seeds 0-2: 0.007-0.016, 1.0-2.2x); the slow test checks 1.5x at n = 8000
    assert st.weight_error < 0.03, st.counts
    assert st.w2 < 2.5 * floor, (st.w2, floor)


def test_smc_error_shrinks_with_particles_and_steps():
    mix, op, post = _ring8_problem()
    # the same 2,000 samples: 10 clouds of 200 particles over 20 steps, then one cloud over 100
    small, floor = _smc_stats(mix, op, post, n=2000, steps=20, particles=200)
    large, _ = _smc_stats(mix, op, post, n=2000, steps=100, particles=2000)
    assert large.weight_error < 0.5 * small.weight_error, (large.counts, small.counts)
    assert large.w2 < 0.5 * small.w2
    assert large.w2 < 1.5 * floor


def test_smc_noisy_general_operator_matches_posterior():
    mix = sd.ring8()
    op = ops.Matrix(torch.tensor([[0.6, 0.8]]), noise_std=0.3)
    post = mix.condition(op, torch.tensor([3.0])).prune(1e-6)
    assert post.n_components >= 2
    st, floor = _smc_stats(mix, op, post, n=2000, steps=100, y0=(3.0,))
    assert st.weight_error < 0.03, (st.counts, post.weights)
    assert st.w2 < 1.5 * floor, (st.w2, floor)


@pytest.mark.slow
def test_smc_heavy_ring8_reaches_the_floor():
    mix, op, post = _ring8_problem()
    st, floor = _smc_stats(mix, op, post, n=8000, steps=400, particles=1000)
    assert st.weight_error < 0.02, st.counts
    assert st.w2 < 1.2 * floor, (st.w2, floor)


def test_replacement_is_biased_on_ring8_where_smc_is_not():
    mix, op, post = _ring8_problem()
    sde = sd.VPSDE()
    y = torch.full((1000, 1), 3.6)
    out = sd.sample_posterior(mix.score_fn(sde), sde, op, y, method="replacement", steps=100,
                              generator=torch.Generator().manual_seed(0))
    assert sd.metrics.mode_w2(out.x, post).weight_error > 0.4     # about (0.33, 0.34, 0.33)


@pytest.mark.parametrize("potential", ["path", "twisted", "tweedie"])
def test_smc_hits_a_correlated_gaussian_posterior(potential):
    # one Gaussian in 3-d with correlated covariance, the first coordinate observed: the exact
    # posterior is N(mu_2|1, Sigma_2|1); the SMC's mean within 5 standard errors (the errors of
    # 8 independent clouds, each with its own observation path, are independent: the standard
    # error is taken from the spread of the cloud means, not from n), its covariance within 10 %
    D, n, P = 3, 4000, 500
    cov = torch.tensor([[1.0, 0.9, -0.6], [0.9, 1.0, -0.5], [-0.6, -0.5, 1.0]], dtype=torch.float64)
    mix = sd.GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, D, dtype=torch.float64), cov[None])
    op = ops.Mask(torch.tensor([True, False, False]))
    y = torch.tensor([[1.5]], dtype=torch.float64)
    post = mix.condition(op, y)
    sde = sd.VPSDE()
    out = sd.sample_posterior(mix.score_fn(sde), sde, op, y.expand(n, 1).clone(), method="smc", steps=200,
                              particles=P, potential=potential, generator=torch.Generator().manual_seed(0))
    x = out.x[:, 1:]
    mu, C = post.means[0, 1:], post.covs[0, 1:, 1:]
    cloud_means = x.reshape(n // P, P, 2).mean(1)
    se = torch.maximum(cloud_means.std(0) / math.sqrt(n // P), (C.diagonal() / n).sqrt())
    assert (x.mean(0) - mu).abs().max() < 5 * se.max(), (x.mean(0), mu, se)
    torch.testing.assert_close(torch.cov(x.T), C, rtol=0.1, atol=0.02)


def _aniso_gaussian_problem():
    # component 0 of aniso16 alone (rotated covariance, eigenvalues 0.01-1, so the observed and
    # unobserved blocks are correlated), the first 8 coordinates observed at the mean + 1.0 (a
    # point atypical for the prior, where replacement's move is about 1.2 off)
    full = sd.anisotropic(16, 4, seed=0)
    mix = sd.GaussianMixture(torch.ones(1, dtype=torch.float64), full.means[:1], full.covs[:1])
    m = torch.zeros(16, dtype=torch.bool)
    m[:8] = True
    op = ops.Mask(m)
    y = op.forward(mix.means[:1]) + 1.0
    return mix, op, y, mix.condition(op, y), m


def _tds_mean_error(steps: int, n: int = 4000, P: int = 500):
    mix, op, y, post, m = _aniso_gaussian_problem()
    sde = sd.VPSDE()
    out = sd.sample_posterior(mix.score_fn(sde), sde, op, y.expand(n, -1).clone(), method="smc", steps=steps,
                              particles=P, potential="tweedie", twist_cov="jacobian",
                              generator=torch.Generator().manual_seed(0))
    x = out.x[:, ~m]
    mu, C = post.means[0][~m], post.covs[0][~m][:, ~m]
    se = (C.diagonal() / n).sqrt()
    return x, mu, C, se, out


@pytest.mark.slow
def test_smc_tweedie_hits_a_correlated_16d_gaussian_and_improves_with_steps():
    # 'path' is off by 0.07-0.17 here at 500-4,000 particles (see smc's docstring); the Jacobian
    # TDS at 400 steps is within 4 standard errors coordinate by coordinate (measured 1.7), its
    # covariance within 0.015 (measured 0.004), its weights nearly uniform (ESS never below half
    # the cloud: no resampling but the final one), and the error at 100 steps is larger.
    x, mu, C, se, out = _tds_mean_error(400)
    err400 = (x.mean(0) - mu).abs()
    assert (err400 / se).max() < 4, (err400, se)
    assert (torch.cov(x.T) - C).abs().max() < 0.015
    assert out.info["resamples"] == out.info["clouds"], out.info
    assert out.nfe == 401 and out.backward_passes == 401 * 8, (out.nfe, out.backward_passes)
    x100, *_ = _tds_mean_error(100)
    err100 = (x100.mean(0) - mu).abs()
    assert err100.norm() > 1.5 * err400.norm(), (err100.norm(), err400.norm())


def test_smc_rejects_unknown_potential_and_twist_cov():
    sde, op = sd.VPSDE(), ops.Mask(torch.tensor([True, False]))
    mix = sd.ring8()
    y = torch.zeros(4, 1)
    with pytest.raises(ValueError, match="valid potentials"):
        sd.sample_posterior(mix.score_fn(sde), sde, op, y, method="smc", steps=2, potential="pth")
    with pytest.raises(ValueError, match="twist_cov"):
        sd.sample_posterior(mix.score_fn(sde), sde, op, y, method="smc", steps=2, potential="tweedie",
                            twist_cov="jacobain")


# -- resample-move: Langevin / MALA rejuvenation, evidence-pooled clouds ------------------------------
POOLED = dict(potential="twisted", moves=3, pool=True, particles=100, oversample=8)


def test_mala_moves_keep_a_gaussian_exactly_invariant_where_ula_is_biased():
    # exact N(0, Sigma) samples, correlated 2-d; 20 preconditioned Langevin moves with a large step
    # (snr 0.7).  The trapezoidal energy difference is exact for a Gaussian, so MALA keeps the
    # covariance (to sampling error, about 1 %); ULA's law is measurably wider (13-14 % here).
    cov = torch.tensor([[1.0, 0.16], [0.16, 0.04]], dtype=torch.float64)
    prec = torch.linalg.inv(cov)
    n = 20000
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    op = ops.Mask(torch.tensor([True, False]))
    score = lambda x, t: -x @ prec
    out = {}
    for kernel in ("mala", "ula"):
        ctx = sd.samplers.SamplerContext(torch.Generator().manual_seed(1), False)
        x, sc, acc = _langevin_moves(score, op, (1,), x0.clone(), 0.5, 20, 0.7, 1, n, ctx,
                                                torch.zeros_like, lambda v: v, kernel)
        torch.testing.assert_close(sc, score(x, None))           # the score left behind is x's
        out[kernel] = (torch.cov(x.T), acc)
    c_mala, acc = out["mala"]
    assert 0.2 < acc < 1.0
    torch.testing.assert_close(c_mala, cov, rtol=0.05, atol=0.004)
    c_ula, acc_u = out["ula"]
    assert acc_u == 1.0 and (c_ula.diagonal() > 1.1 * cov.diagonal()).all(), c_ula


def test_pooled_resample_move_respects_the_observation_and_counts_nfe():
    mix, op, y = _problem("image_mask", n=16)
    sde = sd.VPSDE()
    calls = []

    def score_fn(x, t):
        calls.append(x.shape[0])
        return mix.score_t(x, sde, t)

    out = sd.sample_posterior(score_fn, sde, op, y, method="smc", steps=6, potential="twisted", moves=2,
                              pool=True, particles=8, oversample=4, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (16,) + mix.event_shape and torch.isfinite(out.x).all()
    assert torch.equal(op.forward(out.x), y)
    # one score for the first step, then (1 + moves) a level: the moves' last score feeds the next step
    assert out.nfe == len(calls) == 1 + 6 * 3
    assert set(calls) == {64} and out.info["clouds"] == 8 and 0 < out.info["move_acceptance"] <= 1
    assert 1 <= out.info["cloud_ess"] <= 8


def test_resample_move_bad_arguments_raise():
    mix, op, y = _problem("vector")
    sde = sd.VPSDE()
    sf = mix.score_fn(sde)
    with pytest.raises(ValueError, match="pool"):
        sd.sample_posterior(sf, sde, op, y, method="smc", steps=2, pool=True)          # path potential
    with pytest.raises(ValueError, match="oversample"):
        sd.sample_posterior(sf, sde, op, y, method="smc", steps=2, potential="twisted", oversample=2)
    with pytest.raises(ValueError, match="move_kernel"):
        sd.sample_posterior(sf, sde, op, y, method="smc", steps=2, moves=1, move_kernel="hmc")
    with pytest.raises(ValueError, match="moves"):
        sd.sample_posterior(sf, sde, op, y, method="smc", steps=2, moves=-1)
    with pytest.raises(ValueError, match="tweedie"):
        sd.sample_posterior(sf, sde, op, y, method="smc", steps=2, moves=1, potential="tweedie")
    y2 = y.clone()
    y2[0] += 1
    with pytest.raises(ValueError, match="one observation"):
        sd.sample_posterior(sf, sde, op, y2, method="smc", steps=2, potential="twisted", pool=True, particles=1)


def _aniso_mixture_problem(dim: int, noise: float, modes=(1, 3), a: float = 0.475):
    # aniso(dim) mixture, first half observed between two modes (two posterior modes)
    mix = sd.anisotropic(dim, 4, seed=0)
    m = torch.zeros(dim, dtype=torch.bool)
    m[: dim // 2] = True
    op = ops.Mask(m, noise_std=noise)
    y = (a * mix.means[modes[0]] + (1 - a) * mix.means[modes[1]])[None, : dim // 2].clone()
    return mix, op, y, mix.condition(op, y, noise_std=noise).prune(1e-6)


def test_pooled_resample_move_error_shrinks_with_clouds_and_steps_on_a_mixture():
    # 6-d mixture, 3 of 6 coordinates observed (posterior weights 0.31 / 0.69): a bare twisted SMC
    # over few steps in one cloud against the pooled resample-move SMC, more steps, 8x the particles
    mix, op, y, post = _aniso_mixture_problem(6, 0.0, (1, 2), 0.5)
    sde, n = sd.VPSDE(), 1000
    Y = y.float().expand(n, -1).clone()
    run = lambda **kw: sd.metrics.mode_w2(sd.sample_posterior(mix.score_fn(sde), sde, op, Y, method="smc",
                                                              generator=torch.Generator().manual_seed(0), **kw).x, post)
    small = run(steps=10, potential="twisted", particles=1000)
    large = run(steps=40, **POOLED)
    floor = sd.metrics.exact_floor(post, n)
    assert large.w2 < 0.5 * small.w2, (large.w2, small.w2)
    assert large.w2 < 1.5 * floor and large.weight_error < 0.05, (large.w2, floor, large.counts)


@pytest.mark.slow
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_pooled_resample_move_meets_the_16d_goal(noise):
    # issue 13's goal on aniso16 (8 of 16 observed) at 401 NFE: measured (seed 0) mode-weight
    # error 0.018 / 0.012 and W2 0.81x / 0.95x the exact-sample floor (noise 0 / 0.1)
    mix, op, y, post = _aniso_mixture_problem(16, noise)
    sde, n = sd.VPSDE(), 2000
    out = sd.sample_posterior(mix.score_fn(sde), sde, op, y.float().expand(n, -1).clone(), method="smc",
                              steps=100, generator=torch.Generator().manual_seed(0), **POOLED)
    st = sd.metrics.mode_w2(out.x.double(), post)
    assert out.nfe == 401
    assert st.weight_error < 0.05 and st.w2 < 1.5 * sd.metrics.exact_floor(post, n), (st.counts, st.w2)


def test_path_smc_with_moves_on_a_noisy_general_operator():
    # the path variant's moves carry, before tau, the forward-transition likelihood of the observed
    # coordinate to its path value at tau: measured 0.068 / 0.76x the floor at 105 NFE
    mix = sd.ring8()
    op = ops.Matrix(torch.tensor([[0.6, 0.8]]), noise_std=0.3)
    post = mix.condition(op, torch.tensor([3.0])).prune(1e-6)
    st, floor = _smc_stats(mix, op, post, n=2000, steps=25, y0=(3.0,), moves=3)
    assert st.weight_error < 0.12, (st.counts, post.weights)
    assert st.w2 < 1.5 * floor, (st.w2, floor)
