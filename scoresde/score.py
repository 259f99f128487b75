"""ScoreModel: a network and an SDE joined into a score function ``score_fn(x, t)``.

Parameterizations (Song et al. 2021, ``mutils.get_score_fn``):

* ``"noise"``: the network predicts the standardized noise eps of x_t = alpha x0 + sigma eps, and
  the score is ``-net(x, t) / sigma(t)`` (exact for the Gaussian transition: grad log p(x_t | x0)
  = -eps / sigma).  The denoising loss with sigma^2 weighting is then ||net - eps||^2.
* ``"score"``: the network output is the score itself.

The network sees the time through ``time_input``: ``"t"`` (the time itself, default),
``"log_sigma"`` (log sigma(t)), ``"sigma"`` (sigma(t), what Song et al.'s NCSN++ for VE is fed:
it embeds log sigma itself and divides its output by sigma) or ``"log_snr"``.

:class:`CountingScore` wraps any score function and counts its calls: the one NFE counter of the
samplers and the likelihood.

Class-conditional models.  When the network has ``num_classes`` K > 0 (``build_model(...,
num_classes=K)``), ``model(x, t, y)`` is the score of p_t(x | y) for labels ``y [B]`` in [0, K),
and the null label K (or ``y=None``) gives the unconditional score, trained by label dropout
(``dsm_loss(..., labels=y, p_uncond=0.1)``; Ho & Salimans 2022).  ``model(x, t)`` keeps the
plain score_fn interface, so a conditional model samples unconditionally as it is.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from .sde import SDE, ScoreFn, as_time, expand_to, build_sde, time_dtype

Tensor = torch.Tensor

__all__ = ["ScoreModel", "build_score_model", "CountingScore", "PARAMETERIZATIONS", "TIME_INPUTS", "NONFINITE",
           "NonFiniteError", "MAX_ROWS", "RowChunkedScore"]

PARAMETERIZATIONS = ("noise", "score")
TIME_INPUTS = ("t", "log_sigma", "log_snr", "sigma")


class ScoreModel(nn.Module):
    """``score_fn(x, t) -> grad_x log p_t(x)`` from a network ``net(x, c) -> Tensor`` and an SDE.

    It is an ``nn.Module`` (so it trains, moves and saves like one) and a score function: pass it
    to every sampler and to ``log_likelihood`` as it is.  ``.sde`` is its SDE.
    """

    def __init__(self, net: nn.Module, sde: SDE, parameterization: str = "noise", time_input: str = "t"):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; valid names: {list(PARAMETERIZATIONS)}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; valid names: {list(TIME_INPUTS)}")
        if not isinstance(sde, SDE):
            raise ValueError(f"sde must be an SDE instance, got {type(sde).__name__}")
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.time_input = time_input
        self.spec: Optional[Dict[str, Any]] = None   # set by build_score_model, saved in checkpoints

    def conditioning(self, t: Tensor) -> Tensor:
        """What the network is given as its time input."""
        if self.time_input == "t":
            return t
        if self.time_input == "log_sigma":
            return torch.log(self.sde.std(t))
        if self.time_input == "sigma":
            return self.sde.std(t)
        return self.sde.log_snr(t)

    @property
    def num_classes(self) -> int:
        """K for a class-conditional network, 0 for an unconditional one."""
        return int(getattr(self.net, "num_classes", 0) or 0)

    @property
    def null_label(self) -> int:
        """The label of the unconditional score (= ``num_classes``) of a conditional model."""
        if not self.num_classes:
            raise ValueError("an unconditional model has no null label (num_classes=0)")
        return self.num_classes

    @property
    def data_shape(self) -> Optional[tuple]:
        """The shape of one sample, from the spec a loaded or built model carries (else None), so
        ``sd.sample(model, shape=n)`` takes a batch size alone."""
        shp = ((self.spec or {}).get("model") or {}).get("data_shape")
        return tuple(int(s) for s in shp) if shp is not None else None

    def net_dtype(self) -> Optional[torch.dtype]:
        """The dtype of the network's first floating parameter (None without one)."""
        for p in self.net.parameters():
            if p.is_floating_point():
                return p.dtype
        return None

    def forward(self, x: Tensor, t, y: Optional[Tensor] = None) -> Tensor:
        """The score at ``(x, t)``, in x's dtype.

        Mixed precision: the network gets x cast to its own dtype (a bf16 network takes float32
        states), its time conditioning in float32 or wider (the network's embedding decides what
        precision it computes in), and its output is cast back to x's dtype before the division by
        sigma(t), which stays in float32 or wider.  ``torch.autocast`` around a call works too
        (the network's matmuls then run in the autocast dtype).
        """
        t = as_time(t, x)
        nd = self.net_dtype()
        xin = x if nd is None or nd == x.dtype else x.to(nd)
        if self.num_classes:
            out = self.net(xin, self.conditioning(t), y)
        elif y is not None:
            raise ValueError("labels given to an unconditional ScoreModel (its network has num_classes=0)")
        else:
            out = self.net(xin, self.conditioning(t))
        if out.dtype != x.dtype:
            out = out.to(x.dtype)
        if self.parameterization == "noise":
            std = expand_to(self.sde.std(t), x)
            return -out / (std if std.dtype == x.dtype else std.to(x.dtype))
        return out

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, parameterization={self.parameterization!r}, time_input={self.time_input!r}"


