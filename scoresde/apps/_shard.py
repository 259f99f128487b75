"""Sharded sampling for ``scoresde-sample``: per-item noise, shards written as they finish, resume,
and the same samples for any number of processes.

With ``noise=per_item`` (required under torchrun) sample i's prior draw and sampler noise come from
``(seed, i)`` alone (:class:`scoresde.samplers.ItemNoise`).  The indices 0..n-1 are cut into
batches of ``batch_size`` (the last one may be shorter); batch j goes to rank j mod world_size.
Each finished batch is written atomically to ``shards/START-STOP.pt`` in the run directory, with
a fingerprint of everything that determines its samples (checkpoint, sampler and options, seed,
n, batch size, labels, guidance, EMA); a rerun with the same command and directory
(``hydra.run.dir=...``) skips the shards it finds with that fingerprint and refuses shards of
another run.  The world size is not in the fingerprint: a run killed on 2 ranks may resume on 4.
The ranks are torchrun's (a gloo or NCCL process group, one barrier before the gather) or the
tasks of a submitit job (``hydra/launcher=slurm hydra.launcher.tasks_per_node=K``, or
``submitit_local`` without SLURM; :func:`scoresde.training.distributed.task_rank_world`), which
share no process group: there rank 0 waits for the others' shard files, since a shard file exists
only once it is complete, and gives up when none has appeared for ``SCORESDE_DIST_TIMEOUT_S``
seconds (default 1800; a rerun resumes).
When every rank is done, rank 0 gathers the shards in index order into
``samples.pt`` (data space), ``samples.npz`` for images (uint8 NHWC under ``arr_0``, what FID tools
read), ``samples.png`` and ``sample.json`` (with ``world_size``, the ``shards`` and who made them).

What holds: equal batch sizes give the same samples bit for bit for any world size; other batch
sizes agree to float rounding (the network's kernels change with the batch).  Adaptive ODE solvers
choose their steps over a batch, so there the samples of different batch sizes agree only to the
solver's tolerance; the pc sampler's batch-mean Langevin step is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from ..atomic import atomic_write_bytes
from ..plots import save_samples_png
from ._common import load_app_score

log = logging.getLogger("scoresde")

__all__ = ["NOISE", "plan", "run_sharded", "fingerprint", "run_shards", "load_shards"]

NOISE = ("stream", "per_item")


def plan(n: int, batch_size: Optional[int], world_size: int) -> List[Tuple[int, int]]:
    """The batches ``(start, stop)`` of 0..n-1 (all of ``batch_size`` but perhaps the last)."""
    if n < 1:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    b = int(batch_size or n)
    if b < 1:
        raise ValueError(f"batch_size must be positive or null, got {batch_size}")
    if world_size > n:
        raise ValueError(f"world size {world_size} is larger than n = {n}: some ranks would have no sample")
    batches = [(s, min(s + b, n)) for s in range(0, n, b)]
    if len(batches) < world_size:
        raise ValueError(f"{len(batches)} batches of {b} for {world_size} ranks: some ranks would idle; "
                         f"use batch_size <= {n // world_size}")
    return batches


SAMPLE_KEYS = ("checkpoint", "sampler", "seed", "n", "batch_size", "labels", "guidance", "ema", "noise")


def fingerprint(cfg: DictConfig, keys: Sequence[str] = SAMPLE_KEYS) -> str:
    """A short hash of the config entries ``keys``: what determines a shard's contents."""
    blob = json.dumps({k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg.get(k))
                       else cfg.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_tensor_dict(path: Path, obj: Dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _wait_for_shards(shard_dir: Path, batches: List[Tuple[int, int]], stall_s: float, poll_s: float = 0.5) -> None:
    """Return when every batch's shard file exists; raise when none has appeared for ``stall_s`` s
    (another task died or hangs: its shards are missing, the finished ones stay for a rerun)."""
    missing = [shard_dir / f"{s:08d}-{e:08d}.pt" for s, e in batches]
    last, count = time.monotonic(), len(missing)
    while True:
        missing = [p for p in missing if not p.is_file()]
        if not missing:
            return
        if len(missing) < count:
            last, count = time.monotonic(), len(missing)
        elif time.monotonic() - last > stall_s:
            raise RuntimeError(f"rank 0 waited {stall_s:.0f} s (SCORESDE_DIST_TIMEOUT_S) without a new shard from the "
                               f"other tasks; missing: {', '.join(p.name for p in missing[:4])}"
                               f"{' ...' if len(missing) > 4 else ''}; rerun the same command in the same run "
                               f"directory to resume")
        time.sleep(poll_s)


def run_shards(shard_dir: Path, mine: Sequence[Tuple[int, int]], key: str,
               compute: Callable[[int, int], Dict[str, Any]], rank: int = 0) -> int:
    """Compute this rank's shards ``mine`` that are not on disk yet, each written atomically to
    ``shard_dir/START-STOP.pt`` with ``start``, ``stop``, ``rank`` and the run's ``key`` beside
    what ``compute(start, stop)`` returns.  A shard found with another key is refused (a
    ValueError), never mixed in.  Returns how many shards were already done (resumed)."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    done = 0
    for start, stop in mine:
        path = shard_dir / f"{start:08d}-{stop:08d}.pt"
        if path.is_file():
            old = torch.load(path, map_location="cpu", weights_only=True)
            if old.get("key") != key:
                raise ValueError(f"{path} belongs to another run (another checkpoint, seed, n, batch size or "
                                 f"options); use another hydra.run.dir")
            done += 1
            continue
        _save_tensor_dict(path, {**compute(start, stop), "start": start, "stop": stop, "rank": rank, "key": key})
    if done:
        log.info("rank %d: %d of its %d shards were already done (resumed)", rank, done, len(mine))
    return done


def load_shards(shard_dir: Path, batches: Sequence[Tuple[int, int]],
                key: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every shard of ``batches``, in index order (rank 0, after the barrier or the wait); with
    ``key``, a shard of another run (another task's stale file) is refused, never mixed in."""
    parts = [torch.load(shard_dir / f"{s:08d}-{e:08d}.pt", map_location="cpu", weights_only=True)
             for s, e in batches]
    foreign = [f"{p['start']}-{p['stop']}" for p in parts if key is not None and p.get("key") != key]
    if foreign:
        raise ValueError(f"shards {foreign} in {shard_dir} belong to another run; use another run directory")
    return parts


def run_sharded(cfg: DictConfig, out_dir: Path) -> Dict[str, Any]:
    """The sharded body of the sample app (see the module docstring)."""
    from ..training import distributed
    from ._sampling import _reference, sample_checkpoint

    noise = cfg.get("noise", "stream")
    if noise not in NOISE:
        raise ValueError(f"noise must be one of {NOISE}, got {noise!r}")
    rank, world = distributed.task_rank_world()
    if noise != "per_item":
        raise ValueError(f"sampling over {world} processes needs noise=per_item (sample i's noise from (seed, i)); "
                         f"set it in one-process runs too to get the same samples")
    out_dir = Path(distributed.broadcast_run_dir(str(out_dir)))
    labels = OmegaConf.to_container(cfg.labels) if OmegaConf.is_config(cfg.labels) else cfg.labels
    n_total = int(cfg.n)
    y = None                       # the label of every index (checked against the model per shard)
    if isinstance(labels, str):
        raise ValueError("sharded sampling takes labels as one class or a list (one sample each), not per_class")
    if isinstance(labels, int) and not isinstance(labels, bool):
        y = torch.full((n_total,), labels, dtype=torch.long)
    elif labels is not None:
        if not isinstance(labels, (list, tuple)) or not labels:
            raise ValueError(f"labels must be an integer, a non-empty list of integers or null, got {labels!r}")
        y = torch.tensor(list(labels))
        n_total = int(y.numel())   # as the one-process app: a list gives one sample per entry
    batches = plan(n_total, cfg.batch_size, world)
    mine = batches[rank::world]
    key = fingerprint(cfg)
    shard_dir = out_dir / "shards"
    sampler = OmegaConf.to_container(cfg.sampler, resolve=True)
    guidance = OmegaConf.to_container(cfg.guidance, resolve=True) if cfg.get("guidance") is not None else None
    loaded = load_app_score(cfg)

    def compute(start: int, stop: int) -> Dict[str, Any]:
        x, info = sample_checkpoint(loaded, sampler, stop - start, stop - start, cfg.seed, cfg.device, cfg.ema,
                                    cfg.progress, labels=None if y is None else y[start:stop].tolist(),
                                    guidance=guidance, item_offset=start)
        return {"x": x, "nfe": int(info["nfe"]), "seconds": float(info["seconds"])}

    run_shards(shard_dir, mine, key, compute, rank)
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    elif world > 1 and rank == 0:     # submitit tasks: no process group, the shard files are the signal
        _wait_for_shards(shard_dir, batches, distributed.process_group_timeout().total_seconds())
    if rank != 0:
        return {}
    parts = load_shards(shard_dir, batches, key)
    x = torch.cat([p["x"] for p in parts])
    torch.save(x, out_dir / "samples.pt")
    files = ["samples.pt", "samples.png"]
    if x.ndim == 4:
        k = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        buf = io.BytesIO()
        np.savez(buf, arr_0=k)
        atomic_write_bytes(out_dir / "samples.npz", buf.getvalue())
        files.append("samples.npz")
    meta = loaded.meta
    info = {"checkpoint": str(cfg.checkpoint), "step": meta["step"], "data": meta["data_name"],
            "source": meta["source"], "sampler": sampler.get("name", "ode"),
            "options": {k: v for k, v in sampler.items() if k != "name"}, "n": n_total,
            "nfe": sum(p["nfe"] for p in parts), "nfe_per_batch": [p["nfe"] for p in parts],
            "seconds": round(sum(p["seconds"] for p in parts), 4), "seed": int(cfg.seed), "ema": bool(cfg.ema),
            "noise": "per_item", "world_size": world, "batch_size": batches[0][1] - batches[0][0],
            "shards": [{"start": p["start"], "stop": p["stop"], "rank": p["rank"]} for p in parts],
            "fingerprint": key, "files": files}
    if y is not None:
        info["labels"] = y.tolist()
    ref = _reference(meta["data"], x.shape[1:])
    save_samples_png(x, out_dir / "samples.png", reference=ref,
                     title=f"{info['data'] or cfg.checkpoint}: {info['sampler']}, NFE {info['nfe_per_batch'][0]}",
                     labels=y)
    atomic_write_bytes(out_dir / "sample.json", json.dumps(info, indent=2).encode())
    log.info("%d samples over %d processes (%s) written to %s", n_total, world, info["sampler"], out_dir)
    return info
