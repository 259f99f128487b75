"""Editing (scoresde/edit.py) judged against closed forms: SDEdit's law with a mixture's exact score
(the posterior mixture averaged over the noised guide), the ODE edit's affine law on Gaussian data,
the encoder's round trip and latents, interpolation."""

import math

import pytest
import torch

import scoresde as sd

pytestmark = pytest.mark.usefixtures("one_thread")

RING = sd.ring8()
MODES = RING.means  # [8, 2]


def _mode_shares(x: torch.Tensor) -> torch.Tensor:
    """The share of points nearest each ring8 mode, [8]."""
    d = torch.cdist(x.to(torch.float64).reshape(-1, 2), MODES)
    return torch.bincount(d.argmin(1), minlength=8).double() / x.shape[0]


def _assert_same_law(a: torch.Tensor, b: torch.Tensor, z: float = 5.0):
    """Two samples of a 2-d law: mode shares, means and covariances agree within z two-sample
    standard errors."""
    n, m = a.shape[0], b.shape[0]
    pa, pb = _mode_shares(a), _mode_shares(b)
    p = 0.5 * (pa + pb)
    se = torch.sqrt(p * (1 - p) * (1 / n + 1 / m)) + 1e-3
    assert ((pa - pb).abs() <= z * se).all(), (pa, pb)
    a, b = a.double(), b.double()
    va, vb = a.var(0), b.var(0)
    assert ((a.mean(0) - b.mean(0)).abs() <= z * torch.sqrt(va / n + vb / m)).all(), (a.mean(0), b.mean(0))
    # covariance entries: var(x y) / n as the spread of each product's mean
    for i in range(2):
        for j in range(2):
            pa_ = (a[:, i] - a[:, i].mean()) * (a[:, j] - a[:, j].mean())
            pb_ = (b[:, i] - b[:, i].mean()) * (b[:, j] - b[:, j].mean())
            se = math.sqrt(float(pa_.var()) / n + float(pb_.var()) / m)
            assert abs(float(pa_.mean() - pb_.mean())) <= z * se, (i, j, float(pa_.mean()), float(pb_.mean()))


# -- SDEdit --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler, opts", [("sde", dict(steps=300)),
                                           ("pc", dict(steps=300, predictor="reverse_diffusion"))])
def test_stochastic_sdedit_follows_the_closed_form_posterior_mixture(sampler, opts):
    """x_t0 ~ N(alpha g, sigma^2 I), then x0 ~ p(x0 | x_t0): the mixture's exact posterior given the
    edit's own x_t0 (GaussianMixture.posterior_sample).  The guide lies between two modes, so the
    posterior mixes several; t0 = 0.4 leaves the guide's pull visible (not the data's law)."""
    sde = sd.VPSDE()
    n = 2000
    g = torch.tensor([[2.6, 1.2]]).repeat(n, 1).double()
    out = sd.edit.sdedit(RING.score_fn(sde), sde, g, 0.4, sampler=sampler,
                         generator=torch.Generator().manual_seed(1), **opts)
    assert out.nfe == 300 and out.x.shape == g.shape and out.t0 == 0.4
    exact = RING.posterior_sample(out.x_t0, sde, 0.4, generator=torch.Generator().manual_seed(2))
    _assert_same_law(out.x, exact)
    # the guide's pull is real: the law is far from the data's (its two nearest modes hold more
    # than half of it, against a quarter under the data's law)
    shares = _mode_shares(exact)
    assert shares[0] + shares[1] > 0.5, shares
    # and the noised guide itself is the forward SDE's: mean alpha g, std sigma
    a, s = sde.coefs(0.4, dtype=torch.float64)
    r = (out.x_t0 - float(a) * g) / float(s)
    assert abs(float(r.mean())) < 5 / math.sqrt(2 * n) and abs(float(r.std()) - 1) < 5 / math.sqrt(4 * n)


