"""Samplers against the exact Gaussian-mixture oracle: quality, exact NFE, seeds, reversibility, errors.

Quality tolerance.  ``metrics.exact_floor(mix, n)`` is the mean mode-by-mode W2 of n fresh exact
samples; a set of exact samples itself scatters around it (at n = 3000, 40 exact sets scored
W2 / floor in 0.75-1.20 with standard deviation 0.10, on ring8 and on aniso8 alike).  We accept
W2 <= C * floor with C = 1.6: six standard deviations above an exact sampler, room for the small
discretization error of the settings tested, while a sampler whose modes are 15% too wide, or
shifted by a tenth of their std, scores above the bound at this n (checked in
``test_quality_tolerance_rejects_a_slightly_wrong_sampler``).  The mode
weights: total variation <= 3 standard errors of a multinomial proportion sum.
"""


import pytest
import torch

import scoresde as sd
from scoresde import metrics
from scoresde.samplers import SAMPLERS, build_sampler, integrate_probability_flow, sampler_options

N = 3000
C = 1.6


pytestmark = pytest.mark.usefixtures("one_thread")


_FLOORS = {}


def floor(mix_name: str, n: int = N) -> float:
    if (mix_name, n) not in _FLOORS:
        _FLOORS[(mix_name, n)] = metrics.exact_floor(sd.build_mixture(mix_name), n, repeats=10)
    return _FLOORS[(mix_name, n)]


def weight_tolerance(mix, n: int) -> float:
    # TV = 1/2 sum_k |p^_k - w_k|; E|p^_k - w_k| <= sqrt(w_k (1 - w_k) / n)
    w = mix.weights
    return 3 * 0.5 * float(torch.sqrt(w * (1 - w) / n).sum())


CONFIGS = {
    "pc_em": ("pc", dict(steps=200)),
    "pc_rd_langevin": ("pc", dict(predictor="reverse_diffusion", corrector="langevin", steps=100,
                                  langevin_norm="batch")),
    "pc_ancestral": ("pc", dict(predictor="ancestral", steps=200)),
    "ode": ("ode", {}),
    "sde": ("sde", dict(steps=200)),
    "sde_srk": ("sde", dict(method="srk", steps=100)),
    "dpm_solver": ("dpm_solver", dict(steps=20)),
    "heun": ("heun", dict(steps=20)),
    "unipc": ("unipc", dict(steps=20)),
}


def run(sampler, opts, sde, mix_name, n=N, seed=0):
    mix = sd.build_mixture(mix_name)
    out = sd.sample(mix.score_fn(sde), sde, (n, mix.dim), sampler=sampler,
                    generator=torch.Generator().manual_seed(seed), **opts)
    return mix, out


@pytest.mark.parametrize("config", list(CONFIGS))
def test_sampler_matches_ring8_modes(config, sde):
    sampler, opts = CONFIGS[config]
    mix, out = run(sampler, opts, sde, "ring8")
    stats = metrics.mode_w2(out.x, mix)
    assert stats.w2 <= C * floor("ring8"), (config, sde, stats.w2 / floor("ring8"))
    assert stats.weight_error <= weight_tolerance(mix, N)


@pytest.mark.parametrize("config", ["pc_em", "pc_ancestral", "ode", "sde", "dpm_solver", "heun", "unipc"])
def test_sampler_matches_aniso8_modes(config):
    sampler, opts = CONFIGS[config]
    sde = sd.VPSDE()
    mix, out = run(sampler, opts, sde, "aniso8")
    stats = metrics.mode_w2(out.x, mix)
    assert stats.w2 <= C * floor("aniso8"), (config, stats.w2 / floor("aniso8"))
    assert stats.weight_error <= weight_tolerance(mix, N)


def test_quality_tolerance_rejects_a_slightly_wrong_sampler():
    mix = sd.ring8()
    x, lab = mix.sample(N, generator=torch.Generator().manual_seed(1), return_labels=True)
    centre = mix.means.to(x.dtype)[lab]
    wide = centre + 1.15 * (x - centre)
    shifted = x + 0.025
    assert metrics.mode_w2(x, mix).w2 <= C * floor("ring8")
    assert metrics.mode_w2(wide, mix).w2 > C * floor("ring8")
    assert metrics.mode_w2(shifted, mix).w2 > C * floor("ring8")


