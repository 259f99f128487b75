"""The sample app's class labels and guidance options, shared with its edit mode (:mod:`._edit`)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from hydra.core.config_store import ConfigStore

from .schema import schema_from_signature

__all__ = ["GUIDANCE_KINDS", "guidance_options", "PER_CLASS", "check_labels"]


GUIDANCE_KINDS = ("cfg", "classifier")


def guidance_options(kind: str = "cfg", scale: float = 1.0, classifier: Optional[str] = None) -> Dict[str, Any]:
    """The ``guidance`` node of the sample app (its schema is this signature).

    ``kind``: ``cfg`` (classifier-free guidance of a class-conditional model, Ho & Salimans 2022:
    s(x, t, null) + scale (s(x, t, y) - s(x, t, null)); their w = scale - 1, diffusers'
    ``guidance_scale`` = scale) or ``classifier`` (Song et al. 2021 Sec. 5, Dhariwal & Nichol
    2021: s(x, t) + scale grad_x log q_t(y | x) with the noisy classifier checkpoint
    ``classifier``).  Returns the checked options.
    """
    if kind not in GUIDANCE_KINDS:
        raise ValueError(f"unknown guidance.kind {kind!r}; valid: {', '.join(GUIDANCE_KINDS)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ValueError(f"guidance.scale must be a number, got {scale!r}")
    if kind == "classifier" and not classifier:
        raise ValueError("guidance.kind=classifier needs guidance.classifier=PATH (a checkpoint of "
                         "scoresde-train task=classifier)")
    if kind == "cfg" and classifier:
        raise ValueError("guidance.classifier is used only with guidance.kind=classifier")
    out = {"kind": kind, "scale": float(scale)}
    if classifier:
        out["classifier"] = str(classifier)
    return out


GuidanceSchema = schema_from_signature("GuidanceSchema", guidance_options, None)
ConfigStore.instance().store(group="schema/guidance", name="guidance", node=GuidanceSchema)


PER_CLASS = "per_class"


def check_labels(labels, n: int, num_classes: int) -> Optional[torch.Tensor]:
    """The int64 labels of a conditional draw (None: unconditional): ``[n]`` for one integer,
    one per entry of a list, ``n`` of each class in turn for ``"per_class"``."""
    if labels is None:
        return None
    if not num_classes:
        raise ValueError("labels given, but the checkpoint's model is unconditional (model.num_classes=0); "
                         "train with model.num_classes=K for class-conditional sampling")
    if isinstance(labels, str):
        if labels != PER_CLASS:
            raise ValueError(f"labels must be an integer, a non-empty list of integers or {PER_CLASS!r}, "
                             f"got {labels!r}")
        return torch.arange(num_classes).repeat_interleave(n)
    vals = [labels] if isinstance(labels, int) and not isinstance(labels, bool) else list(labels)
    if not vals or any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
        raise ValueError(f"labels must be an integer, a non-empty list of integers or {PER_CLASS!r}, "
                         f"got {labels!r}")
    bad = sorted({v for v in vals if not 0 <= v < num_classes})
    if bad:
        raise ValueError(f"labels must lie in [0, {num_classes}) for this model, got {bad}")
    y = torch.tensor(vals, dtype=torch.long)
    return y.expand(n).clone() if len(vals) == 1 and isinstance(labels, int) else y
