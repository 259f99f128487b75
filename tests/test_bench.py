"""The benchmark engine (scoresde.bench) and the scoresde-bench app."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde import bench, metrics

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(ValueError, match="neither a mixture"):
        bench.load_problem("no/such/checkpoint.pt")


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


def _fake_rows():
    rows = []
    for sde_name in ("vp", "ve"):
        for label, budget, tol in (("a", 10, ""), ("a", 20, ""), ("ode", "", 1e-3)):
            for seed in (0, 1):
                rows.append(dict(problem="ring8", sde=sde_name, label=label, sampler="ode" if label == "ode" else "pc",
                                 options="", budget=budget, tol=tol, seed=seed, n=2000, nfe=budget or 60,
                                 seconds=0.1 * (budget or 60), sec_per_nfe=0.1, score_seconds=0.09,
                                 overhead=1.11, w2=0.02 + seed * 0.01, weight_error=0.01, w2_floor=0.02,
                                 w2_ratio=1.0 + seed * 0.5, sw2=0.2, sw2_floor=0.2, ode_err=float("nan"),
                                 ode_err_med=float("nan")))
    return rows


def test_aggregate_averages_over_seeds():
    agg = bench.aggregate(_fake_rows())
    assert len(agg) == 6
    r = next(a for a in agg if a["sde"] == "vp" and a["label"] == "a" and a["budget"] == 10)
    assert r["seeds"] == 2 and r["w2_ratio"] == pytest.approx(1.25)
    assert r["w2_ratio_sd"] == pytest.approx(math.sqrt(0.125))


def test_writers_produce_csv_markdown_and_plots(tmp_path):
    rows = _fake_rows()
    files = bench.write_results(rows, tmp_path, title="T")
    names = sorted(f.name for f in files)
    assert names == ["bench.csv", "bench.md", "bench_ring8.png"]
    with open(tmp_path / "bench.csv") as f:
        got = list(csv.DictReader(f))
    assert len(got) == len(rows) and got[0]["label"] == "a"
    md = (tmp_path / "bench.md").read_text()
    assert "### ring8, vp: W2 / exact floor by NFE budget" in md
    assert "| a | 1.25 | 1.25 |" in md                       # mean over the two seeds, per budget
    assert "| ode | 0.001 | 60 | 1.25 |" in md               # the adaptive table
    assert "| a | 8 | 1.11 | 1.11 |" in md                   # overhead: 8 cells with NFE >= 10
    assert (tmp_path / "bench_ring8.png").stat().st_size > 10_000


def test_app_runs_a_tiny_grid(tmp_path):
    cmd = [sys.executable, "-m", "scoresde.apps.bench", "problems=[ring8]", "sdes=[vp]", "budgets=[10]",
           "seeds=[0]", "n=300", "floor_repeats=1", "only=[dpm_solver 2,heun]", "progress=false",
           "overhead.batches=[300]", "overhead.budget=10", "overhead.network_batches=[200]",
           f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    with open(tmp_path / "bench.csv") as f:
        got = list(csv.DictReader(f))
    assert [(r["label"], r["nfe"]) for r in got] == [("dpm_solver 2", "10"), ("heun", "10")]
    assert (tmp_path / "bench.md").exists() and (tmp_path / "bench_ring8.png").exists()
    md = (tmp_path / "bench_overhead.md").read_text()
    assert "| heun | 10 |" in md and "## Network score" in md and "(ring8+mlp)" in md
    with open(tmp_path / "bench_overhead.csv") as f:
        got = list(csv.DictReader(f))
    assert [(r["score"], r["label"], r["n"]) for r in got] == [
        ("exact", "dpm_solver 2", "300"), ("exact", "heun", "300"),
        ("network", "dpm_solver 2", "200"), ("network", "heun", "200")]


def test_bench_config_composes_and_rejects_unknown_labels_and_keys(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from scoresde.apps.bench import run_bench

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="bench", overrides=["only=[nope]"]), resolve=True)
    assert cfg["problems"] == ["ring8", "aniso16"] and cfg["quick_settings"]["n"] == 2000
    with pytest.raises(ValueError, match=r"unknown sampler label\(s\) \['nope'\]"):
        run_bench(cfg, tmp_path)
    with pytest.raises(ValueError, match="unknown bench setting"):
        run_bench({**cfg, "budget": [3]}, tmp_path)


@pytest.mark.slow
def test_quick_app_run_writes_results_within_two_minutes(tmp_path):
    cmd = [sys.executable, "-m", "scoresde.apps.bench", "quick=true", "progress=false", f"hydra.run.dir={tmp_path}"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    with open(tmp_path / "bench.csv") as f:
        got = list(csv.DictReader(f))
    assert len(got) == 18 and {r["sde"] for r in got} == {"vp", "ve"}


@pytest.mark.slow
def test_a_trained_checkpoint_is_a_problem_with_its_own_sde(tmp_path):
    from tests._tiny import TINY, run

    run(["-m", "scoresde", "train"] + TINY + [f"hydra.run.dir={tmp_path / 'train'}"], cwd=ROOT)
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"
    assert ckpt.is_file()
    cells = bench.expand_grid([str(ckpt)], ["vp", "ve"], [bench.SamplerSpec("dpm", "dpm_solver")], [6], [0])
    assert len(cells) == 1
    row = bench.Bench(n=64, floor_repeats=1).run_cell(cells[0])
    model = sd.load_model(ckpt)
    assert row["sde"] == type(model.sde).__name__ and row["nfe"] == 6
    assert math.isfinite(row["sw2"]) and math.isfinite(row["sw2_floor"]) and math.isfinite(row["ode_err"])


def test_likelihood_rows_measure_error_against_the_exact_density(monkeypatch, tmp_path):
    # a stand-in solver whose error is known: exact log p_eps plus tol (plus probe noise)
    class Res:
        def __init__(self, logp, nfe):
            self.logp, self.nfe, self.seconds = logp, nfe, 0.5

    def fake(score_fn, sde, x, *, divergence, rtol, atol, eps, prior_logp, probes=1, generator=None):
        exact = mix.log_prob_t(x, sde, eps)
        if divergence == "exact":
            return Res(exact + rtol, int(10 / rtol ** 0.25))
        noise = torch.randn(x.shape[0], generator=generator, dtype=torch.float64) / probes ** 0.5
        return Res(exact + noise, 30)

    def reference(score_fn, sde, x, *, eps, rtol, atol, generator):
        z = torch.zeros_like(x)   # its prior term is replaced by the exact one: sde's prior must cancel
        return mix.log_prob_t(x, sde, eps) - 2 * rtol + sde.prior_logp(z) - mix.log_prob_t(z, sde, sde.T), z, 77, 1.0

    mix = sd.build_mixture("ring8")
    monkeypatch.setattr(sd, "log_likelihood", fake, raising=False)
    rows = bench.likelihood_rows(["ring8"], ["vp"], n=400, tolerances=(1e-3, 1e-5), probes=(1, 4),
                                 reference=reference, progress=False)
    by = {(r["method"], r["tol"], r["probes"]): r for r in rows}
    assert by[("exact trace", 1e-3, 0)]["err_mean"] == pytest.approx(1e-3)
    assert by[("exact trace", 1e-5, 0)]["err_max"] == pytest.approx(1e-5)
    # Hutchinson's sd is measured against the exact trace at probe_tol (1e-5 off the density)
    assert by[("hutchinson", 1e-5, 1)]["sd"] == pytest.approx(1.0, abs=0.15)       # n = 400: sd of sd ~ 0.035
    assert by[("hutchinson", 1e-5, 4)]["sd"] == pytest.approx(0.5, abs=0.08)
    ref = by[("reference (scipy RK45, 1 probe)", 1e-3, 1)]
    assert ref["err_mean"] == pytest.approx(2e-3) and ref["nfe"] == 77 and ref["sec_per_sample"] == 1.0 / 400
    files = bench.write_likelihood(rows, tmp_path)
    assert [f.name for f in files] == ["likelihood.csv", "likelihood.md", "likelihood.png"]
    assert "| reference (scipy RK45, 1 probe) | 0.001 | 1 | 77 |" in (tmp_path / "likelihood.md").read_text()


def test_overhead_rows_time_each_sampler_per_batch_without_quality_metrics(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        specs = [s for s in bench.DEFAULT_SAMPLERS if s["label"] in ("heun", "ode dopri5")]
        rows = bench.overhead_rows(batches=[200, 400], budget=10, samplers=specs, repeats=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert [(r["label"], r["n"]) for r in rows] == [("ode dopri5", 200), ("heun", 200), ("ode dopri5", 400),
                                                    ("heun", 400)]
    heun = rows[1]
    assert heun["nfe"] == 10 and heun["overhead"] > 1.0 and math.isnan(heun["w2"]) and math.isnan(heun["ode_err"])
    # the samplers' own cost per evaluation, with a score of next to no cost, at the first batch size
    assert 0 < heun["free_us_per_nfe"] < 1e6 * heun["seconds"] / heun["nfe"]
    assert heun["overhead"] == pytest.approx(heun["seconds"] / (heun["nfe"] * heun["score_seconds"]), rel=1e-12)
    files = bench.write_overhead(rows, tmp_path)
    md = files[1].read_text()
    assert "| heun | 10 |" in md and "sampler us / NFE (free score, n = 200)" in md


def test_network_problem_is_the_configured_architecture_with_a_moving_flow():
    net = {"name": "mlp", "width": 32, "depth": 1, "embedding": "fourier", "emb_dim": 16, "emb_scale": 16.0,
           "norm": True, "parameterization": "noise", "time_input": "t"}
    p = bench.network_problem("ring8", "vp", net, seed=3)
    assert p.name == "ring8+mlp" and p.mixture is not None and p.dtype == torch.float32
    model = p.score_fn("vp")
    assert isinstance(model, sd.ScoreModel) and model.net.inp.out_features == 32 and len(model.net.blocks) == 1
    x = torch.randn(8, 2)
    with torch.no_grad():
        s = model(x, torch.full((8,), 0.5))
    assert s.shape == x.shape and s.abs().max() > 0  # the zero-initialised output layer was drawn
    again = bench.network_problem("ring8", "vp", net, seed=3).score_fn("vp")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="unknown model"):
        bench.network_problem("ring8", "vp", dict(net, name="mpl"))
