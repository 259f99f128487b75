"""Sweeps: `scoresde-train -m sde=vp,subvp,ve` through the basic, joblib and submitit_local
launchers, each into one sweep dir, then `scoresde-report` on it (all slow: a few runs each)."""

import csv

import pytest

from _tiny import TINY, run as run_python

LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                       "hydra.launcher.cpus_per_task=1"],
}
PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_local": "hydra_plugins.hydra_submitit_launcher"}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_sde_sweep_runs_through_the_launcher_and_reports(launcher, tmp_path):
    if launcher in PLUGINS:
        pytest.importorskip(PLUGINS[launcher])
    sweep = tmp_path / "sweep"
    r = run_python(["-m", "scoresde", "train", "-m", "sde=vp,subvp,ve", f"hydra.sweep.dir={sweep}"] + TINY
                   + ["eval.n_nll=0"] + LAUNCHERS[launcher], cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for job in range(3):
        assert (sweep / str(job) / "metrics.json").is_file(), (job, sorted(p.name for p in sweep.iterdir()))
    r = run_python(["-m", "scoresde.apps.report", str(sweep)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["sde"] for row in rows) == ["subvp", "ve", "vp"]
    assert all(float(row["step"]) == 6 for row in rows) and "| sde |" in r.stdout
    assert (sweep / "report.png").is_file() and (sweep / "report.md").is_file()