# -- exact NFE -----------------------------------------------------------------------------------
class Counter:
    def __init__(self, fn):
        self.fn, self.n = fn, 0

    def __call__(self, x, t):
        self.n += 1
        return self.fn(x, t)


NFE_CASES = [
    ("pc", dict(steps=7), 7),
    ("pc", dict(steps=5, corrector="langevin", corrector_steps=2), 15),
    ("pc", dict(steps=5, predictor="none", corrector="annealed_langevin", corrector_steps=3), 15),
    ("pc", dict(steps=5, predictor="ancestral", corrector="annealed_langevin"), 10),
    ("ode", dict(method="euler", steps=9), 9),
    ("ode", dict(method="rk4", steps=5), 20),
    ("ode", {}, None),
    ("sde", dict(steps=8), 8),
    ("sde", dict(steps=8, method="heun"), 16),
    ("sde", dict(steps=8, method="srk"), 16),
    ("sde", dict(dt=0.25), None),
    ("dpm_solver", dict(steps=6, order=3), 6),
    ("dpm_solver", dict(steps=6, denoise=True), 6),
    ("heun", dict(steps=4, denoise=True), 7),
    ("unipc", dict(steps=6), 6),
    ("unipc", dict(steps=6, order=3, variant="bh2"), 6),
    ("heun", dict(steps=4), 8),
]


@pytest.mark.parametrize("sampler,opts,expected", NFE_CASES)
def test_nfe_equals_counted_score_calls(sampler, opts, expected, sde):
    mix = sd.ring8()
    counter = Counter(mix.score_fn(sde))
    out = sd.sample(counter, sde, (16, 2), sampler=sampler, generator=torch.Generator().manual_seed(0), **opts)
    assert out.nfe == counter.n
    if expected is not None:
        assert out.nfe == expected
    assert out.seconds > 0 and torch.isfinite(out.x).all()


# -- randomness ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,opts", [("pc", dict(steps=20, corrector="langevin")), ("ode", {}),
                                          ("sde", dict(steps=20)), ("sde", dict(steps=10, method="srk")),
                                          ("dpm_solver", dict(steps=8))])
def test_same_seed_same_samples_other_seed_differs(sampler, opts):
    sde, mix = sd.VPSDE(), sd.ring8()
    draw = lambda seed: sd.sample(mix.score_fn(sde), sde, (64, 2), sampler=sampler,
                                  generator=torch.Generator().manual_seed(seed), **opts).x
    a, b, c = draw(5), draw(5), draw(6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_fast_solvers_converge_to_the_ode_solution(sde):
    mix = sd.ring8()
    score = mix.score_fn(sde)
    z = sde.prior_sample((256, 2), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref, _ = integrate_probability_flow(score, sde, z, sde.T, 1e-3, rtol=1e-10, atol=1e-10)
    errs = {}
    for name, opts in (("dpm_solver", dict(order=3)), ("dpm_solver", dict(order=2)), ("heun", {}),
                       ("unipc", {}), ("unipc", dict(order=2, variant="bh2"))):
        e = []
        for steps in (25, 100):
            out = sd.sample(score, sde, z.shape, sampler=name, x_init=z, dtype=torch.float64, steps=steps, **opts)
            e.append(float((out.x - ref).norm(dim=1).median()))
        errs[(name, opts.get("order"))] = e
        assert e[1] < 1e-3 and e[1] < e[0] / 4, (name, opts, e)  # at least second order
    # third order beats second at the same steps
    assert errs[("dpm_solver", 3)][1] < errs[("dpm_solver", 2)][1]


# -- options, results, devices -----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,words", [
    (dict(sampler="nope"), ["nope", "pc", "ode", "sde", "dpm_solver", "heun"]),
    (dict(sampler="pc", stepz=3), ["stepz", "steps", "snr", "corrector_steps"]),
    (dict(sampler="pc", predictor="euler"), ["euler", "euler_maruyama", "reverse_diffusion", "ancestral"]),
    (dict(sampler="pc", corrector="ald"), ["ald", "langevin", "annealed_langevin"]),
    (dict(sampler="pc", corrector="langevin", langevin_norm="median"), ["median", "sample", "batch"]),
    (dict(sampler="ode", method="rk45"), ["rk45", "dopri5", "rk4"]),
    (dict(sampler="ode", time_variable="lambda"), ["lambda", "log_sigma"]),
    (dict(sampler="sde", method="rk4"), ["rk4", "euler", "srk", "reversible_heun"]),
    (dict(sampler="dpm_solver", grid="cosine"), ["cosine", "logsnr", "karras"]),
    (dict(sampler="dpm_solver", order=4), ["order"]),
    (dict(sampler="unipc", variant="bh3"), ["bh3", "bh1", "bh2"]),
    (dict(sampler="heun", steps=0), ["steps"]),
    (dict(sampler="sde", steps=10, dt=0.1), ["steps", "dt"]),
    (dict(sampler="ode", steps=10), ["steps", "adaptive"]),
])
def test_bad_names_and_options_raise_valueerror_listing_valid_ones(kwargs, words):
    sde, mix = sd.VPSDE(), sd.ring8()
    with pytest.raises(ValueError) as err:
        sd.sample(mix.score_fn(sde), sde, (4, 2), **kwargs)
    for w in words:
        assert w in str(err.value)


