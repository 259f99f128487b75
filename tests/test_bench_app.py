"""The scoresde-bench app (scoresde/apps/bench.py) over the engine."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
