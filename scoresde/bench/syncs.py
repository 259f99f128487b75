"""Counting device-to-host syncs: every ``aten._local_scalar_dense`` (what ``.item()``,
``float(t)``, ``int(t)`` and ``if t:`` dispatch to), with the library that asked for it.

Used by ``benchmarks/syncs.py`` and by the tests that hold the samplers' and the trainer's loops
to a constant number of syncs.  A read of a tensor that lives on the host is counted too (no
transfer there, but the same call on a GPU tensor would be one): ``exclude`` leaves out given
tensors by identity, e.g. the optimizer's host-side step counters.
"""

from __future__ import annotations

import collections
import re
import traceback
from typing import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncCount"]

_OWNER = re.compile(r"(scoresde|torchdiffeq|torchsde)[/\\]")


class SyncCount(TorchDispatchMode):
    """``with SyncCount() as s: ...`` counts the scalar reads in the block: ``s.n`` in all and
    ``s.by`` per owner, the innermost scoresde / torchdiffeq / torchsde frame on the stack
    (``"other"`` for none)."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.exclude = {id(t) for t in exclude}
        self.n = 0
        self.by: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and id(args[0]) not in self.exclude:
            self.n += 1
            owner = "other"
            for frame in reversed(traceback.extract_stack()[:-1]):   # [-1]: this method
                m = _OWNER.search(frame.filename)
                if m:
                    owner = m.group(1)
                    break
            self.by[owner] += 1
        return func(*args, **(kwargs or {}))
