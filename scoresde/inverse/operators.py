"""Linear observation operators for inverse problems: y = A x0 + noise_std * e, e ~ N(0, I).

Every operator acts on a batch ``x [B, *event_shape]`` and returns ``y [B, *obs_shape]``; it knows

* ``forward(x)`` = A x,  ``adjoint(y)`` = A^T y  (so <A x, y> = <x, A^T y>),
* ``pinv(y)`` = A^+ y, the Moore-Penrose pseudo-inverse (A A^+ A = A),
* ``project(x)`` = A^+ A x, the orthogonal projection onto the observed subspace (the row space),
* ``gram_solve(v, a, b)`` = (a A A^T + b I)^+ v  (the solve the guidance methods and the oracle need),
* ``obs_coords(x)`` = V^T x and ``embed(u)`` = V u with A = U diag(S) V^T (thin SVD over the r
  nonzero singular values): orthonormal coordinates of the observed subspace, ``singular_values``
  S ``[r]`` and ``whiten(y)`` = S^-1 U^T y, so that A x0 = y reads V^T x0 = whiten(y),
* ``as_matrix(event_shape)``: the dense ``[m, D]`` matrix (float64), for small problems and the oracle,
* ``noise_std``: the observation noise std (0: exact observations).

The generic methods follow from ``forward``/``adjoint`` and an SVD hook ``_basis`` that returns
``(U or None, S)`` in flattened observation space; Mask, Downsample and Grayscale have
A A^T = c I, so U = I and S = sqrt(c) (no matrix is ever formed for them).

>>> import torch, scoresde as sd
>>> op = sd.ops.Mask(torch.tensor([True, False]))
>>> op.forward(torch.tensor([[3.6, 0.5]]))
tensor([[3.6000]])
>>> op.pinv(torch.tensor([[3.6]]))
tensor([[3.6000, 0.0000]])
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["LinearOperator", "Mask", "Matrix", "Downsample", "Grayscale", "as_operator", "LUMINANCE"]

# ITU-R BT.601 luma weights (the "luminance" of Grayscale)
LUMINANCE = (0.299, 0.587, 0.114)


def _check_noise(noise_std: float) -> float:
    noise_std = float(noise_std)
    if not (noise_std >= 0 and math.isfinite(noise_std)):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std}")
    return noise_std


class LinearOperator:
    """A linear map A from ``[B, *event_shape]`` to ``[B, *obs_shape]`` (see the module docstring).

    Subclasses give ``forward``, ``adjoint``, ``input_shape(obs_shape)`` and ``_basis``.
    """

    def __init__(self, noise_std: float = 0.0):
        self.noise_std = _check_noise(noise_std)

    # -- what a subclass gives ---------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def input_shape(self, obs_shape: Sequence[int]) -> Tuple[int, ...]:
        """The event shape of x for observations of event shape ``obs_shape``."""
        raise NotImplementedError

    def _basis(self, dtype: torch.dtype, device) -> Tuple[Optional[Tensor], Tensor]:
        """``(U [m, r] or None for U = I, S [r])``: the thin SVD's left factor and singular values."""
        raise NotImplementedError

    # -- derived ---------------------------------------------------------------------------------
    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def singular_values(self, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        return self._basis(dtype, device)[1]

    def _u_t(self, y: Tensor) -> Tensor:
        U, _ = self._basis(y.dtype, y.device)
        yf = y.reshape(y.shape[0], -1)
        return yf if U is None else yf @ U

    def _u(self, c: Tensor, obs_shape: Sequence[int]) -> Tensor:
        U, _ = self._basis(c.dtype, c.device)
        out = c if U is None else c @ U.T
        return out.reshape((c.shape[0],) + tuple(obs_shape))

    def whiten(self, y: Tensor) -> Tensor:
        """S^-1 U^T y ``[B, r]``: for y = A x0 exactly, this is V^T x0."""
        S = self.singular_values(y.dtype, y.device)
        return self._u_t(y) / S

    def obs_coords(self, x: Tensor) -> Tensor:
        """V^T x ``[B, r]``: the orthonormal coordinates of x in the observed subspace."""
        y = self.forward(x)
        return self._u_t(y) / self.singular_values(x.dtype, x.device)

    def embed(self, u: Tensor, obs_shape: Sequence[int]) -> Tensor:
        """V u in x's shape, for coordinates ``u [B, r]`` (``obs_shape``: the observation's event shape)."""
        S = self.singular_values(u.dtype, u.device)
        return self.adjoint(self._u(u / S, obs_shape))

    def gram_solve(self, v: Tensor, a: float = 1.0, b: float = 0.0) -> Tensor:
        """(a A A^T + b I)^+ v for observations ``v [B, *obs_shape]`` (a, b >= 0 floats or ``[B]``).

        In the SVD: U diag(1 / (a S^2 + b)) U^T v + (I - U U^T) v / b, the second term only where
        rows of A are dependent (absent for b = 0: the pseudo-inverse drops that null space).
        """
        U, S = self._basis(v.dtype, v.device)
        a = torch.as_tensor(a, dtype=v.dtype, device=v.device).reshape(-1, 1)
        b = torch.as_tensor(b, dtype=v.dtype, device=v.device).reshape(-1, 1)
        vf = v.reshape(v.shape[0], -1)
        c = vf if U is None else vf @ U
        out = c / (a * S ** 2 + b)
        if U is not None:
            out = out @ U.T
            if U.shape[1] < U.shape[0] and bool((b > 0).any()):
                rest = vf - (vf @ U) @ U.T
                out = out + torch.where(b > 0, rest / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(rest))
        return out.reshape(v.shape)

    def pinv(self, y: Tensor) -> Tensor:
        """A^+ y = A^T (A A^T)^+ y, in x's shape."""
        return self.adjoint(self.gram_solve(y, 1.0, 0.0))

    def project(self, x: Tensor) -> Tensor:
        """A^+ A x: the orthogonal projection of x onto the observed subspace."""
        return self.pinv(self.forward(x))

    def consistent(self, x: Tensor, y: Tensor) -> Tensor:
        """The hard data-consistency step x + A^+ (y - A x): the point nearest x with A x = y."""
        return x + self.pinv(y - self.forward(x))

    def as_matrix(self, event_shape: Sequence[int], dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """The dense ``[m, D]`` matrix of A on inputs of ``event_shape`` (columns: A applied to the
        standard basis), for small problems and the oracle."""
        event_shape = tuple(int(s) for s in event_shape)
        D = math.prod(event_shape)
        eye = torch.eye(D, dtype=dtype, device=device).reshape((D,) + event_shape)
        return self.forward(eye).reshape(D, -1).T.contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(noise_std={self.noise_std})"


class Mask(LinearOperator):
    """Inpainting / imputation: observe the entries of x where ``mask`` is True.

    ``mask``: a boolean (or 0/1) tensor of the event shape (``[D]`` for vectors, ``[C, H, W]`` for
    images; expand a per-pixel mask over channels yourself).  A x gathers the observed entries
    into ``[B, m]`` (row order: the mask's flattened order); A^T scatters them back with zeros
    elsewhere; A A^T = I, so A^+ = A^T.
    """

    def __init__(self, mask: Tensor, noise_std: float = 0.0):
        super().__init__(noise_std)
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("mask must be boolean or hold only 0 and 1")
            mask = mask.bool()
        if mask.dim() < 1:
            raise ValueError("mask must have the data's event shape (at least one dimension)")
        if not bool(mask.any()):
            raise ValueError("mask observes nothing: at least one entry must be True")
        self.mask = mask
        self._idx: Dict[object, Tensor] = {}

    @property
    def n_observed(self) -> int:
        return int(self.mask.sum())

    def _index(self, device) -> Tensor:
        key = str(device)
        if key not in self._idx:
            self._idx[key] = torch.nonzero(self.mask.reshape(-1)).reshape(-1).to(device)
        return self._idx[key]

    def _check(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != tuple(self.mask.shape):
            raise ValueError(f"x has event shape {tuple(x.shape[1:])}, the mask {tuple(self.mask.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return x.reshape(x.shape[0], -1).index_select(1, self._index(x.device))

    def adjoint(self, y: Tensor) -> Tensor:
        if y.dim() != 2 or y.shape[1] != self.n_observed:
            raise ValueError(f"y must have shape [B, {self.n_observed}], got {tuple(y.shape)}")
        out = y.new_zeros(y.shape[0], self.mask.numel())
        out[:, self._index(y.device)] = y
        return out.reshape((y.shape[0],) + tuple(self.mask.shape))

    def input_shape(self, obs_shape: Sequence[int]) -> Tuple[int, ...]:
        return tuple(self.mask.shape)

    def consistent(self, x: Tensor, y: Tensor) -> Tensor:
        """x with its observed entries set to y (exactly: an assignment, not x + (y - x))."""
        self._check(x)
        out = x.reshape(x.shape[0], -1).clone()
        out[:, self._index(x.device)] = y.to(out.dtype)
        return out.reshape(x.shape)

    def _basis(self, dtype, device):
        return None, torch.ones(self.n_observed, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"Mask(observed={self.n_observed}/{self.mask.numel()}, noise_std={self.noise_std})"


class Matrix(LinearOperator):
    """Any dense linear map ``A [m, D]`` on the flattened data: y = A x.reshape(B, D).

    ``event_shape`` (default ``(D,)``) is x's shape for ``adjoint``/``pinv``.  The thin SVD of A
    (float64, singular values below ``rtol * S_max`` dropped) gives pinv and gram_solve.
    """

    def __init__(self, A: Tensor, noise_std: float = 0.0, event_shape: Optional[Sequence[int]] = None,
                 rtol: float = 1e-10):
        super().__init__(noise_std)
        A = torch.as_tensor(A, dtype=torch.float64).detach().clone()
        if A.dim() != 2 or min(A.shape) < 1:
            raise ValueError(f"A must be a [m, D] matrix, got shape {tuple(A.shape)}")
        if not torch.isfinite(A).all():
            raise ValueError("A must be finite")
        self.A = A
        D = A.shape[1]
        self.event_shape = tuple(event_shape) if event_shape is not None else (D,)
        if math.prod(self.event_shape) != D:
            raise ValueError(f"event_shape {self.event_shape} does not hold D={D} values")
        U, S, _ = torch.linalg.svd(A, full_matrices=False)
        keep = S > rtol * S.max()
        if not bool(keep.any()):
            raise ValueError("A is zero: it observes nothing")
        self._U, self._S = U[:, keep].contiguous(), S[keep].contiguous()
        self._cache: Dict[object, Tuple[Tensor, Tensor, Tensor]] = {}

    def _on(self, dtype, device):
        key = (dtype, str(device))
        if key not in self._cache:
            self._cache[key] = (self.A.to(device=device, dtype=dtype), self._U.to(device=device, dtype=dtype),
                                self._S.to(device=device, dtype=dtype))
        return self._cache[key]

    def forward(self, x: Tensor) -> Tensor:
        if x[0].numel() != self.A.shape[1]:
            raise ValueError(f"x must hold D={self.A.shape[1]} values a sample, got shape {tuple(x.shape)}")
        A = self._on(x.dtype, x.device)[0]
        return x.reshape(x.shape[0], -1) @ A.T

    def adjoint(self, y: Tensor) -> Tensor:
        if y.dim() != 2 or y.shape[1] != self.A.shape[0]:
            raise ValueError(f"y must have shape [B, {self.A.shape[0]}], got {tuple(y.shape)}")
        A = self._on(y.dtype, y.device)[0]
        return (y @ A).reshape((y.shape[0],) + self.event_shape)

    def input_shape(self, obs_shape: Sequence[int]) -> Tuple[int, ...]:
        return self.event_shape

    def _basis(self, dtype, device):
        _, U, S = self._on(dtype, device)
        return U, S

    def __repr__(self) -> str:
        return f"Matrix(m={self.A.shape[0]}, D={self.A.shape[1]}, rank={self._S.numel()}, noise_std={self.noise_std})"


def _check_image(x: Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{what} needs images [B, C, H, W], got shape {tuple(x.shape)}")


class Downsample(LinearOperator):
    """Super-resolution: average pooling over ``factor x factor`` blocks of ``[B, C, H, W]`` images.

    A^T y spreads each low-resolution value over its block divided by factor^2, so
    A A^T = I / factor^2 and A^+ = factor^2 A^T (nearest-neighbour upsampling).
    """

    def __init__(self, factor: int, noise_std: float = 0.0):
        super().__init__(noise_std)
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = int(factor)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, "Downsample")
        f = self.factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"image size {tuple(x.shape[2:])} is not divisible by factor {f}")
        return F.avg_pool2d(x, f)

    def adjoint(self, y: Tensor) -> Tensor:
        _check_image(y, "Downsample.adjoint")
        f = self.factor
        return y.repeat_interleave(f, 2).repeat_interleave(f, 3) / (f * f)

    def input_shape(self, obs_shape: Sequence[int]) -> Tuple[int, ...]:
        c, h, w = obs_shape
        return (c, h * self.factor, w * self.factor)

    def _basis(self, dtype, device):
        # A A^T = I / f^2 on every one of the m low-resolution values; m is only known from y,
        # so S is a scalar that broadcasts
        return None, torch.full((1,), 1.0 / self.factor, dtype=dtype, device=device)

    def __repr__(self) -> str:
        return f"Downsample(factor={self.factor}, noise_std={self.noise_std})"


class Grayscale(LinearOperator):
    """Colorization: y = sum_c w_c x_c per pixel, ``[B, 3, H, W] -> [B, 1, H, W]``.

    ``weights``: ``"mean"`` (w = (1/3, 1/3, 1/3), the channel mean: Song et al.'s gray images,
    whose decoupling matrix has (1, 1, 1)/sqrt(3) as first row), ``"luminance"`` (BT.601:
    0.299, 0.587, 0.114) or three numbers.  A A^T = |w|^2 I, so A^+ y = w y / |w|^2.
    """

    def __init__(self, weights: Union[str, Sequence[float]] = "mean", noise_std: float = 0.0):
        super().__init__(noise_std)
        if isinstance(weights, str):
            if weights == "mean":
                w = (1 / 3, 1 / 3, 1 / 3)
            elif weights == "luminance":
                w = LUMINANCE
            else:
                raise ValueError(f"unknown weights {weights!r}; valid names: ['luminance', 'mean'] or 3 numbers")
        else:
            w = tuple(float(v) for v in weights)
            if len(w) != 3 or not any(w):
                raise ValueError(f"weights must be 3 numbers, not all zero, got {weights!r}")
        self.weights = torch.tensor(w, dtype=torch.float64)

    def _w(self, x: Tensor) -> Tensor:
        return self.weights.to(device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, "Grayscale")
        if x.shape[1] != 3:
            raise ValueError(f"Grayscale needs 3 channels, got {x.shape[1]}")
        return (x * self._w(x)).sum(1, keepdim=True)

    def adjoint(self, y: Tensor) -> Tensor:
        _check_image(y, "Grayscale.adjoint")
        if y.shape[1] != 1:
            raise ValueError(f"gray images have 1 channel, got {y.shape[1]}")
        return y * self._w(y)

    def input_shape(self, obs_shape: Sequence[int]) -> Tuple[int, ...]:
        return (3,) + tuple(obs_shape[1:])

    def _basis(self, dtype, device):
        return None, self.weights.norm().to(dtype=dtype, device=device).reshape(1)

    def __repr__(self) -> str:
        return f"Grayscale(weights={self.weights.tolist()}, noise_std={self.noise_std})"


def as_operator(A, noise_std: Optional[float] = None, event_shape: Optional[Sequence[int]] = None) -> LinearOperator:
    """An operator from an operator or a dense ``[m, D]`` matrix (a :class:`Matrix`)."""
    if isinstance(A, LinearOperator):
        return A
    if torch.is_tensor(A) or isinstance(A, (list, tuple)):
        return Matrix(A, noise_std=0.0 if noise_std is None else noise_std, event_shape=event_shape)
    raise ValueError(f"A must be a LinearOperator or a [m, D] matrix, got {type(A).__name__}")
