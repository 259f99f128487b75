"""The divergence's building blocks: vector-Jacobian products of a score batched over probe or
basis vectors, their quadratic forms, and the exact trace and Jacobian of grad_x s.

Shared by the ODE likelihood (:mod:`scoresde.likelihood.ode`) and the ELBO
(:mod:`scoresde.likelihood.elbo`).  Each takes the score's output ``s`` with its graph to the input
``x`` and a one-element list ``batched`` recording whether the score's backward supports
``is_grads_batched`` (if not, a loop of backward passes replaces the batched one, once and for all).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

# elements of the batched Jacobian-vector products held at once by the exact divergence
_EXACT_CHUNK_ELEMS = 2 ** 25


def _vjps(s: Tensor, x: Tensor, V: Tensor, batched: list, last: bool = True) -> Tensor:
    """v^T grad_x s for each row v of V ``[n, B, ...]``: returns ``[n, B, ...]``.

    One backward pass batched over the n vectors; if the score function's backward has no
    batching rule, a loop of n backward passes (``batched[0]`` records which worked).  ``last``:
    no later backward through s follows, so the final pass frees the graph (keeping it costs ~4%
    of an evaluation of the mixtures' scores); the batched attempt always keeps it, for the loop
    to fall back on.
    """
    if V.shape[0] == 1:
        return torch.autograd.grad(s, x, V[0], retain_graph=not last)[0][None]
    if batched[0]:
        try:
            return torch.autograd.grad(s, x, V, retain_graph=True, is_grads_batched=True)[0]
        except RuntimeError:
            batched[0] = False
    n = V.shape[0]
    return torch.stack([torch.autograd.grad(s, x, v, retain_graph=not last or i < n - 1)[0]
                        for i, v in enumerate(V)])


def _quadratic_forms(s: Tensor, x: Tensor, V: Tensor, batched: list, last: bool = True) -> Tensor:
    """v^T (grad_x s) v for each row v of V ``[n, B, ...]``: returns ``[n, B]`` (``last``: :func:`_vjps`)."""
    n, B = V.shape[0], V.shape[1]
    return (_vjps(s, x, V, batched, last) * V).reshape(n, B, -1).sum(-1)


def _basis_chunks(x: Tensor):
    """The basis vectors of x's sample space, ``[c, B, ...]`` chunks of at most
    ``_EXACT_CHUNK_ELEMS`` elements, each with whether it is the last (rows are independent
    samples, so one backward of a basis vector gives every row's Jacobian row)."""
    B, D = x.shape[0], x[0].numel()
    eye = torch.eye(D, dtype=x.dtype, device=x.device).reshape((D, 1) + x.shape[1:])
    chunk = max(1, min(D, _EXACT_CHUNK_ELEMS // max(1, B * D)))
    for i in range(0, D, chunk):
        yield eye[i:i + chunk].expand((min(chunk, D - i), B) + x.shape[1:]), i + chunk >= D


def _exact_trace(s: Tensor, x: Tensor, batched: list) -> Tensor:
    """tr(grad_x s) ``[B]``: the quadratic forms of the basis vectors (:func:`_basis_chunks`); the
    last chunk frees the graph."""
    tr = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for V, last in _basis_chunks(x):
        tr = tr + _quadratic_forms(s, x, V, batched, last=last).sum(0)
    return tr


def _exact_jacobian(s: Tensor, x: Tensor, batched: list) -> Tensor:
    """grad_x s per sample, ``[B, D, D]`` with entry (b, i, k) = ds_i / dx_k of sample b: the same
    batched backward passes over the basis vectors as :func:`_exact_trace`, rows kept."""
    B, D = x.shape[0], x[0].numel()
    rows = [_vjps(s, x, V, batched, last=last).reshape(-1, B, D) for V, last in _basis_chunks(x)]
    return torch.cat(rows).transpose(0, 1)
