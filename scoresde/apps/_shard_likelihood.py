"""Sharded likelihood for ``scoresde-likelihood``: per-image noise, shards written as they finish,
resume, and one NLL for any number of processes.

    torchrun --nproc_per_node=2 -m scoresde.apps.likelihood checkpoint=... noise=per_item \\
        hydra.run.dir=runs/nll     # or: scoresde-likelihood ... noise=per_item (one process)

With ``noise=per_item`` (required under torchrun) point i's randomness -- the dequantization draw
u_i of an image and, where used, its Hutchinson probes or its ELBO's times and noise -- comes from a
CPU generator seeded by ``item_seed(seed, i)`` (:func:`scoresde.samplers.item_seed`), as sharded
sampling's noise does.  The points 0..n-1 are cut into batches of ``batch_size`` (the last may be
shorter); batch j goes to rank j mod world_size (:func:`scoresde.apps._shard.plan`) and is solved
there alone, with its own adaptive steps: no collective runs inside a solve, so ranks that take
different NFE cannot hang each other.  Finished batches are written atomically to
``shards/START-STOP.pt`` with a fingerprint of everything that determines their values; a rerun
with the same command and ``hydra.run.dir`` resumes from them (:func:`scoresde.apps._shard.run_shards`).
Rank 0 waits for every rank, then writes ``likelihood.json`` (the one-process app's keys, plus
``world_size``, ``noise``, ``batch_size``, ``shards``, ``solve``) and ``likelihood.md``.

How the values depend on the layout:

- ``method=ode`` with ``divergence=exact``: each batch is one batched solve (``solve: batched``),
  and the adaptive step sizes are chosen over the batch (torchdiffeq's error norm is an RMS over
  it), so a point's log-likelihood depends on its batch-mates to the solver's tolerance (rtol, atol)
  -- not on the rank layout itself: equal batches give equal values bit for bit for any world size.
- ``divergence=hutchinson`` and ``method=elbo`` draw from the generator inside the library
  (``sd.log_likelihood``'s probes, ``sd.elbo``'s times and noise), one stream per call; to give
  each point its own stream every point is its own call (``solve: per_point``), so those values
  do not depend on the batch size or world size at all (bit for bit), at the cost of unbatched
  solves.  (Batched per-point probes need ``sd.log_likelihood`` / ``sd.elbo`` to accept an
  :class:`scoresde.samplers.ItemNoise` as ``generator``.)
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf

from ..data.images import from_model_range
from ..atomic import atomic_write_bytes
from ..samplers import item_seed
from ._common import cpu_generator, load_app_score
from ._shard import fingerprint, load_shards, plan, run_shards

log = logging.getLogger("scoresde")

__all__ = ["run_sharded_likelihood", "LIKELIHOOD_KEYS"]

#: the config entries a shard's values depend on (the world size is not one: resume on another)
LIKELIHOOD_KEYS = ("checkpoint", "split", "n", "batch_size", "divergence", "rtol", "atol", "eps", "seed",
                   "ema", "data", "method", "n_t", "estimator", "importance_sampling", "noise")


def _item_generator(seed: int, i: int) -> torch.Generator:
    return torch.Generator().manual_seed(item_seed(seed, i))


def run_sharded_likelihood(cfg: DictConfig, out_dir: Path) -> Dict[str, Any]:
    """The sharded body of the likelihood app (see the module docstring)."""
    import scoresde as sd
    from ..training import distributed
    from ..likelihood.ode import resolve_divergence
    from ._likelihood_parts import DIVERGENCES, ESTIMATORS, _methods, _points, dataset_to_score, table

    noise = cfg.get("noise", "stream")
    world, rank = distributed.world_size(), distributed.rank()
    if noise != "per_item":
        raise ValueError(f"the likelihood over {world} processes needs noise=per_item (point i's dequantization "
                         f"and probes from (seed, i)); set it in one-process runs too to get the same values")
    if cfg.get("protocol", "ours") != "ours" or int(cfg.get("repeats", 1)) != 1:
        raise ValueError("sharded likelihood runs take protocol=ours and repeats=1 (one dequantization draw a "
                         "point from (seed, i)); run protocol=score_sde in one process")
    if cfg.split not in ("test", "train"):
        raise ValueError(f"unknown split {cfg.split!r}; valid splits: ['test', 'train']")
    if cfg.divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {cfg.divergence!r}; valid estimators: {list(DIVERGENCES)}")
    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {cfg.estimator!r}; valid estimators: {list(ESTIMATORS)}")
    if cfg.n is not None and cfg.n < 1:
        raise ValueError(f"n must be positive or null (the whole split), got {cfg.n}")
    methods = _methods(cfg.method if isinstance(cfg.method, str) else list(cfg.method))
    out_dir = Path(distributed.broadcast_run_dir(str(out_dir)))
    loaded = load_app_score(cfg)
    score_fn, sde, event_shape, meta = loaded
    dev = next(score_fn.parameters()).device
    data = dataset_to_score(OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None
                            else None, meta, event_shape)
    x = _points(data, cfg.split, cfg.n, cpu_generator(cfg.seed))   # every rank draws the same points
    n = int(x.shape[0])
    batches = plan(n, cfg.batch_size, world)
    dims = math.prod(data.event_shape)
    levels = data.info.get("levels") if len(data.event_shape) == 3 else None
    if levels is not None:
        levels = int(levels)
        dequantized = bool(data.info.get("dequantize", False))
        k = from_model_range(x, levels, dequantized=dequantized)
        lo, hi = (-1.0, 1.0) if dequantized else (-levels / (levels - 1), levels / (levels - 1))
    log_det = data.scaler.log_det(data.event_shape) if levels is None else 0.0
    divergence = resolve_divergence(cfg.divergence, dims)   # auto: exact up to 64 dimensions, as the library
    batched = divergence == "exact"
    ode_kw = dict(divergence=divergence, rtol=cfg.rtol, atol=cfg.atol, eps=cfg.eps)
    elbo_kw: Dict[str, Any] = dict(n_t=cfg.n_t, estimator=cfg.estimator,
                                   importance_sampling=bool(cfg.importance_sampling), eps=cfg.eps)
    if cfg.estimator == "ism":
        elbo_kw["divergence"] = divergence

    def one_point(m: str, i: int):
        """Point i alone, from its own generator: (nll in nats, its ELBO standard error or nan, NFE)."""
        g = _item_generator(cfg.seed, i)
        kw = ode_kw if m == "ode" else elbo_kw
        if levels is None:
            fn = sd.log_likelihood if m == "ode" else sd.elbo
            ll = fn(score_fn, sde, x[i:i + 1].to(dev), generator=g, **kw)
            logp = (ll.logp if m == "ode" else ll.elbo).detach().double().cpu()[0]
            se = float("nan") if m == "ode" else float(ll.stderr.detach().double()[0])
        else:
            ll = sd.bits_per_dim(score_fn, sde, k[i:i + 1].to(dev), levels=levels, data_range=(lo, hi),
                                 method=m, generator=g, **kw)
            logp = ll.logp[0].detach().double().cpu()[0] + ll.log_det
            se = float("nan") if m == "ode" else float(ll.stderr.detach().double()[0]) * dims * math.log(2.0)
        return -(float(logp) + log_det), se, int(ll.nfe)

    def batched_ode(start: int, stop: int):
        """Points start..stop-1 in one solve (exact divergence: no probes), each point's
        dequantization u_i drawn from its own generator as ``sd.bits_per_dim`` would draw it."""
        if levels is None:
            xq, deq = x[start:stop], 0.0
        else:
            u = torch.cat([torch.rand((1, 1) + tuple(x.shape[1:]), generator=_item_generator(cfg.seed, i),
                                      dtype=torch.float64)[0] for i in range(start, stop)])
            xq = (lo + (hi - lo) * (k[start:stop].double() + u) / levels).to(x.dtype)
            deq = dims * math.log((hi - lo) / levels)
        ll = sd.log_likelihood(score_fn, sde, xq.to(dev), **ode_kw)
        nll = -(ll.logp.detach().double().cpu() + deq + log_det)
        return nll, int(ll.nfe)

    def compute(start: int, stop: int) -> Dict[str, Any]:
        res: Dict[str, Any] = {}
        for m in methods:
            t0 = time.perf_counter()
            if m == "ode" and batched:
                nll, nfe = batched_ode(start, stop)
                se = torch.full_like(nll, float("nan"))
            else:
                vals = [one_point(m, i) for i in range(start, stop)]
                nll = torch.tensor([v[0] for v in vals], dtype=torch.float64)
                se = torch.tensor([v[1] for v in vals], dtype=torch.float64)
                nfe = sum(v[2] for v in vals)
            res[m] = {"nll": nll, "se": se, "nfe": nfe, "seconds": time.perf_counter() - t0}
        return res

    key = fingerprint(cfg, LIKELIHOOD_KEYS)
    shard_dir = out_dir / "shards"
    run_shards(shard_dir, batches[rank::world], key, compute, rank)
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return {}
    parts = load_shards(shard_dir, batches, key)
    out: Dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint), "step": meta["step"], "source": meta["source"], "data": data.name,
        "split": cfg.split, "n": n, "dims": dims, "method": "both" if len(methods) == 2 else methods[0],
        "divergence": cfg.divergence, "divergence_used": divergence, "rtol": cfg.rtol, "atol": cfg.atol, "eps": cfg.eps, "seed": int(cfg.seed),
        "ema": bool(cfg.ema), "device": str(dev)}
    if levels is not None:
        out["levels"] = levels
    if "elbo" in methods:
        out.update(n_t=cfg.n_t, estimator=cfg.estimator, importance_sampling=bool(cfg.importance_sampling))
    nll_by: Dict[str, torch.Tensor] = {}
    for m in methods:
        p = "" if m == "ode" else "elbo_"
        nll = torch.cat([q[m]["nll"] for q in parts])
        nll_by[m] = nll
        out[p + "nll"] = float(nll.mean())
        out[p + "nll_se"] = float(nll.std() / math.sqrt(n)) if n > 1 else float("nan")
        out[p + "bits_per_dim"] = None if levels is None else out[p + "nll"] / (dims * math.log(2.0))
        if levels is None:
            out[p + "bits_per_dim_note"] = (f"null: bits/dim is defined for discrete data; {data.name} is "
                                            f"continuous, so {p}nll is a density: nats per sample in data space")
        out[p + "nfe_per_batch"] = [int(q[m]["nfe"]) for q in parts]
        out[p + "nfe"] = sum(out[p + "nfe_per_batch"])
        out[p + "seconds"] = round(sum(float(q[m]["seconds"]) for q in parts), 4)
        if m == "elbo":
            se = torch.cat([q[m]["se"] for q in parts])
            out["elbo_mc_se"] = float(se.pow(2).mean().div(se.numel()).sqrt())
        if m == "ode" and data.mixture is not None:
            h, h_se = data.mixture.entropy(n=100_000, generator=torch.Generator().manual_seed(int(cfg.seed)))
            out["entropy"], out["entropy_se"] = float(h) - log_det, float(h_se)
            diff = data.mixture.log_prob(x.double().cpu()) - (-nll - log_det)
            out["kl"], out["kl_se"] = float(diff.mean()), float(diff.std() / math.sqrt(n))
    if len(methods) == 2:
        gap = nll_by["elbo"] - nll_by["ode"]
        out["elbo_minus_ode"] = float(gap.mean())
        out["elbo_minus_ode_se"] = float(gap.std() / math.sqrt(n)) if n > 1 else float("nan")
    out.update(noise="per_item", world_size=world, batch_size=batches[0][1] - batches[0][0],
               solve="batched" if batched else "per_point", fingerprint=key,
               shards=[{"start": q["start"], "stop": q["stop"], "rank": q["rank"]} for q in parts])
    text = table(out)
    atomic_write_bytes(out_dir / "likelihood.json", json.dumps(out, indent=2).encode())
    atomic_write_bytes(out_dir / "likelihood.md", (
        f"# {out['data']}: {n} {cfg.split} points, step {out['step']}, eps {cfg.eps:g}, "
        f"{world} process{'es' if world > 1 else ''}\n\n{text}\n").encode())
    log.info("likelihood over %d %s points on %d processes -> %s\n%s", n, cfg.split, world,
             out_dir / "likelihood.json", text)
    return out
