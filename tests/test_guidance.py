"""Guidance judged against exact labelled mixtures (no network except the cfg_model plumbing)."""

import math

import pytest
import torch
from torchdiffeq import odeint

import scoresde as sd

G = sd.guidance
N = 1000          # samples a sampler test; the exact-sample W2 at this N spreads up to ~1.2x its mean
W2_FACTOR = 1.6   # allowed multiple of the exact-sample floor


def _labelled_ring():
    # two interleaved classes of four modes each
    return sd.ring8(labels=[0, 1] * 4)


_FLOORS = {}


def _floor(mix, n):
    key = (id(mix), n)
    if key not in _FLOORS:
        _FLOORS[key] = sd.metrics.exact_floor(mix, n, repeats=5, seed=123)
    return _FLOORS[key]


def _check_counts(counts, weights, n):
    # each mode count is Binomial(n, w_k): 4.5 standard deviations (false alarm < 1e-4 over all modes)
    for c, w in zip(counts, weights.tolist()):
        assert abs(c - n * w) < 4.5 * math.sqrt(n * w * (1 - w)), (counts, weights.tolist())


BUDGETS = {"pc": dict(steps=200), "ode": dict(), "sde": dict(steps=200), "dpm_solver": dict(steps=20),
           "unipc": dict(steps=20), "heun": dict(steps=20)}
CASES = [(name, "cfg") for name in BUDGETS] + [
    pytest.param(name, "classifier", marks=[pytest.mark.slow] if name in ("pc", "sde") else [])
    for name in BUDGETS]


@pytest.mark.parametrize("sampler,form", CASES)
def test_guidance_at_scale_one_samples_the_class_conditional_mode_by_mode(sampler, form):
    mix, sde, y = _labelled_ring(), sd.VPSDE(), 1
    cond = mix.conditional(y)
    s = mix.score_fn(sde)
    fn = (G.cfg(mix.class_score_fn(sde, y), s, 1.0) if form == "cfg"
          else G.classifier(s, mix.class_log_prob_fn(sde, y), 1.0))
    out = sd.sample(fn, sde, (N, 2), sampler=sampler, generator=torch.Generator().manual_seed(7),
                    dtype=torch.float64, **BUDGETS[sampler])
    # every sample near a mode of class y: a sample of the other class would sit ~3 away from
    # every mode of class y (their W2 would jump by more than 0.5)
    assert mix.class_log_prob_t(out.x, None)[:, y].exp().min() > 0.99
    st = sd.metrics.mode_w2(out.x, cond)
    assert st.w2 < W2_FACTOR * _floor(cond, N), st.as_dict()
    _check_counts(st.counts, cond.weights, N)


