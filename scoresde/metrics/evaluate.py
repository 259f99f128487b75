"""Every feature metric of a sample set against reference statistics, with the record of how.

:func:`evaluate` computes, in one extractor's feature space, the Frechet distance, KID (when the
reference kept its features), the Inception Score of the extractor's logits (when it classifies)
and improved precision/recall (with reference features), and optionally the same figures for n
real held-out images, the real-vs-real floor at the same n.  The names follow the extractor:
``fid`` / ``kid`` / ``inception_score`` for the FID Inception, ``fd_digits`` / ``kid_digits`` /
``is_digits`` for the digits network.  :func:`markdown` renders the result as a table with its
protocol.  ``scoresde-eval`` (:mod:`scoresde.apps.eval`) is the command-line front end.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from .features import FeatureExtractor, extract
from .frechet import frechet_distance
from .kid import kernel_inception_distance
from .precision_recall import precision_recall
from .scores import inception_score
from .stats import FeatureStats, feature_stats

Tensor = torch.Tensor

__all__ = ["evaluate", "markdown"]


def _is_splits(n: int, splits: int) -> int:
    """The split count used: ``splits`` when it divides n, else the largest divisor below it
    (recorded in the result, never a silent drop of samples)."""
    return next(s for s in range(min(splits, n), 0, -1) if n % s == 0)


def _scores(ext: FeatureExtractor, images: Tensor, ref: FeatureStats, kid_subsets: int, kid_subset_size: int,
            is_splits: int, pr_k: int, seed: int, batch_size: int) -> Dict[str, Any]:
    f, logits = extract(ext, images, batch_size, what="both")
    mine = feature_stats(f, keep_features=True, **ext.record())
    ref.check_compatible(mine)
    out: Dict[str, Any] = {ext.fd_name: frechet_distance(mine, ref)}
    if ref.features is not None:
        g = torch.Generator().manual_seed(seed)
        k = kernel_inception_distance(mine, ref, subsets=kid_subsets, subset_size=kid_subset_size, generator=g)
        out.update({ext.kid_name: k.mean, f"{ext.kid_name}_stderr": k.stderr})
        pr = precision_recall(ref, mine, k=pr_k)
        out.update(precision=pr.precision, recall=pr.recall)
    if logits is not None:
        r = inception_score(logits, splits=_is_splits(f.shape[0], is_splits))
        out.update({ext.is_name: r.mean, f"{ext.is_name}_std": r.std})
    return out


def evaluate(images: Tensor, extractor: FeatureExtractor, reference: FeatureStats, *,
             floor_images: Optional[Tensor] = None, floor_repeats: int = 1, kid_subsets: int = 100,
             kid_subset_size: int = 1000, is_splits: int = 10, pr_k: int = 3, seed: int = 0,
             batch_size: int = 256) -> Dict[str, Any]:
    """Score ``images`` ``[n, C, H, W]`` (floats in [0, 1] or uint8) against ``reference``.

    ``floor_images``: real images not in the reference (a held-out split, at least n of them);
    the floor is the mean of each figure over ``floor_repeats`` draws of n of them without
    replacement (seeded by ``seed``).  Returns ``{"metrics", "floor" (or None), "protocol"}``.
    """
    n = int(images.shape[0])
    if n < 2:
        raise ValueError(f"images: need at least 2 samples, got {n}")
    kw = dict(kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, is_splits=is_splits, pr_k=pr_k,
              seed=seed, batch_size=batch_size)
    metrics = _scores(extractor, images, reference, **kw)
    floor = None
    if floor_images is not None:
        if floor_images.shape[0] < n:
            raise ValueError(f"the floor needs n = {n} held-out images, only {floor_images.shape[0]} given; "
                             f"evaluate fewer samples or drop the floor")
        g = torch.Generator().manual_seed(seed)
        reps = 1 if floor_images.shape[0] == n else int(floor_repeats)
        rows: List[Dict[str, Any]] = []
        for _ in range(reps):
            idx = torch.randperm(floor_images.shape[0], generator=g)[:n]
            rows.append(_scores(extractor, floor_images[idx], reference, **kw))
        floor = {k: sum(r[k] for r in rows) / reps for k in rows[0]}
        floor["repeats"] = reps
    protocol = {"n": n, **extractor.record(), "preprocess": extractor.preprocess, "reference": reference.record(),
                "kid": ({"subsets": kid_subsets, "subset_size": min(kid_subset_size, n, reference.n or n),
                         "seed": seed, "kernel": "(x.y / D + 1)^3"} if reference.features is not None
                        else "not computed: the reference holds no features"),
                "inception_score_splits": _is_splits(n, is_splits), "precision_recall_k": pr_k,
                "floor": (f"{n} held-out real images vs the reference, mean of {floor['repeats']} draws"
                          if floor else "not computed")}
    return {"metrics": metrics, "floor": floor, "protocol": protocol}


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(result: Dict[str, Any], title: str = "Sample quality") -> str:
    """A Markdown table of :func:`evaluate`'s figures beside their floor, then the protocol."""
    m, fl = result["metrics"], result.get("floor")
    lines = [f"# {title}", "", "| metric | samples | real-vs-real floor (same n) |", "|---|---|---|"]
    for k, v in m.items():
        lines.append(f"| {k} | {_fmt(v)} | {_fmt(fl[k]) if fl and k in fl else '-'} |")
    lines += ["", "## Protocol", ""]
    for k, v in result["protocol"].items():
        if isinstance(v, dict):
            lines.append(f"- {k}: " + ", ".join(f"{a} = {_fmt(b)}" for a, b in v.items()))
        else:
            lines.append(f"- {k}: {_fmt(v)}")
    return "\n".join(lines) + "\n"
