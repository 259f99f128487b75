"""The likelihood benchmark: ``sd.log_likelihood`` of exact mixture samples against their exact
log p_eps.

Error against tolerance and NFE, the exact trace against Hutchinson with 1..K probes (the
estimator's spread and its time), time per sample, and beside them a reference method passed in
as a callable or as ``"module:function"`` (Song et al.'s scipy RK45 over a flattened NumPy state:
:func:`scoresde.bench.reference.song_reference`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import torch

from ..mixture import build_mixture
from ..sde import build_sde
from .tables import fmt, md_table, sde_order, write_csv

__all__ = ["likelihood_rows", "write_likelihood"]


def _resolve(ref):
    """A callable, or ``"module:function"`` imported (e.g. ``"scoresde.bench:song_reference"``)."""
    if ref is None or callable(ref):
        return ref
    import importlib

    mod, _, fn = str(ref).partition(":")
    if not fn:
        raise ValueError(f"reference must be 'module:function', got {ref!r}")
    return getattr(importlib.import_module(mod), fn)


def likelihood_rows(problems: Sequence[str] = ("ring8", "aniso16"), sdes: Sequence[str] = ("vp", "subvp", "ve"),
                    n: int = 500, tolerances: Sequence[float] = (1e-3, 1e-4, 1e-5, 1e-6),
                    probes: Sequence[int] = (1, 2, 4, 8), probe_tol: float = 1e-5, eps: float = 1e-5,
                    reference=None, seed: int = 0, progress: bool = True) -> List[Dict[str, Any]]:
    """Probability-flow log-likelihoods of n exact mixture samples against their exact log p_eps.

    Per problem and SDE (the prior term is the exact log p_T, so the error is the solver's):

    * ``exact`` divergence at each tolerance (rtol = atol): mean and max |logp - exact|, NFE,
      seconds, seconds per sample;
    * ``hutchinson`` with each number of probes at ``probe_tol``: the same, plus ``sd``: the
      standard deviation over samples of (Hutchinson - exact-trace) log p, the estimator's noise;
    * ``reference``: the reference method (Song et al.'s likelihood.py: scipy RK45 over a
      NumPy-flattened state with one probe), when given as ``reference(score_fn, sde, x, eps=,
      rtol=, atol=, generator=) -> (logp [B], z, nfe, seconds)`` or ``"module:function"``
      (:func:`scoresde.bench.reference.song_reference`), at each tolerance;
      its prior term is swapped for the exact one too.
    """
    import scoresde as sd

    log_likelihood = getattr(sd, "log_likelihood", None)
    if log_likelihood is None:  # pragma: no cover - until the likelihood module is installed
        raise ValueError("the likelihood benchmark needs scoresde.log_likelihood")
    ref_fn = _resolve(reference)
    from tqdm.auto import tqdm

    jobs = [(p, s) for p in problems for s in sdes]
    rows: List[Dict[str, Any]] = []
    for prob, sde_name in tqdm(jobs, desc="likelihood", disable=not progress):
        mix, sde = build_mixture(prob), build_sde(sde_name)
        score = mix.score_fn(sde)
        x = mix.sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        exact = mix.log_prob_t(x, sde, eps)
        prior = lambda z, mix=mix, sde=sde: mix.log_prob_t(z, sde, sde.T)  # noqa: E731

        def row(method, tol, k, logp, nfe, seconds, trace=None):
            err = (logp.double().cpu() - exact).abs()
            r = dict(problem=prob, sde=sde_name, method=method, tol=tol, probes=k, n=n, nfe=int(nfe),
                      seconds=seconds, sec_per_sample=seconds / n, err_mean=float(err.mean()),
                      err_max=float(err.max()), sd=float("nan"))
            if trace is not None:
                r["sd"] = float((logp.double().cpu() - trace).std())
            rows.append(r)

        trace = None
        for tol in tolerances:
            res = log_likelihood(score, sde, x, divergence="exact", rtol=tol, atol=tol, eps=eps, prior_logp=prior)
            row("exact trace", tol, 0, res.logp, res.nfe, res.seconds)
            if tol == probe_tol:
                trace = res.logp.double().cpu()
        if trace is None:
            trace = log_likelihood(score, sde, x, divergence="exact", rtol=probe_tol, atol=probe_tol, eps=eps,
                                   prior_logp=prior).logp.double().cpu()
        for k in probes:
            res = log_likelihood(score, sde, x, divergence="hutchinson", probes=int(k), rtol=probe_tol,
                                 atol=probe_tol, eps=eps, prior_logp=prior,
                                 generator=torch.Generator().manual_seed(seed + 1))
            row("hutchinson", probe_tol, int(k), res.logp, res.nfe, res.seconds, trace)
        if ref_fn is not None:
            for tol in tolerances:
                logp, z, nfe, seconds = ref_fn(score, sde, x, eps=eps, rtol=tol, atol=tol,
                                               generator=torch.Generator().manual_seed(seed + 1))
                # the same exact prior term as ours, so both errors are the solvers' alone
                logp = (torch.as_tensor(logp).double().cpu() - sde.prior_logp(z.double()).cpu()
                        + prior(z.double()).cpu())
                row("reference (scipy RK45, 1 probe)", tol, 1, logp, nfe, seconds, trace)
    return rows


def write_likelihood(rows: Sequence[Dict[str, Any]], out_dir: Union[str, Path], prefix: str = "likelihood",
                     preamble: str = "") -> List[Path]:
    """likelihood.csv, likelihood.md (per problem and SDE) and likelihood.png (error against NFE)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    csv_path = write_csv(rows, out_dir / f"{prefix}.csv")
    md = ["# Likelihood benchmark\n", preamble]
    cols = [("method", lambda r: r["method"]), ("tol", lambda r: fmt(r["tol"], "g")),
            ("probes", lambda r: str(r["probes"]) if r["probes"] else "exact"), ("NFE", lambda r: str(r["nfe"])),
            ("mean abs err (nats)", lambda r: fmt(r["err_mean"], ".2e")),
            ("max abs err", lambda r: fmt(r["err_max"], ".2e")),
            ("sd vs exact trace", lambda r: fmt(r["sd"], ".3f")), ("s", lambda r: fmt(r["seconds"], ".2f")),
            ("ms / sample", lambda r: fmt(1e3 * r["sec_per_sample"], ".3f"))]
    keys = sorted({(r["problem"], r["sde"]) for r in rows}, key=lambda k: (k[0], sde_order(k[1])))
    for prob, s in keys:
        md += [f"## {prob}, {s}\n", md_table([r for r in rows if r["problem"] == prob and r["sde"] == s], cols)]
    md_path = out_dir / f"{prefix}.md"
    md_path.write_text("\n".join(md))
    probs = list(dict.fromkeys(k[0] for k in keys))
    sdes = sorted({k[1] for k in keys}, key=sde_order)
    fig, axes = plt.subplots(len(probs), len(sdes), figsize=(4.8 * len(sdes), 3.8 * len(probs)), squeeze=False)
    for i, prob in enumerate(probs):
        for j, s in enumerate(sdes):
            ax = axes[i][j]
            rs = [r for r in rows if r["problem"] == prob and r["sde"] == s]
            for m, style in (("exact trace", "o-"), ("reference (scipy RK45, 1 probe)", "s--")):
                pts = sorted((r["nfe"], r["err_mean"]) for r in rs if r["method"] == m)
                if pts:
                    ax.plot([a for a, _ in pts], [b for _, b in pts], style, label=m)
            for r in rs:
                if r["method"] == "hutchinson":
                    ax.plot([r["nfe"]], [r["err_mean"]], "^", color="C2", alpha=0.4 + 0.6 * min(r["probes"], 8) / 8)
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.set_xlabel("NFE"), ax.set_ylabel("mean |log p - exact| (nats)")
            ax.set_title(f"{prob}, {s} (triangles: Hutchinson)", fontsize=9)
            ax.grid(True, which="both", alpha=0.2)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / f"{prefix}.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return [csv_path, md_path, png]
