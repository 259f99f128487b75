"""log_likelihood(method="adams") against dopri5 at 1e-9 and against exact mixture densities.

With the exact score and the exact prior p_T the only error is the solver's; the Adams method's
global error at rtol = atol = tol is measured at 0.1-10 tol nats/dim (benchmarks/likelihood.py),
so the bound asserted is 20 tol per dim plus a 1e-6 floor.
"""
import pytest
import torch

import scoresde as sd


def exact_prior(mix, sde):
    return lambda z: mix.log_prob_t(z, sde, sde.T)


def err_per_dim(logp, exact, dim):
    return float((logp.double() - exact.double()).abs().mean()) / dim


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_adams_matches_dopri5_at_1e9(divergence):
    mix, sde = sd.ring8(), sd.VPSDE()
    x = mix.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(divergence=divergence, rtol=1e-9, atol=1e-9, prior_logp=exact_prior(mix, sde))
    a = sd.log_likelihood(mix.score_fn(sde), sde, x, method="adams", generator=torch.Generator().manual_seed(1), **kw)
    d = sd.log_likelihood(mix.score_fn(sde), sde, x, method="dopri5", generator=torch.Generator().manual_seed(1), **kw)
    assert torch.allclose(a.logp, d.logp, rtol=0, atol=2e-7 * mix.dim)
    assert torch.allclose(a.z, d.z, rtol=0, atol=1e-7 * float(d.z.abs().max()))


