"""Time grids as data (scoresde/samplers/grids.py): every fixed-step sampler takes a grid by name,
as explicit times, or from a saved file, each checked; optimize_grid lowers the error against the
ODE on noise it never saw and counts its evaluations."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import scoresde as sd
from scoresde import flow
from scoresde.samplers import grids
from scoresde.samplers.grids import check_grid, grid_steps_of, resolve_grid

from scoresde.apps import sample as sample_app  # noqa: F401  (stores the sampler schemas)

from _tiny import CONF

EPS = 1e-3
# (sampler, options, grid steps the options give at steps=6)
CASES = [("dpm_solver", dict(order=3), 6), ("dpm_solver", dict(denoise=True), 5), ("unipc", dict(order=2), 6),
         ("heun", dict(), 6), ("heun", dict(denoise=True), 5), ("ipndm", dict(), 6),
         ("ipndm", dict(denoise=True), 5), ("pc", dict(), 6), ("pc", dict(predictor="none", corrector="langevin"), 5),
         ("ode", dict(method="rk4"), 6)]


def _run(sde, sampler, x, **opts):
    return sd.sample(sd.ring8().score_fn(sde), sde, tuple(x.shape), sampler=sampler, x_init=x, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(3), **opts)


@pytest.mark.parametrize("sampler,opts,n_grid", CASES)
def test_explicit_grid_equal_to_the_named_one_gives_identical_samples(sampler, opts, n_grid):
    sde = sd.VPSDE()
    x = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert grid_steps_of(sampler, 6, opts) == n_grid
    name = "logsnr"
    named = _run(sde, sampler, x, steps=6, grid=name, **opts)
    explicit = flow.time_grid(sde, n_grid, EPS, name)
    for g in (explicit, explicit.tolist(), tuple(explicit.tolist())):
        out = _run(sde, sampler, x, steps=6, grid=g, **opts)
        assert torch.equal(out.x, named.x) and out.nfe == named.nfe
    # and the grid matters: another named grid moves the samples
    other = _run(sde, sampler, x, steps=6, grid="time_uniform", **opts)
    assert (other.x - named.x).abs().max() > 1e-6


def test_pc_default_grid_is_uniform_in_t_and_equals_its_explicit_form():
    sde = sd.VPSDE()
    x = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = _run(sde, "pc", x, steps=8)
    b = _run(sde, "pc", x, steps=8, grid=torch.linspace(1.0, EPS, 9, dtype=torch.float64))
    assert torch.equal(a.x, b.x)


def test_ode_fixed_grid_in_log_snr_steps_as_uniform_steps_of_log_sigma():
    # a grid uniform in lambda is uniform in u = log sigma~ = -lambda: the default fixed grid
    sde = sd.VESDE()
    x = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = _run(sde, "ode", x, method="rk4", steps=12)
    b = _run(sde, "ode", x, method="rk4", steps=12, grid="logsnr")
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="adaptive"):
        _run(sde, "ode", x, grid="logsnr")


@pytest.mark.parametrize("bad,match", [
    (torch.tensor([1.0, 0.5, 0.1, EPS]), "has 4 times.*needs 6"),               # wrong length
    (torch.tensor([[1.0, 0.5, 0.3, 0.2, 0.1, EPS]]), "1-d"),                     # not 1-d
    (torch.tensor([0.9, 0.5, 0.3, 0.2, 0.1, EPS]), "start at T"),               # first != T
    (torch.tensor([1.0, 0.5, 0.3, 0.2, 0.1, 0.01]), "end at eps"),              # last != eps
    (torch.tensor([1.0, 0.5, 0.6, 0.2, 0.1, EPS]), r"strictly decreasing: t\[1\]"),
    (torch.tensor([1.0, 0.5, 0.5, 0.2, 0.1, EPS]), r"strictly decreasing: t\[1\]"),  # a repeated time
    (torch.tensor([1.0, 1.5, 0.3, 0.2, 0.1, EPS]), r"strictly decreasing: t\[0\]"),  # above T
    (torch.tensor([1.0, 0.5, 0.3, 0.2, 1e-4, EPS]), r"strictly decreasing: t\[4\]"),  # below eps
    (torch.tensor([1.0, float("nan"), 0.3, 0.2, 0.1, EPS]), "non-finite"),
    ("cosine", r"unknown grid 'cosine'; valid grids: \['logsnr'"),
    ("missing_grid.json", "does not exist"),
    (3.0, "1-d sequence of times"),
])
def test_bad_grid_raises_value_error_naming_the_problem(bad, match):
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match=match):
        resolve_grid(sde, bad, 5, EPS)
    if not isinstance(bad, str):  # through a sampler too
        with pytest.raises(ValueError, match=match):
            sd.sample(sd.ring8().score_fn(sde), sde, (4, 2), sampler="unipc", steps=5, grid=bad)


def test_grid_ends_within_rounding_are_snapped_to_t_and_eps():
    g = check_grid([1.0 + 1e-12, 0.5, EPS * (1 - 1e-12)], 2, 1.0, EPS)
    assert g[0].item() == 1.0 and g[-1].item() == EPS


def test_grid_steps_of_rejects_samplers_without_a_grid():
    with pytest.raises(ValueError, match="takes no time grid.*'unipc'"):
        grid_steps_of("sde", 10)


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_saved_grid_round_trips_bit_for_bit_and_a_sampler_loads_it_by_path(tmp_path, suffix):
    sde = sd.VESDE()
    g = flow.time_grid(sde, 7, EPS, "karras") ** 1.01  # not a round-number grid
    g[0], g[-1] = 1.0, EPS
    path = sd.save_grid(g, tmp_path / f"grid{suffix}", meta={"sde": "VESDE", "steps": 7})
    back = sd.load_grid(path)
    assert back.dtype == torch.float64 and torch.equal(back, g)
    assert grids.grid_meta(path) == {"sde": "VESDE", "steps": 7}
    x = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = _run(sde, "unipc", x, steps=7, grid=str(path))
    b = _run(sde, "unipc", x, steps=7, grid=g)
    assert torch.equal(a.x, b.x)
    with pytest.raises(ValueError, match="has 8 times.*needs 6"):   # a file of the wrong length
        _run(sde, "unipc", x, steps=5, grid=path)


def test_grid_file_of_another_kind_is_rejected(tmp_path):
    p = tmp_path / "other.json"
    p.write_text('{"times": [1.0, 0.001]}')
    with pytest.raises(ValueError, match="not a grid file"):
        sd.load_grid(p)
    with pytest.raises(ValueError, match="grid files end in"):
        sd.save_grid([1.0, EPS], tmp_path / "grid.txt")


def test_sampler_config_with_grid_path_loads_the_saved_grid(tmp_path):
    sde = sd.VPSDE()
    g = flow.time_grid(sde, 6, EPS, "karras")
    path = sd.save_grid(g, tmp_path / "opt.json")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="sample", overrides=["checkpoint=x", "sampler=unipc", "sampler.steps=6",
                                                       f"sampler.grid={path}"])
    opts = OmegaConf.to_container(cfg.sampler)
    name, eps = opts.pop("name"), opts.pop("eps", EPS)
    assert opts["grid"] == str(path)
    x = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = sd.build_sampler(name, **opts)(sd.ring8().score_fn(sde), sde, (16, 2), x_init=x, dtype=torch.float64,
                                       eps=eps)
    b = _run(sde, "unipc", x, steps=6, grid="karras")
    assert torch.equal(a.x, b.x)


def _err(score_fn, sde, grid, steps, gen, **opts):
    x = sde.prior_sample((256, 2), generator=gen, dtype=torch.float64)
    ref, _ = sd.samplers.integrate_probability_flow(score_fn, sde, x, sde.T, EPS, rtol=1e-7, atol=1e-7)
    out = sd.sample(score_fn, sde, (256, 2), sampler="unipc", steps=steps, grid=grid, x_init=x,
                    dtype=torch.float64, **opts)
    return float(((out.x - ref) ** 2).mean())


def test_optimize_grid_lowers_the_error_on_fresh_noise_and_counts_its_nfe():
    sde, mix = sd.VPSDE(), sd.ring8()
    calls = sd.samplers.CountingScore(mix.score_fn(sde))
    res = sd.optimize_grid(calls, sde, 5, "unipc", data_shape=(2,), n=128, init="vp_quadratic",
                           generator=torch.Generator().manual_seed(5), dtype=torch.float64, max_evaluations=40)
    # NFE: counted, and made of the reference solve plus 5 per objective evaluation
    assert res.nfe == calls.calls == res.nfe_reference + 5 * res.evaluations
    assert res.evaluations == 40 and res.nfe_reference > 0
    assert res.grid.shape == (6,) and res.grid[0] == 1.0 and res.grid[-1] == EPS
    assert (res.grid[1:] < res.grid[:-1]).all()
    assert torch.equal(res.initial_grid, flow.time_grid(sde, 5, EPS, "vp_quadratic"))
    assert all(a >= b for a, b in zip(res.loss, res.loss[1:])) and res.loss[-1] < 0.5 * res.loss[0]
    # on noise the search never saw, the optimised grid beats its start by a wide margin
    g = torch.Generator().manual_seed(99)
    start = _err(mix.score_fn(sde), sde, "vp_quadratic", 5, g)
    g = torch.Generator().manual_seed(99)
    opt = _err(mix.score_fn(sde), sde, res.grid, 5, g)
    assert opt < 0.5 * start, (start, opt)
    assert res.meta["sampler"] == "unipc" and res.meta["init"] == "vp_quadratic"


def test_optimize_grid_default_start_is_the_best_named_grid(tmp_path):
    sde, mix = sd.VESDE(), sd.ring8()
    kw = dict(data_shape=(2,), n=32, order=2, ref_tol=1e-5, dtype=torch.float64)
    res = sd.optimize_grid(mix.score_fn(sde), sde, 4, "dpm_solver", generator=torch.Generator().manual_seed(5),
                           max_evaluations=10, **kw)
    # the first len(GRIDS) evaluations are the named grids; loss[0] is the lowest of them
    losses = {}
    for name in flow.GRIDS:
        losses[name] = sd.optimize_grid(mix.score_fn(sde), sde, 4, "dpm_solver", init=name, max_evaluations=1,
                                        generator=torch.Generator().manual_seed(5), **kw).loss[0]
    best = min(losses, key=losses.get)
    assert res.meta["init"] == best and math.isclose(res.loss[0], losses[best], rel_tol=1e-12)
    path = res.save(tmp_path / "g.pt")
    assert torch.equal(sd.load_grid(path), res.grid) and grids.grid_meta(path)["sampler"] == "dpm_solver"


def test_optimize_grid_rejects_bad_arguments():
    sde, mix = sd.VPSDE(), sd.ring8()
    with pytest.raises(ValueError, match="sets the sampler's grid"):
        sd.optimize_grid(mix.score_fn(sde), sde, 5, "unipc", data_shape=(2,), grid="logsnr")
    with pytest.raises(ValueError, match="takes no time grid"):
        sd.optimize_grid(mix.score_fn(sde), sde, 5, "sde", data_shape=(2,))
    with pytest.raises(ValueError, match="unknown option"):
        sd.optimize_grid(mix.score_fn(sde), sde, 5, "unipc", data_shape=(2,), ordr=2)