def test_posterior_sample_is_the_conditioned_mixture():
    """posterior_sample(x_t) draws from condition(alpha I, x_t, sigma), the Kalman update: the mean
    and covariance of many draws given one x_t match that mixture's."""
    sde = sd.VPSDE()
    mix = sd.anisotropic(dim=3, n_modes=3)
    t = 0.3
    x_t = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    a, s = (float(v) for v in sde.coefs(t, dtype=torch.float64))
    post = mix.condition(a * torch.eye(3, dtype=torch.float64), x_t, s)
    n = 20000
    draws = mix.posterior_sample(x_t.repeat(n, 1), sde, t, generator=torch.Generator().manual_seed(0))
    mean = (post.weights[:, None] * post.means).sum(0)
    second = (post.weights[:, None, None] * (post.covs + post.means[:, :, None] * post.means[:, None, :])).sum(0)
    cov = second - mean[:, None] * mean[None]
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert ((draws.mean(0) - mean).abs() <= 5 * se).all()
    assert torch.allclose(torch.cov(draws.T), cov, atol=5 * float(torch.diagonal(cov).max()) * math.sqrt(2 / n))


@pytest.mark.parametrize("sampler, opts", [("sde", dict(steps=50)), ("ode", {})])
def test_sdedit_as_t0_goes_to_zero_returns_the_guide(sampler, opts):
    """Off the data (between modes) the edit lands near the guide, and nearer as t0 shrinks: to
    first order x0 = g + sigma z' + sigma^2 grad log p_0(g) (the noise, then Tweedie's pull towards
    the data), so each edit lies within 3 sigma + 2 sigma^2
    |grad log p_0(g)| of its guide (a 3-sigma bound on the mean distance of the 2-d noise)."""
    sde = sd.VPSDE()
    g = torch.tensor([[2.6, 1.2], [4.5, 0.3], [3.0, -3.0]], dtype=torch.float64).repeat(100, 1)
    pull = RING.score_t(g, sde, 0.0).norm(dim=1)
    dists = []
    for t0 in (0.02, 0.005):
        out = sd.edit.sdedit(RING.score_fn(sde), sde, g, t0, sampler=sampler,
                             generator=torch.Generator().manual_seed(0), **opts)
        sigma = float(sde.std(torch.tensor([t0], dtype=torch.float64)))
        dist = (out.x - g).norm(dim=1).reshape(100, 3).mean(0)
        bound = 3 * sigma + 2 * sigma ** 2 * pull[:3]
        assert (dist < bound).all(), (t0, dist, bound)
        dists.append(float(dist.mean()))
    assert dists[1] < 0.5 * dists[0]


def test_sdedit_from_T_forgets_the_guide():
    """At t0 = T the edit's law is the data's (up to alpha(T) g = 0.03 here): two guides on
    opposite sides give the same law, with ring8's equal mode weights."""
    sde = sd.VPSDE()
    n = 1500
    outs = []
    for i, guide in enumerate(([4.0, 0.0], [-4.0, 0.0])):
        g = torch.tensor([guide], dtype=torch.float64).repeat(n, 1)
        outs.append(sd.edit.sdedit(RING.score_fn(sde), sde, g, sde.T, sampler="sde", steps=200,
                                   generator=torch.Generator().manual_seed(10 + i)).x)
    _assert_same_law(outs[0], outs[1])
    exact = RING.sample(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _assert_same_law(outs[0], exact)
    assert (_mode_shares(outs[0]) - 1 / 8).abs().max() < 5 * math.sqrt(1 / 8 * 7 / 8 / n)


def _gaussian(dim: int = 3):
    gen = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    C = Q @ torch.diag(torch.tensor([0.05, 0.6, 3.0], dtype=torch.float64)[:dim]) @ Q.T
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)[:dim]
    return mu, C, sd.GaussianMixture(torch.ones(1), mu[None], C[None])


