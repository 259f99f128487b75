"""What the likelihood app and its sharded runs (:mod:`._shard_likelihood`) share: the option
names, the points to score and the side-by-side table."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ..data import build_dataset

__all__ = ["SPLITS", "DIVERGENCES", "NONFINITE", "METHODS", "ESTIMATORS", "table", "dataset_to_score"]

SPLITS = ("test", "train")
DIVERGENCES = ("auto", "exact", "hutchinson")
NONFINITE = ("raise", "count")
METHODS = ("ode", "elbo", "both")
ESTIMATORS = ("dsm", "ism")


def _points(data, split: str, n: Optional[int], generator: torch.Generator) -> torch.Tensor:
    if split == "test":
        x = data.test
    elif data.train is not None:
        x = data.train
    else:  # a generated (toy) set has no stored training set: fresh draws from its distribution
        x = data.sampler(n or data.test.shape[0], generator)
    return x[:n] if n is not None else x


def _methods(method: Union[str, Sequence[str]]) -> List[str]:
    """``"ode"``, ``"elbo"``, ``"both"`` or a list of those -> the methods to run, ODE first."""
    names = [method] if isinstance(method, str) else list(method)
    run = set()
    for m in names:
        key = str(m).lower()
        if key not in METHODS:
            raise ValueError(f"unknown method {m!r}; valid methods: {list(METHODS)} or a list of them")
        run.update(("ode", "elbo") if key == "both" else (key,))
    if not run:
        raise ValueError(f"method is empty; valid methods: {list(METHODS)} or a list of them")
    return [m for m in ("ode", "elbo") if m in run]


def table(out: Dict[str, Any]) -> str:
    """The methods side by side: one row per method (nats, its standard errors, bits/dim, NFE,
    seconds) as a Markdown table, then the paired difference."""
    rows = ["| method | NLL nats | se (points) | MC se | bits/dim | NFE | seconds |",
            "|---|---|---|---|---|---|---|"]
    if "nll" in out:
        bpd = f"{out['bits_per_dim']:.4f}" if out["bits_per_dim"] is not None else "-"
        rows.append(f"| ode    | {out['nll']:.4f} | {out['nll_se']:.4f} | - | {bpd} | {out['nfe']} | "
                    f"{out['seconds']:.2f} |")
    if "elbo_nll" in out:
        bpd = f"{out['elbo_bits_per_dim']:.4f}" if out["elbo_bits_per_dim"] is not None else "-"
        rows.append(f"| elbo   | {out['elbo_nll']:.4f} | {out['elbo_nll_se']:.4f} | {out['elbo_mc_se']:.4f} | {bpd} "
                    f"| {out['elbo_nfe']} | {out['elbo_seconds']:.2f} |")
    if "elbo_minus_ode" in out:
        rows.append(f"\nelbo - ode: {out['elbo_minus_ode']:+.4f} +- {out['elbo_minus_ode_se']:.4f} nats (paired)")
    return "\n".join(rows)


def dataset_to_score(data_cfg: Optional[Dict[str, Any]], meta: Dict[str, Any], event_shape):
    """The data set whose points are scored: ``data_cfg`` (a ``data`` node), else the one the
    checkpoint was trained on (``meta["data"]``); a clear error when there is none or its samples
    do not have the model's ``event_shape``."""
    cfg = dict(data_cfg or meta["data"] or {})
    if "name" not in cfg:
        raise ValueError(f"{meta['path']} carries no data set to score: give one, e.g. data=image_folder "
                         "data.root=/my/images data.size=32 (or data=torchvision ...)")
    data = build_dataset(cfg.pop("name"), **cfg)
    if event_shape is not None and tuple(data.event_shape) != tuple(event_shape):
        raise ValueError(f"data set {data.name!r} has samples of shape {tuple(data.event_shape)}, the model "
                         f"takes {tuple(event_shape)}: set data.size / data.channels to match")
    return data