@pytest.mark.parametrize("form", ["cfg", "classifier"])
def test_guidance_at_scale_zero_samples_the_unconditional_mixture(form):
    mix, sde = _labelled_ring(), sd.VPSDE()
    s = mix.score_fn(sde)
    # a wrong conditional shows if scale 0 still used it
    fn = (G.cfg(mix.class_score_fn(sde, 1), s, 0.0) if form == "cfg"
          else G.classifier(s, mix.class_log_prob_fn(sde, 1), 0.0))
    out = sd.sample(fn, sde, (2 * N, 2), sampler="unipc", steps=20, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    st = sd.metrics.mode_w2(out.x, mix)
    assert st.w2 < W2_FACTOR * _floor(mix, 2 * N), st.as_dict()
    _check_counts(st.counts, mix.weights, 2 * N)


@pytest.mark.parametrize("g", [0.0, 0.5, 1.0, 2.0, 7.5, -1.0])
def test_classifier_and_cfg_guidance_are_the_same_field(sde, g):
    mix = sd.build_mixture("aniso8")
    mix = sd.GaussianMixture(mix.weights, mix.means, mix.covs, labels=[0, 1, 1])
    gen = torch.Generator().manual_seed(0)
    x0 = mix.sample(200, generator=gen, dtype=torch.float64)
    t = torch.rand(200, generator=gen, dtype=torch.float64) * 0.999 + 1e-3
    xt = sde.perturb(x0, t, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
    labels = torch.randint(0, 2, (200,), generator=gen)
    s = mix.score_fn(sde)
    a = G.cfg(mix.class_score_fn(sde, labels), s, g)(xt, t)
    with torch.no_grad():   # as inside a sampler
        b = G.classifier(s, mix.class_log_prob_fn(sde, labels), g)(xt, t)
    scale = mix.score_t(xt, sde, t).abs().max()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9 * float(scale) * max(1.0, abs(g)))
    if g not in (0.0, 1.0):  # the guided field is neither of its parts
        assert (a - s(xt, t)).abs().max() > 1e-3


@pytest.mark.parametrize("form,divergence", [("cfg", "exact"), ("classifier", "exact"),
                                             ("classifier", "hutchinson")])
def test_guided_log_likelihood_at_scale_one_is_the_conditional_density(form, divergence):
    mix, sde, y, eps = _labelled_ring(), sd.VPSDE(), 0, 1e-5
    cond = mix.conditional(y)
    s = mix.score_fn(sde)
    fn = (G.cfg(mix.class_score_fn(sde, y), s, 1.0) if form == "cfg"
          else G.classifier(s, mix.class_log_prob_fn(sde, y), 1.0))
    x = cond.sample(16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    pT = cond.marginal_t(sde, sde.T).log_prob     # the exact p_T: the solver is judged alone
    kw = dict(probes=64, generator=torch.Generator().manual_seed(4)) if divergence == "hutchinson" else {}
    ll = sd.log_likelihood(fn, sde, x, divergence=divergence, rtol=1e-6, atol=1e-6, eps=eps, prior_logp=pT, **kw)
    exact = cond.log_prob_t(x, sde, eps)
    if divergence == "exact":
        torch.testing.assert_close(ll.logp, exact, rtol=0, atol=2e-3)
    else:
        assert ((ll.logp - exact).abs() <= 5 * ll.stderr + 2e-3).all(), (ll.logp - exact, ll.stderr)
    # the unconditional density differs by log W_y = log 1/2 near the class's modes: the check can fail
    assert ((mix.log_prob_t(x, sde, eps) - exact) - math.log(0.5)).abs().max() < 1e-6


# -- scale > 1: a Gaussian class inside a Gaussian population, in closed form -------------------
MU, S2, MU_Y, S2_Y = 0.0, 1.0, 1.5, 0.25


def _guided_moments(sde, g, kind, eps):
    """Mean and variance at eps of the guided ODE / SDE from the N(0, 1) prior (guidance.py's ODEs)."""

    def rhs(t, st):
        M, V = st[0], st[1]
        tt = t.reshape(1)
        f, G2 = sde.drift_coef(tt)[0], sde.diffusion(tt)[0] ** 2
        a, sg = sde.mean_coef(tt)[0], sde.std(tt)[0]
        v, vy = a * a * S2 + sg * sg, a * a * S2_Y + sg * sg
        A = (1 - g) / v + g / vy
        b = (1 - g) * a * MU / v + g * a * MU_Y / vy
        if kind == "ode":
            return torch.stack([f * M - 0.5 * G2 * (b - A * M), (2 * f + G2 * A) * V])
        return torch.stack([f * M - G2 * (b - A * M), (2 * f + 2 * G2 * A) * V - G2])

    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    # step_t stops dopri5 at eps (it would otherwise step past it, to t < 0, and interpolate back)
    sol = odeint(rhs, torch.tensor([0.0, sde.prior_std ** 2], dtype=torch.float64), ends, rtol=1e-11,
                 atol=1e-12, options=dict(step_t=ends[1:]))
    return float(sol[-1, 0]), float(sol[-1, 1])


def test_guided_ode_and_sde_at_scale_above_one_end_at_their_closed_form_gaussians():
    sde, g, eps = sd.VPSDE(), 3.0, 1e-3
    pop = sd.GaussianMixture([1.0], [[MU]], [S2])
    cls = sd.GaussianMixture([1.0], [[MU_Y]], [S2_Y])
    fn = G.cfg(cls.score_fn(sde), pop.score_fn(sde), g)
    m_ode, v_ode = _guided_moments(sde, g, "ode", eps)
    m_sde, v_sde = _guided_moments(sde, g, "sde", eps)
    # the tilted target p^(1-g) p(.|y)^g (at eps): precision A, mean b / A
    tt = torch.tensor([eps], dtype=torch.float64)
    a, sg = float(sde.mean_coef(tt)), float(sde.std(tt))
    v, vy = a * a * S2 + sg * sg, a * a * S2_Y + sg * sg
    A = (1 - g) / v + g / vy
    m_tilt, v_tilt = ((1 - g) * a * MU / v + g * a * MU_Y / vy) / A, 1 / A

    # ODE: the flow is affine and increasing, x_eps = M + sqrt(V / V_T) x_T, sample by sample
    xT = sde.prior_sample((500, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sd.sample(fn, sde, (500, 1), sampler="ode", rtol=1e-8, atol=1e-8, x_init=xT, dtype=torch.float64)
    torch.testing.assert_close(out.x, m_ode + math.sqrt(v_ode) / sde.prior_std * xT, rtol=0, atol=1e-5)

    # SDE: empirical moments within 4 standard errors, plus Euler-Maruyama's bias at 250 steps
    # (measured +2% on the variance with 1e5 samples; srk at 500 steps: within 0.5%)
    n = 4000
    x = sd.sample(fn, sde, (n, 1), sampler="sde", steps=250, generator=torch.Generator().manual_seed(1),
                  dtype=torch.float64).x
    m_emp, v_emp = float(x.mean()), float(x.var())
    assert abs(m_emp - m_sde) < 4 * math.sqrt(v_sde / n) + 0.005
    assert abs(v_emp - v_sde) < 4 * v_sde * math.sqrt(2 / n) + 0.03 * v_sde

    # the three differ far beyond those tolerances: ODE != SDE != the tilted target
    assert v_ode < 0.3 * v_sde and v_sde < 0.75 * v_tilt
    assert m_ode - m_sde > 0.2 and m_sde - m_tilt > 0.1
    # at g = 1 both reverse processes reach p(x | y) (up to the prior's mismatch at T)
    for kind in ("ode", "sde"):
        m1, v1 = _guided_moments(sde, 1.0, kind, eps)
        assert abs(m1 - a * MU_Y) < 0.01 and abs(v1 - vy) < 1e-3


# -- a class-conditional network: both halves in one call -----------------------------------
def _conditional_model():
    torch.manual_seed(0)
    net = sd.nn.build_model("mlp", data_shape=(2,), width=32, depth=2, emb_dim=16, num_classes=3)
    with torch.no_grad():   # labels must matter (the table starts at zero), and so must the output
        net.label_embed.table.weight.normal_()
        net.out.weight.normal_(std=0.1)
    return sd.ScoreModel(net, sd.VPSDE())


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_cfg_model_is_cfg_of_the_two_halves_in_one_network_call(scale):
    model = _conditional_model()
    calls = []
    model.net.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    labels = torch.tensor([0, 1, 2, 1, 0])
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    t = torch.full((5,), 0.4)
    fn = G.cfg_model(model, labels, scale)
    got = fn(x, t)
    one_batch = 5 if scale in (0.0, 1.0) else 10
    assert calls == [one_batch] and fn.network_calls == 1 and fn.forward_passes == one_batch // 5
    with torch.no_grad():
        ref = G.cfg(lambda x, t: model(x, t, labels), lambda x, t: model(x, t), scale)(x, t)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    if scale == 2.5:
        assert (model(x, t, labels) - model(x, t)).abs().max() > 1e-2   # the halves differ

    calls.clear()
    fn.reset()
    out = sd.sample(fn, model.sde, (5, 2), sampler="dpm_solver", steps=6, generator=torch.Generator().manual_seed(0))
    assert out.nfe == fn.network_calls == len(calls) == 6
    assert fn.forward_passes == 6 * (one_batch // 5)


def test_guidance_rejects_bad_input():
    mix, sde = _labelled_ring(), sd.VPSDE()
    s = mix.score_fn(sde)
    for bad in (float("nan"), "2", None):
        with pytest.raises(ValueError, match="scale"):
            G.cfg(s, s, bad)
        with pytest.raises(ValueError, match="scale"):
            G.classifier(s, mix.class_log_prob_fn(sde, 0), bad)
    net = sd.nn.build_model("mlp", data_shape=(2,), width=8, depth=1)
    with pytest.raises(ValueError, match="class-conditional"):
        G.cfg_model(sd.ScoreModel(net, sde), 0, 2.0)
    with pytest.raises(ValueError, match="null label"):
        G.cfg_model(_conditional_model(), 3, 2.0)
    bad_lp = G.classifier(s, lambda x, t: x.sum(1, keepdim=True), 1.0)
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        bad_lp(torch.zeros(4, 2), torch.full((4,), 0.5))
