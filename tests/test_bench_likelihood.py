"""The likelihood benchmark (scoresde/bench/likelihood.py)."""

import pytest
import torch

import scoresde as sd
from scoresde import bench


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