def _sqrtm(M: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    lam, U = torch.linalg.eigh(M)
    return U @ torch.diag(lam ** power) @ U.T


@pytest.mark.parametrize("sampler, opts, tol", [("ode", dict(rtol=1e-8, atol=1e-8), 1e-5),
                                                ("dpm_solver", dict(steps=40), 2e-3)])
def test_ode_sdedit_on_gaussian_data_is_the_affine_flow_map(sde, sampler, opts, tol):
    """For N(mu, C) data the flow from t0 to eps is affine: x_eps = alpha_e mu + B (x_t0 - alpha mu),
    B = (alpha_e^2 C + sigma_e^2 I)^1/2 (alpha^2 C + sigma^2 I)^-1/2 (to eps; at eps -> 0 that is
    the issue's A = C^1/2 (alpha^2 C + sigma^2 I)^-1/2), so each edit is that map of its own x_t0,
    and the edits' law is N(mu + alpha A (g - mu), sigma^2 C (alpha^2 C + sigma^2 I)^-1), not the
    posterior's (whose covariance is larger)."""
    mu, C, mix = _gaussian()
    eps, I = 1e-3, torch.eye(3, dtype=torch.float64)
    g = torch.tensor([[3.0, 1.0, -1.0]], dtype=torch.float64).repeat(64, 1)
    for t0 in (0.3, sde.T):
        out = sd.edit.sdedit(mix.score_fn(sde), sde, g, t0, sampler=sampler, eps=eps,
                             generator=torch.Generator().manual_seed(0), **opts)
        a, s = (float(v) for v in sde.coefs(t0, dtype=torch.float64))
        ae, se = (float(v) for v in sde.coefs(eps, dtype=torch.float64))
        B = _sqrtm(ae ** 2 * C + se ** 2 * I) @ _sqrtm(a ** 2 * C + s ** 2 * I, -0.5)
        want = ae * mu + (out.x_t0 - a * mu) @ B.T
        scale = float(want.norm(dim=1).max())
        assert float((out.x - want).norm(dim=1).max()) < tol * scale, (t0, float((out.x - want).abs().max()))
    # the law's closed form (eps -> 0) against the posterior's: the ODE edit is narrower
    A = _sqrtm(C) @ _sqrtm(a ** 2 * C + s ** 2 * I, -0.5)
    ode_cov = s ** 2 * C @ torch.linalg.inv(a ** 2 * C + s ** 2 * I)
    assert torch.allclose(s ** 2 * A @ A.T, ode_cov, atol=1e-10)
    post_cov = C - a ** 2 * C @ torch.linalg.inv(a ** 2 * C + s ** 2 * I) @ C  # Var[x0 | x_t0]
    law_cov_sde = post_cov + a ** 2 * s ** 2 * C @ torch.linalg.inv(a ** 2 * C + s ** 2 * I) @ \
        torch.linalg.inv(a ** 2 * C + s ** 2 * I) @ C  # + Var[E[x0 | x_t0]]
    assert torch.linalg.eigvalsh(law_cov_sde - ode_cov).min() > 0


def test_masked_sdedit_keeps_the_guide_and_its_score_is_the_inverse_projection():
    """Outside the mask the edit is the guide to the last bit; the region score is inverse's
    `projection` wrapper for the mask operator observing the kept pixels."""
    from scoresde.inverse import WRAPPERS

    sde = sd.VPSDE()
    mix = sd.anisotropic(dim=4, n_modes=2)
    g = mix.sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.3
    mask = torch.tensor([True, False, True, False])
    out = sd.edit.sdedit(mix.score_fn(sde), sde, g, 0.5, sampler="pc", steps=50, mask=mask,
                         generator=torch.Generator().manual_seed(1))
    assert torch.equal(out.x[:, ~mask], g[:, ~mask])
    assert not torch.equal(out.x[:, mask], g[:, mask])
    keep = (~mask)[None].repeat(16, 1)
    proj = WRAPPERS["projection"](mix.score_fn(sde), sde, sd.ops.Mask(~mask), g[:, ~mask])
    ours = sd.edit.MaskedGuide(mix.score_fn(sde), sde, g, mask)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.full((16,), 0.3, dtype=torch.float64)
    assert torch.allclose(ours(x, t), proj(x, t), rtol=1e-10, atol=1e-10)
    assert keep.any()


def test_sdedit_steps_count_from_t0_and_the_trajectory_starts_there():
    """steps are the steps from t0 down to eps: NFE = steps for the one-evaluation samplers, and
    the recorded times run from t0 (not T) to eps."""
    sde = sd.VPSDE()
    g = torch.zeros(5, 2)
    for sampler in ("pc", "sde", "dpm_solver", "unipc", "ipndm"):
        out = sd.edit.sdedit(RING.score_fn(sde), sde, g, 0.6, sampler=sampler, steps=7, return_trajectory=True,
                             generator=torch.Generator().manual_seed(0))
        assert out.nfe == 7, sampler
        assert abs(float(out.times[0]) - 0.6) < 1e-12 and abs(float(out.times[-1]) - 1e-3) < 1e-9, sampler
        assert torch.equal(out.trajectory[0], out.x_t0), sampler


@pytest.mark.parametrize("bad, err", [(0.0, ValueError), (1e-3, ValueError), (1.5, ValueError),
                                      (float("nan"), ValueError), ("half", TypeError)])
def test_sdedit_rejects_t0_outside_eps_to_T(bad, err):
    sde = sd.VPSDE()
    with pytest.raises(err, match="t0"):
        sd.edit.sdedit(RING.score_fn(sde), sde, torch.zeros(2, 2), bad)


def test_sdedit_rejects_bad_guides_and_masks():
    sde, f = sd.VPSDE(), RING.score_fn(sd.VPSDE())
    with pytest.raises(ValueError, match="x_guide"):
        sd.edit.sdedit(f, sde, torch.zeros(2), 0.5)
    with pytest.raises(TypeError, match="x_guide"):
        sd.edit.sdedit(f, sde, [[0.0, 0.0]], 0.5)
    with pytest.raises(ValueError, match="mask"):
        sd.edit.sdedit(f, sde, torch.zeros(2, 2), 0.5, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        sd.edit.sdedit(f, sde, torch.zeros(2, 2), 0.5, mask=torch.ones(2))


# -- the encoder ---------------------------------------------------------------------------------------
def test_encode_decode_round_trip_on_a_mixture_within_1e_4(sde):
    x = sd.anisotropic(dim=4, n_modes=3).sample(64, generator=torch.Generator().manual_seed(0))
    f = sd.anisotropic(dim=4, n_modes=3).score_fn(sde)
    enc = sd.edit.encode(f, sde, x)
    assert enc.nfe > 0 and enc.z.shape == x.shape and enc.z.dtype == x.dtype
    dec = sd.edit.decode(f, sde, enc.z)
    rel = (dec.x - x).norm(dim=1) / x.norm(dim=1)
    assert float(rel.max()) <= 1e-4, float(rel.max())


def test_encode_decode_round_trip_on_a_network_within_1e_4():
    torch.manual_seed(0)
    model = sd.build_score_model({"sde": {"name": "vp"},
                                  "model": {"name": "mlp", "data_shape": [3], "width": 32, "depth": 2}})
    with torch.no_grad():  # an untrained net's output is near 0: give it a score-sized field
        for p in model.parameters():
            p.mul_(3.0)
    model.eval()
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    enc = sd.edit.encode(model, model.sde, x)
    dec = sd.edit.decode(model, model.sde, enc.z)
    assert float((enc.z - x).norm()) > 0.1 * float(x.norm())  # the flow moved it
    rel = (dec.x - x).norm(dim=1) / x.norm(dim=1)
    assert float(rel.max()) <= 1e-4, float(rel.max())


@pytest.mark.parametrize("method, steps, tol", [("ddim", 200, 0.03), ("dpm_solver", 200, 1e-3)])
def test_multistep_encoders_invert_their_decoders_on_one_grid(method, steps, tol):
    """DDIM inversion (first order) and DPM-Solver++(2M) towards the noise, decoded by dpm_solver at
    the same order, steps and grid: the round trip closes as steps grow, the second order faster."""
    sde = sd.VPSDE()
    x = RING.sample(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = RING.score_fn(sde)
    errs = []
    for n in (steps // 4, steps):
        enc = sd.edit.encode(f, sde, x, method=method, steps=n)
        assert enc.nfe == n
        dec = sd.edit.decode(f, sde, enc.z, sampler="dpm_solver", order=enc.options["order"], steps=n,
                             grid=enc.options["grid"])
        errs.append(float(((dec.x - x).norm(dim=1) / x.norm(dim=1)).max()))
    assert errs[1] < tol and errs[1] < errs[0] / (3 if method == "ddim" else 6), errs


def test_latents_of_exact_samples_follow_the_exact_p_T():
    """Encoding exact samples of a mixture gives draws of its exact p_T: under VP the mean is
    alpha(T) E[x0] (not 0: the data here is centred at x = 40, so the mean is 0.26, 12 standard
    errors from N(0, I)'s), the covariance alpha^2 Cov + sigma^2 I."""
    sde = sd.VPSDE()
    shift = torch.tensor([40.0, 0.0], dtype=torch.float64)
    mix = sd.GaussianMixture(RING.weights, RING.means + shift, RING.covs)
    n = 2000
    x = mix.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = sd.edit.encode(mix.score_fn(sde), sde, x).z
    pT = mix.marginal_t(sde, sde.T)
    mean = (pT.weights[:, None] * pT.means).sum(0)
    cov = (pT.weights[:, None, None] * (pT.covs + pT.means[:, :, None] * pT.means[:, None, :])).sum(0) \
        - mean[:, None] * mean[None]
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert float(mean[0]) > 10 * float(se[0])  # p_T is visibly not N(0, I)
    assert ((z.mean(0) - mean).abs() <= 4 * se).all(), (z.mean(0), mean)
    assert torch.allclose(torch.cov(z.T), cov, atol=5 * math.sqrt(2 / n)), (torch.cov(z.T), cov)


def test_decoding_exact_p_T_draws_reaches_the_mixtures_law():
    sde = sd.VPSDE()
    n = 2000
    z = RING.marginal_t(sde, sde.T).sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = sd.edit.decode(RING.score_fn(sde), sde, z).x
    exact = RING.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _assert_same_law(x, exact)


def test_encode_rejects_bad_options():
    sde, f = sd.VPSDE(), RING.score_fn(sd.VPSDE())
    with pytest.raises(ValueError, match="steps"):
        sd.edit.encode(f, sde, torch.zeros(2, 2), method="dopri5", steps=10)
    with pytest.raises(ValueError, match="order"):
        sd.edit.encode(f, sde, torch.zeros(2, 2), method="dpm_solver", order=3)
    with pytest.raises(ValueError, match="eps"):
        sd.edit.encode(f, sde, torch.zeros(2, 2), eps=2.0)


# -- interpolation -------------------------------------------------------------------------------------
def test_slerp_keeps_the_norm_and_hits_the_ends():
    gen = torch.Generator().manual_seed(0)
    za, zb = torch.randn(3, 64, generator=gen, dtype=torch.float64), 2 * torch.randn(3, 64, generator=gen,
                                                                                    dtype=torch.float64)
    w = torch.linspace(0, 1, 7, dtype=torch.float64)
    z = sd.edit.slerp(za, zb, w)
    assert z.shape == (3, 7, 64)
    assert torch.allclose(z[:, 0], za, atol=1e-12) and torch.allclose(z[:, -1], zb, atol=1e-12)
    norms = z.norm(dim=2)
    want = (1 - w)[None] * za.norm(dim=1)[:, None] + w[None] * zb.norm(dim=1)[:, None]
    assert torch.allclose(norms, want, rtol=1e-12)
    # equal angles between consecutive points of the same direction path
    u = z / norms[..., None]
    cos = (u[:, 1:] * u[:, :-1]).sum(2)
    assert torch.allclose(cos, cos[:, :1].expand_as(cos), atol=1e-12)
    # one direction: no division by sin(0)
    same = sd.edit.slerp(za, 3 * za, w)
    assert torch.isfinite(same).all() and torch.allclose(same[:, 3], 2 * za, atol=1e-12)


def test_interpolation_end_points_are_the_inputs():
    sde = sd.VPSDE()
    mix = sd.anisotropic(dim=4, n_modes=3)
    x = mix.sample(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sd.edit.interpolate(mix.score_fn(sde), sde, x[:2], x[2:], 5)
    assert out.x.shape == (2, 5, 4) and out.z.shape == (2, 5, 4) and out.nfe > 0
    for end, inp in ((out.x[:, 0], x[:2]), (out.x[:, -1], x[2:])):
        assert float(((end - inp).norm(dim=1) / inp.norm(dim=1)).max()) <= 1e-4
    with pytest.raises(ValueError, match="n must"):
        sd.edit.interpolate(mix.score_fn(sde), sde, x[:2], x[2:], 1)
    with pytest.raises(ValueError, match="one shape"):
        sd.edit.interpolate(mix.score_fn(sde), sde, x[:2], x[:3], 3)
