"""Benchmark tables (scoresde/bench/tables.py) and the files of a run (bench.write_results)."""

import csv
import math

import pytest

from scoresde import bench


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


def test_fmt_leaves_missing_values_blank_and_writes_infinity():
    assert bench.fmt(float("nan")) == "" and bench.fmt(None) == "" and bench.fmt("") == ""
    assert bench.fmt(math.inf) == "inf"
    assert bench.fmt(1.23456) == "1.235" and bench.fmt(1.23456, ".1e") == "1.2e+00" and bench.fmt(7, "d") == "7"