def test_build_sampler_is_reusable_and_lists_its_options():
    smp = build_sampler("pc", steps=10)
    sde, mix = sd.VPSDE(), sd.ring8()
    a = smp(mix.score_fn(sde), sde, (8, 2), generator=torch.Generator().manual_seed(0))
    b = smp(mix.score_fn(sde), sde, (8, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.x, b.x) and a.nfe == 10
    assert sampler_options("pc")["snr"] == 0.16 and sampler_options("pc")["corrector_steps"] == 1
    assert set(SAMPLERS) >= {"pc", "ode", "sde", "dpm_solver", "heun"}
    with pytest.raises(ValueError, match="valid samplers"):
        build_sampler("ddim")


@pytest.mark.parametrize("sampler,opts", [("pc", dict(steps=6)), ("ode", dict(trajectory_points=11)),
                                          ("sde", dict(steps=6)), ("dpm_solver", dict(steps=6)),
                                          ("heun", dict(steps=3)), ("unipc", dict(steps=5))])
def test_trajectory_runs_from_T_to_eps_and_ends_at_the_sample(sampler, opts):
    sde, mix = sd.VESDE(), sd.ring8()
    out = sd.sample(mix.score_fn(sde), sde, (10, 2), sampler=sampler, return_trajectory=True,
                    generator=torch.Generator().manual_seed(0), **opts)
    assert out.trajectory.shape[1:] == (10, 2) and out.trajectory.shape[0] == out.times.shape[0]
    assert float(out.times[0]) == pytest.approx(sde.T) and float(out.times[-1]) == pytest.approx(1e-3)
    assert (out.times[1:] < out.times[:-1]).all()
    assert out.trajectory[0].std() > 10  # VE prior: std 50
    assert torch.allclose(out.trajectory[-1], out.x, atol=1e-5)
    plain = sd.sample(mix.score_fn(sde), sde, (10, 2), sampler=sampler,
                      generator=torch.Generator().manual_seed(0), **opts)
    assert torch.allclose(plain.x, out.x, atol=1e-5) and plain.nfe == out.nfe


def test_dtype_device_and_shape_follow_the_arguments():
    sde, mix = sd.VPSDE(), sd.GaussianMixture([1.0], [[0.0] * 4], [0.5], event_shape=(2, 2))
    out = sd.sample(mix.score_fn(sde), sde, (5, 2, 2), sampler="dpm_solver", steps=5, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0), progress=True)
    assert out.x.shape == (5, 2, 2) and out.x.dtype == torch.float64 and out.x.device.type == "cpu"
    x0 = torch.zeros(5, 2, 2)
    out = sd.sample(mix.score_fn(sde), sde, (5, 2, 2), sampler="pc", steps=3, x_init=x0)
    assert out.nfe == 3


