"""The benchmark grid (scoresde/bench/grid.py): sampler specs, cells, expansion."""

import pytest

from scoresde import bench


def _specs():
    return [bench.SamplerSpec("em", "pc", {"predictor": "euler_maruyama", "corrector": "none"}, min_nfe=20),
            bench.SamplerSpec("heun", "heun", nfe_per_step=2.0, max_nfe=50),
            bench.SamplerSpec("dopri5", "ode", {"method": "dopri5"}, tolerances=[1e-3, 1e-5])]


def test_expand_grid_maps_budgets_to_steps_and_filters_by_range():
    cells = bench.expand_grid(["ring8", "aniso16"], ["vp", "ve"], _specs(), budgets=[10, 20, 100], seeds=[0, 1])
    # per problem and SDE: em at 20, 100; heun at 10, 20; dopri5 at two tolerances -> 6 settings x 2 seeds
    assert len(cells) == 2 * 2 * 6 * 2
    em = {c.budget: c.opts["steps"] for c in cells if c.label == "em"}
    assert em == {20: 20, 100: 100}
    heun = {c.budget: c.opts["steps"] for c in cells if c.label == "heun"}
    assert heun == {10: 5, 20: 10}
    ode = sorted({(c.tol, c.opts["rtol"], c.opts["atol"], c.budget) for c in cells if c.label == "dopri5"})
    assert ode == [(1e-5, 1e-5, 1e-5, None), (1e-3, 1e-3, 1e-3, None)]
    assert all(c.opts["predictor"] == "euler_maruyama" for c in cells if c.label == "em")
    assert {c.seed for c in cells} == {0, 1}
    assert [c.problem for c in cells[:12]] == ["ring8"] * 12  # order: problem, SDE, sampler, budget, seed


def test_expand_grid_gives_a_checkpoint_its_own_sde():
    cells = bench.expand_grid(["ring8", "runs/last.pt"], ["vp", "subvp", "ve"], _specs()[:1], [50], [0])
    assert [(c.problem, c.sde) for c in cells] == [("ring8", "vp"), ("ring8", "subvp"), ("ring8", "ve"),
                                                    ("runs/last.pt", "checkpoint")]


def test_grid_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown SDE"):
        bench.expand_grid(["ring8"], ["vq"], _specs(), [10], [0])
    with pytest.raises(ValueError, match="unknown sampler"):
        bench.SamplerSpec("x", "eular")
    with pytest.raises(ValueError, match="unknown option"):
        bench.SamplerSpec("x", "pc", {"stepz": 3})
    with pytest.raises(ValueError, match="repeated"):
        bench.expand_grid(["ring8"], ["vp"], _specs()[:1] * 2, [50], [0])
    with pytest.raises(ValueError, match="unknown sampler spec key"):
        bench.specs_from_config([{"label": "a", "name": "pc", "step": 3}])
