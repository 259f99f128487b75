"""The sampler-overhead benchmark (scoresde/bench/overhead.py)."""

import math

import pytest
import torch

from scoresde import bench


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
    # the ratio itself is a timing (under load the score's own timing can come out slower than
    # inside the sampler, so a bound like > 1 flakes); its formula is checked exactly below
    assert heun["nfe"] == 10 and 0 < heun["overhead"] < math.inf
    assert math.isnan(heun["w2"]) and math.isnan(heun["ode_err"])
    # the samplers' own cost per evaluation, with a score of next to no cost, at the first batch size
    assert 0 < heun["free_us_per_nfe"] < 1e6 * heun["seconds"] / heun["nfe"]
    assert heun["overhead"] == pytest.approx(heun["seconds"] / (heun["nfe"] * heun["score_seconds"]), rel=1e-12)
    files = bench.write_overhead(rows, tmp_path)
    md = files[1].read_text()
    assert "| heun | 10 |" in md and "sampler us / NFE (free score, n = 200)" in md