def build_score_model(spec: Dict[str, Any], num_classes: Optional[int] = None) -> ScoreModel:
    """A :class:`ScoreModel` from a plain spec (the form checkpoints store)::

        {"sde": {"name": "vp", ...kwargs}, "model": {"name": "mlp", "data_shape": [2], ...},
         "parameterization": "noise", "time_input": "t"}

    A class-conditional model has ``"num_classes": K`` in ``spec["model"]`` (saved there, so
    ``load_model`` restores it); ``num_classes`` here sets it (it must agree with the spec's
    if both are given).  0 or None is unconditional.
    """
    from .nn import build_model

    for key in ("sde", "model"):
        if key not in spec or "name" not in spec[key]:
            raise ValueError(f"model spec needs {key!r} with a 'name'; got {spec!r}")
    sde_kw = {k: v for k, v in spec["sde"].items() if k != "name"}
    net_kw = {k: v for k, v in spec["model"].items() if k != "name"}
    if num_classes is not None:
        if net_kw.get("num_classes") not in (None, num_classes):
            raise ValueError(f"num_classes={num_classes} disagrees with the spec's model.num_classes="
                             f"{net_kw['num_classes']}")
        net_kw["num_classes"] = num_classes
    sde = build_sde(spec["sde"]["name"], **sde_kw)
    net = build_model(spec["model"]["name"], **net_kw)
    # absent keys take ScoreModel's defaults (stated there only)
    model = ScoreModel(net, sde, **{k: spec[k] for k in ("parameterization", "time_input") if k in spec})
    model_spec = dict(spec["model"])
    if num_classes is not None:
        model_spec["num_classes"] = num_classes
    model.spec = {"sde": dict(spec["sde"]), "model": model_spec,
                  "parameterization": model.parameterization, "time_input": model.time_input}
    return model


MAX_ROWS = 1024
"""The default bound on the rows one score call sees in ``elbo``, ``log_likelihood``,
``bits_per_dim`` and ``sample_posterior`` (``max_rows=``): they split their work so that no call
exceeds it (an ELBO over 1,000 points with n_t = 1,000 and Stein pairs is 2,000,000 rows, 24.6 GB
of input alone at 3x32x32).  1,024 rows of CIFAR-10 are 12.6 MB of input; what the network's
activations need on top depends on the network: lower it for large networks."""


def check_max_rows(max_rows) -> int:
    """``max_rows`` (None: :data:`MAX_ROWS`) as a positive int, or ValueError/TypeError."""
    if max_rows is None:
        return MAX_ROWS
    if isinstance(max_rows, bool) or not isinstance(max_rows, int):
        raise TypeError(f"max_rows must be a positive integer or None, got {max_rows!r}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be a positive integer or None, got {max_rows!r}")
    return max_rows


class RowChunkedScore:
    """``score_fn`` called on at most ``max_rows`` rows at a time: larger batches are split and
    the outputs concatenated (autograd flows through).  Attributes (``.sde``, ``.data_shape``,
    ...) are those of the wrapped score."""

    def __init__(self, score_fn: ScoreFn, max_rows: int):
        self.score_fn, self.max_rows = score_fn, check_max_rows(max_rows)

    def __getattr__(self, name):
        if name in ("score_fn", "max_rows"):
            raise AttributeError(name)
        return getattr(self.score_fn, name)

    def __call__(self, x: Tensor, t) -> Tensor:
        n = x.shape[0]
        if n <= self.max_rows:
            return self.score_fn(x, t)
        t = as_time(t, x)
        return torch.cat([self.score_fn(x[i:i + self.max_rows], t[i:i + self.max_rows])
                          for i in range(0, n, self.max_rows)])