@pytest.mark.parametrize("name", ["ring8", "aniso8"])
def test_adams_logp_within_the_tolerance_bound(sde, name):
    mix = sd.build_mixture(name)
    x = mix.sample(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = mix.log_prob_t(x, sde, 1e-5)
    errs = []
    for tol in (1e-3, 1e-5):
        res = sd.log_likelihood(mix.score_fn(sde), sde, x, method="adams", rtol=tol, atol=tol,
                                prior_logp=exact_prior(mix, sde))
        errs.append(err_per_dim(res.logp, exact, mix.dim))
        assert errs[-1] < 20 * tol + 1e-6
    assert errs[1] < errs[0]


def test_adams_nfe_counted_exactly():
    mix, sde = sd.ring8(), sd.VESDE()
    calls = []

    def score_fn(xx, t):
        calls.append(float(t[0]))
        return mix.score_fn(sde)(xx, t)

    x = mix.sample(4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = sd.log_likelihood(score_fn, sde, x, method="adams")
    assert res.nfe == len(calls) > 0
    assert 1e-5 - 1e-12 <= min(calls) and max(calls) <= sde.T + 1e-12
    # the Gaussian frame (on by default with the exact trace) fits its Gaussian from an evaluation at
    # eps that the solver's first step reuses: eps is evaluated once
    assert calls.count(calls[0]) == 1 and calls[0] == pytest.approx(1e-5)


def test_adams_image_shaped_data_gives_the_flat_answer():
    mix, sde = sd.build_mixture("aniso8"), sd.SubVPSDE()
    x = mix.sample(4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    flat = mix.score_fn(sde)
    img_score = lambda xx, t: flat(xx.reshape(xx.shape[0], -1), t).reshape(xx.shape)  # noqa: E731
    kw = dict(method="adams", divergence="hutchinson", probes=2)
    a = sd.log_likelihood(flat, sde, x, generator=torch.Generator().manual_seed(4), **kw)
    b = sd.log_likelihood(img_score, sde, x.reshape(4, 2, 2, 2), generator=torch.Generator().manual_seed(4), **kw)
    assert torch.allclose(a.logp, b.logp, rtol=0, atol=1e-9)
    assert a.stderr is not None and b.z.shape == (4, 2, 2, 2)


@pytest.mark.parametrize("tv_name", ["vp", "log_sigma", "sigma", "t"])
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_scalar_coefs_match_the_tensor_coefs(sde_name, tv_name):
    # the float path the adams solver uses must be the same map as the tensor one
    from scoresde.likelihood import ode as L
    sde = sd.build_sde(sde_name)
    tv = L._TIME_VARIABLE_CLASSES[tv_name](sde, 1e-5, torch.float64, "cpu")
    lo, hi = float(tv.u_lo), float(tv.u_hi)
    for frac in (0.0, 0.013, 0.3, 0.77, 1.0):
        u = lo + frac * (hi - lo)
        ref = [float(v) for v in tv.coefs(torch.tensor(u, dtype=torch.float64))]
        got = tv.scalar_coefs(u)
        assert got == pytest.approx(ref, rel=1e-12, abs=1e-300)


def test_adams_does_not_leap_over_the_modes_at_a_loose_tolerance():
    """Sub-VP in log sigma: f is ~0 over the first decades, so without a step cap the controller
    grew h 5x a step and one step leapt over the region where the modes merge (6 NFE, ~4 nats/dim
    of error at rtol 1e-2).  With the cap the error is of the tolerance's order."""
    mix, sde = sd.ring8(), sd.SubVPSDE()
    x = mix.sample(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = sd.log_likelihood(mix.score_fn(sde), sde, x, method="adams", time_variable="log_sigma", rtol=1e-2,
                            atol=1e-2, divergence="exact", eps=1e-5, prior_logp=exact_prior(mix, sde))
    assert res.nfe > 20
    assert err_per_dim(res.logp, mix.log_prob_t(x, sde, 1e-5), mix.dim) < 20 * 1e-2


def test_implicit_adams_matches_dopri5_at_1e9():
    mix, sde = sd.build_mixture("aniso8"), sd.SubVPSDE()
    x = mix.sample(8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kw = dict(rtol=1e-9, atol=1e-9, prior_logp=exact_prior(mix, sde))
    a = sd.log_likelihood(mix.score_fn(sde), sde, x, method="adams", options={"implicit": True}, **kw)
    d = sd.log_likelihood(mix.score_fn(sde), sde, x, method="dopri5", **kw)
    assert torch.allclose(a.logp, d.logp, rtol=0, atol=2e-7 * mix.dim)
    assert torch.allclose(a.z, d.z, rtol=0, atol=1e-7 * float(d.z.abs().max()))


def test_implicit_adams_is_the_exact_default_and_saves_steps_where_the_modes_merge():
    # aniso16 in the VP clock: the flow contracts at rates to ~-25 where its modes merge, which holds
    # the explicit corrector's steps; the implicit one is the default for the exact divergence
    mix, sde = sd.build_mixture("aniso16"), sd.VPSDE()
    x = mix.sample(32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = mix.log_prob_t(x, sde, 1e-5)
    kw = dict(method="adams", rtol=1e-3, atol=1e-3, prior_logp=exact_prior(mix, sde))
    res = {key: sd.log_likelihood(mix.score_fn(sde), sde, x, options=opts, **kw)
           for key, opts in [("auto", None), ("implicit", {"implicit": True}), ("explicit", {"implicit": False})]}
    assert torch.equal(res["auto"].logp, res["implicit"].logp)
    assert res["implicit"].nfe < 0.8 * res["explicit"].nfe
    for r in res.values():
        assert err_per_dim(r.logp, exact, mix.dim) < 2e-3


def test_rayleigh_corrector_is_the_hutchinson_default_and_lowers_the_error():
    # with probes the default corrector divides by 1 - c j, j from the probe's Rayleigh quotient
    # (no extra backward pass); on ring8 at equal or fewer steps its error against a 1e-9 solve with
    # the same probe is ~0.8x the explicit corrector's (measured 0.78-0.85 on three draws)
    mix, sde = sd.ring8(), sd.VPSDE()
    x = mix.sample(300, generator=torch.Generator().manual_seed(1))
    kw = dict(divergence="hutchinson", generator=torch.Generator().manual_seed(0))
    truth = sd.log_likelihood(mix.score_fn(sde), sde, x.double(), rtol=1e-9, atol=1e-9, **kw).logp

    def solve(options):
        return sd.log_likelihood(mix.score_fn(sde), sde, x, method="adams", rtol=2e-4, atol=2e-4,
                                 options=options, divergence="hutchinson", generator=torch.Generator().manual_seed(0))

    auto, ray, expl = solve(None), solve({"implicit": "rayleigh"}), solve({"implicit": False})
    assert torch.equal(auto.logp, ray.logp)
    assert ray.nfe <= expl.nfe
    assert err_per_dim(ray.logp, truth, mix.dim) < 0.9 * err_per_dim(expl.logp, truth, mix.dim)
    assert err_per_dim(ray.logp, truth, mix.dim) < 5e-5


def test_rayleigh_corrector_matches_dopri5_on_a_network_score():
    # a network's score Jacobian is not symmetric and its Rayleigh quotient no eigenvalue: the
    # corrector's J is only an approximation, which may cost steps but not accuracy
    from scoresde.nn import MLPScoreNet
    torch.manual_seed(0)
    net = MLPScoreNet(data_shape=4, width=32, depth=2).double()
    sde = sd.VPSDE()
    x = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    kw = dict(divergence="hutchinson", rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        a = sd.log_likelihood(net, sde, x, method="adams", generator=torch.Generator().manual_seed(1), **kw)
        d = sd.log_likelihood(net, sde, x, method="dopri5", generator=torch.Generator().manual_seed(1), **kw)
    assert torch.allclose(a.logp, d.logp, rtol=0, atol=1e-7 * 4)


@pytest.mark.parametrize("opts,kw,match", [
    ({"implicit": True}, dict(divergence="hutchinson"), "needs divergence='exact'"),
    ({"implicit": "rayleigh", "frame": "gaussian"}, dict(divergence="hutchinson"), "not in the Gaussian frame"),
    ({"implicit": "yes"}, {}, "True, False, 'rayleigh' or 'auto'"),
    ({"frame": "gaussian"}, dict(time_variable="t"), "noise-level time variable"),
    ({"frame": "local"}, {}, "'gaussian', 'none' or 'auto'"),
])
def test_adams_option_errors(opts, kw, match):
    mix, sde = sd.ring8(), sd.VPSDE()
    x = mix.sample(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        sd.log_likelihood(mix.score_fn(sde), sde, x, method="adams", options=opts, **kw)


def _gaussian(dim=3):
    # one anisotropic, rotated Gaussian: its probability flow is linear and its log-det closed form
    A = torch.tensor([[1.0, 0.4, 0.0], [0.0, 0.3, 0.2], [0.1, 0.0, 0.05]], dtype=torch.float64)[:dim, :dim]
    return sd.GaussianMixture([1.0], [[0.5, -1.0, 2.0][:dim]], (A @ A.T)[None])


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_gaussian_frame_is_exact_for_gaussian_data(divergence):
    # in the local-Gaussian frame z and ell~ are constant for Gaussian data: the solve is exact at
    # any tolerance and the steps grow at the controller's largest rate to the frame's longest step
    # (1/16 of the interval: 16 steps and the ramp up to it)
    mix, sde = _gaussian(), sd.VPSDE()
    x = mix.sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(method="adams", rtol=1e-2, atol=1e-2, divergence=divergence, prior_logp=exact_prior(mix, sde))
    framed = sd.log_likelihood(mix.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(1),
                               options={"frame": "gaussian"}, **kw)
    plain = sd.log_likelihood(mix.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(1),
                              options={"frame": "none"}, **kw)
    truth = sd.log_likelihood(mix.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(1),
                              **dict(kw, method="dopri5", rtol=1e-10, atol=1e-10))
    if divergence == "exact":
        assert err_per_dim(truth.logp, mix.log_prob_t(x, sde, 1e-5), mix.dim) < 1e-8
    assert err_per_dim(framed.logp, truth.logp, mix.dim) < 1e-8
    assert err_per_dim(plain.logp, truth.logp, mix.dim) > 1e-6
    assert framed.nfe <= 20 and framed.nfe < plain.nfe


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_gaussian_frame_matches_dopri5_at_1e9(divergence):
    mix, sde = sd.build_mixture("aniso8"), sd.VPSDE()
    x = mix.sample(8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    kw = dict(rtol=1e-9, atol=1e-9, divergence=divergence, prior_logp=exact_prior(mix, sde))
    a = sd.log_likelihood(mix.score_fn(sde), sde, x, method="adams", options={"frame": "gaussian"},
                          generator=torch.Generator().manual_seed(2), **kw)
    d = sd.log_likelihood(mix.score_fn(sde), sde, x, method="dopri5", generator=torch.Generator().manual_seed(2), **kw)
    assert torch.allclose(a.logp, d.logp, rtol=0, atol=2e-7 * mix.dim)
    assert torch.allclose(a.z, d.z, rtol=0, atol=1e-7 * float(d.z.abs().max()))
