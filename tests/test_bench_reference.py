"""The reference likelihood method (scoresde/bench/reference.py): Song et al.'s scipy RK45
re-created, judged against the mixtures' exact densities, and usable from an installed copy."""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde.bench.reference import reference_log_likelihood, song_reference

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-5


def _solver_logp(mix, sde, x, probe, tol):
    """log p_eps by the reference with its N(0, prior_std^2) prior term swapped for the exact log p_T,
    so that what is left is the solver's error (as the likelihood benchmark does)."""
    lp, z, nfe = reference_log_likelihood(mix.score_fn(sde), sde, x.float(), probe, rtol=tol, atol=tol, eps=EPS)
    return lp.double() - sde.prior_logp(z.double()) + mix.log_prob_t(z.double(), sde, sde.T), nfe


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_two_sign_probes_average_to_the_exact_log_density_per_sample(sde_name):
    # in 2-d the probes (1, 1) and (1, -1) average v^T J v to tr J exactly (the cross terms cancel),
    # so the mean of the two runs is the exact-trace log-likelihood: only the solver's error is left
    mix, sde, n = sd.build_mixture("ring8"), sd.build_sde(sde_name), 64
    x = mix.sample(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = mix.log_prob_t(x, sde, EPS)

    def err(tol):
        runs = [_solver_logp(mix, sde, x, torch.tensor(v).expand(n, 2).contiguous(), tol)
                for v in ([1.0, 1.0], [1.0, -1.0])]
        return ((runs[0][0] + runs[1][0]) / 2 - exact).abs(), runs[0][1]

    tight, nfe_tight = err(1e-7)
    loose, nfe_loose = err(1e-3)
    # measured max 5e-6 (VP) and 1e-5 (VE) at 1e-7; the float32 copy of the state at every
    # evaluation keeps it from going much lower, so 1e-4 leaves room without hiding a wrong term
    assert tight.max() < 1e-4
    assert loose.mean() > 100 * tight.mean()   # the error is the solver's: it follows the tolerance
    assert nfe_tight > nfe_loose > 0


def test_song_reference_is_unbiased_with_one_probe_and_reports_its_cost():
    mix, sde, n = sd.build_mixture("ring8"), sd.VPSDE(), 400
    x = mix.sample(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logp, z, nfe, seconds = song_reference(mix.score_fn(sde), sde, x, eps=EPS, rtol=1e-5, atol=1e-5,
                                           generator=torch.Generator().manual_seed(2))
    assert logp.shape == (n,) and z.shape == x.shape and nfe > 0 and seconds > 0
    resid = logp.double() - sde.prior_logp(z.double()) + mix.log_prob_t(z.double(), sde, sde.T) \
        - mix.log_prob_t(x, sde, EPS)
    # one Rademacher probe: unbiased, so the mean residual is within 4 standard errors of zero
    # (plus the solver's ~1e-4 at this tolerance); its spread is the probe's, clearly above zero
    sd_resid = float(resid.std())
    assert sd_resid > 0.1
    assert abs(float(resid.mean())) < 4 * sd_resid / math.sqrt(n) + 1e-3
    again = song_reference(mix.score_fn(sde), sde, x, eps=EPS, rtol=1e-5, atol=1e-5,
                           generator=torch.Generator().manual_seed(2))
    assert torch.equal(again[0], logp)      # the probe comes from the caller's generator alone


_INSTALLED = r"""
import sys
root = sys.argv[1]
opened = []
sys.addaudithook(lambda ev, args: opened.append(str(args[0])) if ev == "open" and isinstance(args[0], str) else None)
import torch
import scoresde
from scoresde import bench
assert scoresde.__file__.startswith(sys.argv[2]), scoresde.__file__
mix, sde = scoresde.build_mixture("ring8"), scoresde.VPSDE()
x = mix.sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
rows = bench.likelihood_rows(["ring8"], ["vp"], n=16, tolerances=(1e-3,), probes=(1,), probe_tol=1e-3,
                             reference="scoresde.bench:song_reference", progress=False)
ref = [r for r in rows if r["method"].startswith("reference")]
assert len(ref) == 1 and ref[0]["nfe"] > 0, rows
outside = sorted({p for p in opened if p.startswith(root)})
assert not outside, outside
print("ok", ref[0]["nfe"])
"""


def test_reference_runs_from_an_installed_copy_without_the_source_checkout(tmp_path):
    # the package alone, as pip would install it: no benchmarks/ beside it; an audit hook records
    # every file opened, and none may lie in this checkout
    site = tmp_path / "site"
    shutil.copytree(ROOT / "scoresde", site / "scoresde", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(site), "MPLBACKEND": "Agg"}
    res = subprocess.run([sys.executable, "-c", _INSTALLED, str(ROOT), str(site)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("ok")


def test_a_missing_scipy_is_reported_by_name(monkeypatch):
    import builtins

    from scoresde.bench import reference

    real = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("No module named 'scipy'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(ImportError, match="needs scipy"):
        reference.song_reference(lambda x, t: -x, sd.VPSDE(), torch.zeros(2, 2), eps=EPS, rtol=1e-3, atol=1e-3)