NONFINITE = ("raise", "count")
"""What the samplers, ``sample_posterior``, ``log_likelihood`` and ``elbo`` do on NaN/Inf
(``nonfinite=``): raise :class:`NonFiniteError` naming the method, the evaluation and t, or keep
going and report the number of non-finite samples in the result (``.nonfinite``)."""


class NonFiniteError(FloatingPointError):
    """A NaN or Inf in a sampler's or a likelihood's state or score (``nonfinite="raise"``)."""


def check_nonfinite_mode(nonfinite: str) -> str:
    if nonfinite not in NONFINITE:
        raise ValueError(f"unknown nonfinite {nonfinite!r}; valid: {list(NONFINITE)}")
    return nonfinite


class CountingScore:
    """Wraps ``score_fn``: counts its calls, broadcasts ``t`` to ``[B]`` (float32 or wider, see
    :func:`~scoresde.sde.time_dtype`), ticks the bar, and checks that the score has x's shape (the
    samplers' and the likelihood's one counter).

    With ``check_finite=True`` it also keeps, per call, a device flag "x and the score are finite"
    (two reductions, no host sync) and the call's time; :meth:`first_nonfinite` reads them once,
    at the end of a run, so a loop of fixed steps makes no device-to-host transfer per step.
    """

    def __init__(self, score_fn: ScoreFn, bar=None, check_finite: bool = False):
        self.score_fn = score_fn
        self.calls = 0
        self.bar = bar
        self.check_finite = check_finite
        self._flags: list = []
        self._times: list = []

    def __call__(self, x: Tensor, t) -> Tensor:
        self.calls += 1
        if self.bar is not None:
            self.bar.update(1)
        if not (torch.is_tensor(t) and t.dim() == 1 and t.shape[0] == x.shape[0] and t.dtype == time_dtype(x.dtype)
                and t.device == x.device):
            t = as_time(t, x)
        s = self.score_fn(x, t)
        if s.shape != x.shape:
            raise ValueError(f"score_fn returned shape {tuple(s.shape)} for x of shape {tuple(x.shape)}")
        if self.check_finite:
            self._flags.append(torch.isfinite(x.detach()).all() & torch.isfinite(s.detach()).all())
            self._times.append(t.detach()[:1])
        return s

    def first_nonfinite(self) -> Optional[tuple]:
        """``(k, t)``: the first evaluation (1-based) whose input or output held a NaN/Inf and its
        time, or None; one host sync."""
        if not self._flags:
            return None
        ok = torch.stack(self._flags)
        k = int(torch.where(ok.all(), -1, torch.argmin(ok.to(torch.uint8))))
        if k < 0:
            return None
        return k + 1, float(self._times[k][0])


def reraise_nonfinite(method: str, counter: Optional["CountingScore"], err: BaseException) -> None:
    """Called on a solver's exception (an adaptive solver's step-size underflow, say): if the
    counter saw a NaN/Inf, raise :class:`NonFiniteError` naming it (from ``err``); else return."""
    first = counter.first_nonfinite() if counter is not None else None
    if first is None:
        return
    k, t = first
    raise NonFiniteError(f"{method}: non-finite value (NaN/Inf) in the state or the score at score evaluation {k} "
                         f"of {counter.calls} (t = {t:.6g}); the solver stopped ({type(err).__name__}: {err})") from err


def nonfinite_rows(x: Tensor) -> Tensor:
    """A ``[B]`` bool tensor: which rows of ``x`` hold a NaN or Inf."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device)
    return ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)


def finish_nonfinite(method: str, counter: Optional["CountingScore"], out: Tensor, mode: str,
                     what: str = "samples") -> int:
    """The end-of-run check: the number of rows of ``out`` with a NaN/Inf (``mode="count"``), or
    :class:`NonFiniteError` naming ``method``, the first bad evaluation and its t (``"raise"``).
    One or two host syncs in all, whatever the number of steps."""
    bad = int(nonfinite_rows(out).sum())
    if mode == "count":
        return bad
    first = counter.first_nonfinite() if counter is not None else None
    if first is not None:
        k, t = first
        raise NonFiniteError(
            f"{method}: non-finite value (NaN/Inf) in the state or the score at score evaluation {k} of "
            f"{counter.calls} (t = {t:.6g}); {bad} of {out.shape[0]} {what} are non-finite. "
            "Pass nonfinite='count' to keep going and count them.")
    if bad:
        raise NonFiniteError(f"{method}: {bad} of {out.shape[0]} {what} are non-finite (NaN/Inf) at the end "
                             "of the run (after the last score evaluation). Pass nonfinite='count' to keep "
                             "going and count them.")
    return 0
