"""The benchmark runner (scoresde/bench/runner.py): a cell's numbers against the public API."""

import math

import pytest
import torch

import scoresde as sd
from scoresde import bench, metrics


@pytest.fixture(scope="module")
def small_bench():
    # one thread: the small ops of a mixture score only contend with other jobs for a second core
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield bench.Bench(n=400, floor_repeats=2, ref_tol=1e-8)
    torch.set_num_threads(threads)


def test_cell_numbers_are_consistent_with_the_sampler_and_metrics(small_bench):
    b = small_bench
    cell = bench.expand_grid(["ring8"], ["vp"], [bench.SamplerSpec("dpm", "dpm_solver")], [8], [3])[0]
    row = b.run_cell(cell)
    mix, sde = sd.build_mixture("ring8"), sd.VPSDE()
    # the same prior draw through the public API gives the same samples and NFE
    z = sde.prior_sample((400, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = sd.sample(mix.score_fn(sde), sde, (400, 2), sampler="dpm_solver", steps=8, x_init=z.float())
    assert row["nfe"] == out.nfe == 8
    ms = metrics.mode_w2(out.x, mix)
    assert row["w2"] == pytest.approx(ms.w2, rel=1e-9)
    assert row["weight_error"] == pytest.approx(ms.weight_error, abs=1e-12)
    assert row["w2_floor"] == metrics.exact_floor(mix, 400, repeats=2)
    assert row["w2_ratio"] == pytest.approx(row["w2"] / row["w2_floor"], rel=1e-12)
    assert row["sec_per_nfe"] == pytest.approx(row["seconds"] / row["nfe"], rel=1e-12)
    assert row["overhead"] == pytest.approx(row["seconds"] / (row["nfe"] * row["score_seconds"]), rel=1e-12)
    # the sliced floor: the same distance between two independent exact sets of that size
    p = b.problem("ring8")
    floor = sum(metrics.sliced_w2(p.exact(400, 100 + r, 0), p.exact(400, 100 + r, 1), 256,
                                  torch.Generator().manual_seed(r)) for r in range(2)) / 2
    assert row["sw2_floor"] == pytest.approx(floor, rel=1e-12)
    # 8 DPM-Solver++ steps: a path error well above float32 round-off, below the ring's scale
    assert 1e-4 < row["ode_err"] < 0.5


def test_ode_error_shrinks_with_tolerance_and_is_undefined_for_stochastic_samplers(small_bench):
    specs = [bench.SamplerSpec("dopri5", "ode", {"method": "dopri5"}, tolerances=[1e-3, 1e-6]),
             bench.SamplerSpec("em", "pc", {"corrector": "none"})]
    rows = [small_bench.run_cell(c) for c in bench.expand_grid(["ring8"], ["ve"], specs, [20], [0])]
    loose, tight, em = rows
    assert tight["ode_err"] < loose["ode_err"] / 10
    assert tight["ode_err"] < 1e-4          # float32 samples against the float64 reference
    assert tight["nfe"] > loose["nfe"]
    assert math.isnan(em["ode_err"]) and em["nfe"] == 20