@pytest.mark.parametrize("sampler", ["ode", "dpm_solver", "ipndm"])
def test_centred_prior_removes_the_offset_the_probability_flow_keeps(sampler):
    # one ring8 mode (N(mu, 0.25^2 I)): the flow map is affine, so antithetic noise (+z, -z)
    # puts the sample mean at the map's image of the prior's mean.  From N(0, I) that is
    # mu - 0.0064 mu/|mu| (the prior's alpha_T mu offset carried down); centred, it is mu.
    sde, mix = sd.VPSDE(), sd.ring8()
    cond = mix.conditional(0)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    x_init = torch.cat([z, -z])
    fn = mix.class_score_fn(sde, 0)
    errs, nfes = {}, {}
    for prior in sd.sde.PRIORS:
        out = sd.sample(fn, sde, (4000, 2), sampler=sampler, x_init=x_init, prior=prior)
        errs[prior] = float((out.x.double().mean(0) - cond.means[0]).norm())
        nfes[prior] = out.nfe
    assert 0.004 < errs["sde"] < 0.009, errs
    assert errs["centred"] < 0.15 * errs["sde"], errs
    assert nfes["centred"] == nfes["sde"] + 1


def test_unknown_prior_raises_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown prior 'center'.*'sde', 'centred'"):
        sd.sample(sd.ring8().score_fn(sd.VPSDE()), sd.VPSDE(), (4, 2), sampler="ode", prior="center")


def test_a_sampler_config_carries_eps_and_prior_as_defaults_of_the_call():
    sde, mix = sd.VPSDE(), sd.ring8()
    fn = mix.class_score_fn(sde, 0)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    smp = build_sampler("ipndm", steps=8, eps=2e-3, prior="centred")
    a = smp(fn, sde, (64, 2), x_init=x)
    b = sd.sample(fn, sde, (64, 2), sampler="ipndm", steps=8, eps=2e-3, prior="centred", x_init=x)
    assert torch.equal(a.x, b.x) and a.nfe == 9
    c = smp(fn, sde, (64, 2), x_init=x, prior="sde")            # the call still overrides
    assert c.nfe == 8 and not torch.equal(a.x, c.x)
    with pytest.raises(ValueError, match="unknown prior 'mean'"):
        build_sampler("ipndm", prior="mean")


@pytest.mark.parametrize("name, opts", [("pc", dict(steps=6)), ("sde", dict(steps=6)), ("ode", {}),
                                        ("dpm_solver", dict(steps=6)), ("unipc", dict(steps=6)),
                                        ("heun", dict(steps=3)), ("ipndm", dict(steps=6))])
def test_t_start_T_is_the_default_and_a_lower_start_needs_x_init(name, opts):
    """Every sampler takes a start time (SDEdit's t0): t_start = T gives the default run bit for bit;
    t_start < T starts from x_init there (its first recorded time is t_start); without x_init, or
    outside (eps, T], it is an error naming t_start."""
    sde, mix = sd.VPSDE(), sd.ring8()
    f = mix.score_fn(sde)
    a = sd.sample(f, sde, (8, 2), sampler=name, generator=torch.Generator().manual_seed(0), **opts)
    b = sd.sample(f, sde, (8, 2), sampler=name, generator=torch.Generator().manual_seed(0), t_start=sde.T, **opts)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    c = sd.sample(f, sde, (8, 2), sampler=name, generator=torch.Generator().manual_seed(0), t_start=0.4, x_init=x,
                  return_trajectory=True, **opts)
    assert abs(float(c.times[0]) - 0.4) < 1e-12 and torch.equal(c.trajectory[0], x) and torch.isfinite(c.x).all()
    with pytest.raises(ValueError, match="t_start < T needs x_init"):
        sd.sample(f, sde, (8, 2), sampler=name, t_start=0.4, **opts)
    for bad in (1e-3, 1.5):
        with pytest.raises(ValueError, match="t_start"):
            sd.sample(f, sde, (8, 2), sampler=name, t_start=bad, x_init=x, **opts)


def test_named_grids_from_t_start_space_their_rule_over_eps_to_t_start():
    """A named grid from t0 < T is the grid of [eps, t0], e.g. uniform in lambda for "logsnr"."""
    from scoresde import flow
    sde = sd.VPSDE()
    t = flow.time_grid(sde, 6, 1e-3, "logsnr", t_start=0.5)
    assert t[0] == 0.5 and t[-1] == 1e-3
    lam = sde.log_snr(t)
    assert torch.allclose(lam[1:] - lam[:-1], (lam[-1] - lam[0]).expand(6) / 6, rtol=1e-9)
    with pytest.raises(ValueError, match="t_start"):
        flow.time_grid(sde, 6, 1e-3, "logsnr", t_start=1e-3)
