"""Training: denoising score matching with AdamW, warm-up, clipping, EMA, checkpoints and evaluation.

The library entry points work without Hydra:

* :func:`train` builds everything from a plain config dict (the same tree Hydra composes from
  ``conf/``) and runs a :class:`Trainer`;
* :class:`Trainer` trains a :class:`~scoresde.ScoreModel` on a :class:`~scoresde.data.DataSet`;
* :func:`load_model` returns the trained score model (EMA weights) from a checkpoint.

Checkpoints are written atomically (a temporary file in the same directory, fsync, then
``os.replace``), so a crash leaves the previous checkpoint whole.  They hold the model, the EMA,
the optimizer, the step, every RNG state the loop draws from (:func:`_rng_state`) and the config; ``resume`` continues
bit-exactly (same weights as an uninterrupted run).  ``train.keep`` keeps the last k checkpoints
and ``train.best_metric`` the best one (:mod:`scoresde.training.keeping`, which also says how
``resume=auto`` falls back past an unreadable ``last.pt``).

Pre-emption (:mod:`scoresde.training.preemption`): SIGTERM, SIGUSR1 and SIGUSR2 (``train.preempt_signals``)
are trapped during the loop; the step in progress finishes, its checkpoint is written and
:class:`~scoresde.training.preemption.TrainingPreempted` is raised (the app exits 124).

No device-to-host transfer per step: :meth:`Trainer.train_step` returns the loss and gradient norm
as device tensors; the loop sums the loss on the device and reads it every ``train.log_every``
steps.  Non-finite values are recorded on the device too (the first step with a non-finite loss
or gradient norm, and those values) and read by :meth:`Trainer.check_finite` at every log step and
before every checkpoint: the steps between a NaN and its detection (at most ``log_every - 1``) run
on, possibly with NaN weights, but nothing is written: the run stops with
:class:`TrainingDiverged` naming the first bad step and the last good checkpoint stays as it was.
(``train.amp=fp16``'s gradient scaler reads its inf check every step: one sync a step there.)

Evaluation (EMA weights, fixed seeds) reports the held-out loss, the NLL of held-out points through
the probability-flow ODE (``sd.log_likelihood``), and, for mixtures with an exact density,

    KL(data || model) = E_data[log p_data - log p_model],

estimated two ways on the same held-out points: ``kl`` = mean(log p_data(x) - log p_model(x))
(paired: the shared Monte Carlo noise cancels) and ``kl_entropy`` = NLL - H(p_data) with the
entropy of :meth:`scoresde.GaussianMixture.entropy` (a low-variance Monte Carlo estimate).

The training bound (``eval.bound``, :meth:`Trainer.heldout_bound`): whatever weighting the model
was trained with, the held-out points are scored with ``losses.dsm_bound`` (likelihood weighting,
sum reduction, importance-sampled t, ``eval.bound_repeats`` draws per point, the model's own
score), whose mean is C - (T - eps) E[loss] <= E log q_eps(x_eps): a lower bound on the model's
log-density of the held-out data *blurred to eps*, x_eps ~ N(alpha_eps x, sigma_eps^2 I) (Song,
Durkan, Murray & Ermon 2021, Thm. 1).  Reported (``metrics.json``, ``eval_log.csv``):

* ``heldout_bound_loss``: that likelihood-weighted loss (comparable across weightings);
* ``heldout_nll_bound`` (+ ``_se``): -(bound + log|det scaler|), nats per sample in data space, an
  upper bound in expectation on -E log p of the blurred held-out data (for mixtures it compares
  with ``nll`` from the ODE, which is a different model's density: neither is ordered);
* images: ``heldout_nll_bound`` is instead in nats of the discrete levels k (as the likelihood
  app's ``nll`` for images), and ``heldout_bpd_bound`` (+ ``_se``) = it / (D ln 2).  Trained with
  ``dequantize=true``: (-bound - D log(2 / L)) / (D ln 2), the uniform-dequantization convention
  of ``sd.bits_per_dim`` (the 2 / L cell's log-determinant, no separate data scaling) applied to
  the dequantized held-out points blurred by sigma_eps (about 1e-3 on VP at eps = 1e-5, against
  a cell of 2 / L): the ODE's dequantized bits/dim of the same points up to that blur.  On the
  plain grid: the Gaussian-decoder bound of ``sd.bits_per_dim(decoder="gaussian")``,
  -(bound + E log P_dec(k | x_eps) + D/2 log(2 pi e sigma_eps^2)) / (D ln 2), a true upper bound
  in expectation on -log2 P(k) / D (the decoder term from one independent x_eps per draw).

Samples (``sd.sample``) go to a PNG and, for mixtures, to the
mode-by-mode W2 of :func:`scoresde.metrics.mode_w2`, reported beside its floor ``mode_w2_floor``
(and ``mode_weight_error_floor``): the mean over 5 sets of as many exact mixture samples, what a
perfect sampler scores at that n.  Every key of ``metrics.json``, with its units: docs/outputs.md.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..atomic import atomic_write_json
from ..checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from ..data import DataSet
from ..device import resolve_device
from ..losses import DSMLoss
from ..plots import save_samples_png
from ..score import ScoreModel
from .keeping import load_resumable, rotate
from .preemption import PreemptionGuard, TrainingPreempted, parse_signals

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

__all__ = ["OptimConfig", "TrainConfig", "EvalConfig", "Trainer", "TrainingDiverged", "EMA", "lr_factor"]

_log = logging.getLogger("scoresde")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; nothing was written after the last good step."""


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then a constant, cosine or linear decay of the learning rate."""

    lr: float = 2e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup: int = 200               # steps of linear warm-up from 0
    schedule: str = "cosine"        # constant | cosine | linear (decay to min_lr_ratio * lr at the end)
    min_lr_ratio: float = 0.0
    grad_clip: Optional[float] = 1.0   # max global gradient norm; null disables clipping


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 512
    ema_decay: float = 0.999        # EMA warms up as min(decay, (1 + step) / (10 + step))
    device: str = "auto"            # auto (CUDA when present) | cpu | cuda | cuda:N
    amp: str = "none"               # none | bf16 | fp16 (fp16 uses a gradient scaler)
    threads: Optional[int] = None   # torch.set_num_threads; null keeps torch's default
    log_every: int = 100            # train_log.csv row; without a terminal also a progress line in the log
    eval_every: int = 0             # periodic evaluation; 0 = only at the end
    ckpt_every: int = 1000          # periodic checkpoint; 0 = only at the end
    resume: Optional[str] = None    # a checkpoint to continue from; "auto": out_dir's newest readable one
    keep: int = 1                   # checkpoints kept: last.pt and the keep - 1 before it (checkpoints/step_*.pt)
    best_metric: Optional[str] = None   # an evaluation metric (e.g. heldout_loss): also keep checkpoints/best.pt
    best_mode: str = "min"          # min | max: the better direction of best_metric
    preempt_signals: str = "SIGTERM,SIGUSR1,SIGUSR2"   # finish the step, checkpoint, exit 124 ("" traps none)
    stop_check_every: int = 10      # under DDP: steps between the ranks' agreement on a pre-emption signal
    progress: bool = True           # tqdm bar (hidden when the output is not a terminal)
    tensorboard: bool = True        # also log to TensorBoard when it is installed


@dataclass
class EvalConfig:
    n_nll: int = 2000               # held-out points for the NLL (0 skips it)
    divergence: str = "auto"
    rtol: float = 1e-5
    atol: float = 1e-5
    eps: float = 1e-5
    batch_size: int = 4096          # chunk size for the held-out loss
    n_samples: int = 2000           # samples for the PNG and sample quality (0 skips them)
    seed: int = 0                   # evaluation randomness (fixed: evaluations compare across steps)
    bound: bool = True              # the DSM training bound on held-out data (heldout_nll_bound, ...)
    bound_repeats: int = 1          # (t, noise) draws per held-out point for the bound


_SCHEDULES = ("constant", "cosine", "linear")
_AMP = ("none", "bf16", "fp16")


def _as_config(cls, value, where: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"unknown {where} option(s) {unknown}; valid options: {sorted(names)}")
    return cls(**value)


def lr_factor(step: int, optim: OptimConfig, total: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based): warm-up, then the decay schedule."""
    warm = min(1.0, (step + 1) / optim.warmup) if optim.warmup > 0 else 1.0
    if optim.schedule == "constant" or total <= optim.warmup:
        return warm
    frac = min(1.0, max(0.0, (step - optim.warmup) / max(1, total - optim.warmup)))
    lo = optim.min_lr_ratio
    if optim.schedule == "cosine":
        decay = lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac))
    else:
        decay = lo + (1 - lo) * (1 - frac)
    return warm * decay


# ---------------------------------------------------------------------------------------------
# EMA
# ---------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ema_p = [p for p in self.model.parameters()]
        cur_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - d)
        for be, bm in zip(self.model.buffers(), model.buffers()):
            be.copy_(bm)

    def state_dict(self):
        return self.model.state_dict()

    def load_state_dict(self, state):
        self.model.load_state_dict(state)


def _rng_state(gen: torch.Generator) -> Dict[str, Any]:
    """The RNG states training draws from: the trainer's generator (data, times, noise) and
    torch's global CPU and CUDA generators (dropout, e.g. the U-Net's).  Python's ``random`` and
    numpy's global generator are not used by training, so they are not saved: restoring them
    would only carry over whatever the interrupted process happened to hold."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "train": gen.get_state(),
    }


def _set_rng_state(state: Dict[str, Any], gen: torch.Generator) -> None:
    # checkpoints of earlier versions also hold "python" and "numpy" states: unused, ignored
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen.set_state(state["train"])


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class _CSVLog:
    def __init__(self, path: Path):
        self.path = path
        self.fields = None

    def write(self, row: Dict[str, Any]) -> None:
        new = not self.path.exists()
        if self.fields is None:
            if not new:
                with open(self.path, newline="") as f:
                    self.fields = next(csv.reader(f), None)
            if self.fields is None:
                self.fields = list(row)
                new = True
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


class Trainer:
    """Trains ``model`` on ``data`` with ``loss`` (see the module docstring).

    Args:
        model: the score model; ``model.spec`` (set by :func:`build_score_model`) is saved so that
            :func:`load_model` can rebuild it.
        data: the data set (model space).
        loss: a :class:`DSMLoss` (or any ``loss(model, x0, generator) -> scalar``; a
            class-conditional model, ``model.num_classes > 0``, is trained with
            ``loss(model, x0, generator, labels=y)`` on ``data.labelled_batch``).
        optim, train, eval: :class:`OptimConfig`, :class:`TrainConfig`, :class:`EvalConfig` or dicts.
        sampler: ``{"name": "ode", **options}`` for ``sd.sample`` in evaluation.
        out_dir: where checkpoints/, metrics.json, samples.png and the CSV logs go.
        config: the full config, saved in checkpoints.
        seed: seeds the training randomness (data, times, noise).
    """

    def __init__(self, model: ScoreModel, data: DataSet, loss=None, optim=None, train=None, eval=None,
                 sampler: Optional[Dict[str, Any]] = None, out_dir: PathLike = ".",
                 config: Optional[Dict[str, Any]] = None, seed: int = 0):
        self.optim_cfg = _as_config(OptimConfig, optim, "optim")
        self.cfg = _as_config(TrainConfig, train, "train")
        self.eval_cfg = _as_config(EvalConfig, eval, "eval")
        if self.optim_cfg.schedule not in _SCHEDULES:
            raise ValueError(f"unknown optim.schedule {self.optim_cfg.schedule!r}; valid names: {list(_SCHEDULES)}")
        if self.cfg.amp not in _AMP:
            raise ValueError(f"unknown train.amp {self.cfg.amp!r}; valid names: {list(_AMP)}")
        if self.cfg.steps < 0 or self.cfg.batch_size <= 0:
            raise ValueError(f"need train.steps >= 0 and train.batch_size > 0, got "
                             f"{self.cfg.steps} and {self.cfg.batch_size}")
        for k in ("keep", "stop_check_every"):
            v = getattr(self.cfg, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"train.{k} must be an integer >= 1, got {v!r}")
        if self.cfg.best_mode not in ("min", "max"):
            raise ValueError(f"unknown train.best_mode {self.cfg.best_mode!r}; valid names: ['max', 'min']")
        self._signals = parse_signals(self.cfg.preempt_signals)
        if self.cfg.threads:
            torch.set_num_threads(int(self.cfg.threads))
        self.device = resolve_device(self.cfg.device)
        self.model = model.to(self.device)
        self.train_model: torch.nn.Module = self.model   # what the loss differentiates (DDP wrapper under torchrun)
        self.data = data.to(self.device)
        k = int(getattr(self.model, "num_classes", 0) or 0)
        if k and k != data.num_classes:
            raise ValueError(f"model.num_classes={k} but data set {data.name!r} has "
                             + (f"{data.num_classes} classes" if data.num_classes else "no labels")
                             + (f"; set model.num_classes={data.num_classes}" if data.num_classes else ""))
        self.loss_fn = loss if loss is not None else DSMLoss()
        self.sampler = dict(sampler or {"name": "ode"})
        self.out_dir = Path(out_dir)
        self.config = config or {}
        self.seed = int(seed)
        self.ckpt_path = self.out_dir / "checkpoints" / "last.pt"
        self.best_path = self.out_dir / "checkpoints" / "best.pt"
        self.best: Optional[Dict[str, Any]] = None     # {"metric", "value", "step"} of best.pt
        self._best_pending = False
        self._ckpt_step: Optional[int] = None          # the step of the last.pt this run wrote or read
        self.ema = EMA(self.model, self.cfg.ema_decay)
        o = self.optim_cfg
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                     weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.amp == "fp16")
        self.gen = torch.Generator(self.device).manual_seed(self.seed)
        self.step = 0
        self.last_good_step: Optional[int] = None
        self._entropy: Optional[Tuple[float, float]] = None
        self._floors: Optional[Tuple[int, float, float]] = None
        self.metrics: Dict[str, Any] = {}
        # on the device, read at log steps: the loss sum of the log window, the first step with a
        # non-finite loss or gradient norm (-1: none) and those two values
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._loss_n = 0
        self._bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self._bad_vals = torch.zeros(2, dtype=torch.float32, device=self.device)
        # image sets built with stream=true: batches from a DataLoader (scoresde.data.stream)
        self._stream = None
        if getattr(self.data, "stream", None) is not None:
            self._stream = self.data.stream.open(self.cfg.batch_size, self.seed, *self._rank_world(), self.device)
        if self.cfg.resume == "auto":
            # the same command continues a killed run (a preempted job) and starts a new one
            found = load_resumable(self.ckpt_path, self.cfg.keep)
            if found is not None:
                self.load(*found)
        elif self.cfg.resume:
            self.load(self.cfg.resume)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(), "grad_scaler": self.scaler.state_dict(),
            "rng": _rng_state(self.gen), "config": self.config, "spec": self.model.spec, "best": self.best,
            "data_stream": self._stream.state_dict() if self._stream is not None else None,
            "data": {"name": self.data.name, "event_shape": list(self.data.event_shape),
                     "scaler": {"shift": self.data.scaler.shift, "scale": self.data.scaler.scale}},
        }

    def save(self, path: Optional[PathLike] = None) -> Path:
        """Write the checkpoint (default: the rolling ``last.pt``) after :meth:`check_finite`."""
        if self.model.spec is None:
            raise ValueError("model.spec is not set: build the model with build_score_model so that "
                             "the checkpoint can rebuild it")
        self.check_finite()
        out = self._write(self.state_dict(), path)
        self.last_good_step = self.step
        return out

    def _write(self, state: Dict[str, Any], path: Optional[PathLike]) -> Path:
        if path is not None and Path(path) != self.ckpt_path:
            return save_checkpoint(state, path)
        # the rolling last.pt: keep the previous one as step_*.pt (train.keep > 1)
        rotate(self.ckpt_path, self._ckpt_step if self._ckpt_step != self.step else None, self.cfg.keep)
        out = save_checkpoint(state, self.ckpt_path)
        self._ckpt_step = self.step
        return out

    def load(self, path: PathLike, state: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Restore everything from a checkpoint (to continue bit-exactly); returns its state."""
        state = load_checkpoint(path) if state is None else state
        if state["spec"] != self.model.spec:
            raise ValueError(f"checkpoint {path} holds a different model: {state['spec']} vs {self.model.spec}")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["grad_scaler"])
        _set_rng_state(state["rng"], self.gen)
        self.step = int(state["step"])
        self.last_good_step = self.step
        self.best = state.get("best")
        if self._stream is not None and state.get("data_stream") is not None:
            self._stream.load_state_dict(state["data_stream"])
        # the run's own last.pt may be renamed to step_*.pt on the next save; any other file is not ours
        self._ckpt_step = self.step if Path(path).resolve() == self.ckpt_path.resolve() else None
        return state

    # -- one step ------------------------------------------------------------------------------
    def _diverged(self, what: str, value: float, step: int) -> TrainingDiverged:
        kept = (f"the last good checkpoint (step {self.last_good_step}) is kept at {self.ckpt_path}"
                if self.last_good_step is not None else "no checkpoint was written")
        return TrainingDiverged(f"{what} is {value} at step {step} (noticed at step {self.step}: checked every "
                                f"train.log_every steps and before each checkpoint); training stopped and {kept}. "
                                f"Try a lower optim.lr or optim.grad_clip.")

    def train_step(self) -> Dict[str, Any]:
        """One optimizer step, with no device-to-host transfer (the module docstring): returns the
        loss and the gradient norm as device tensors and records a non-finite one on the device
        for :meth:`check_finite`."""
        for group in self.opt.param_groups:
            group["lr"] = self.optim_cfg.lr * lr_factor(self.step, self.optim_cfg, self.cfg.steps)
        amp = self.cfg.amp != "none"
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=amp):
            loss = self.batch_loss()
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        clip = self.optim_cfg.grad_clip
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip else float("inf")).detach()
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss)
        if not self.scaler.is_enabled():   # with fp16's scaler an inf gradient only skips the step
            bad = bad | ~torch.isfinite(gnorm)
        first = bad & (self._bad_step < 0)
        self._bad_step = torch.where(first, self.step, self._bad_step)
        self._bad_vals = torch.where(first, torch.stack([loss, gnorm.float()]), self._bad_vals)
        self._loss_sum += loss
        self._loss_n += 1
        self.scaler.step(self.opt)
        self.scaler.update()
        self.ema.update(self.model, self.step)
        self.step += 1
        return {"loss": loss, "grad_norm": gnorm, "lr": self.opt.param_groups[0]["lr"]}

    def check_finite(self) -> None:
        """Raise :class:`TrainingDiverged` if a step so far had a non-finite loss or gradient norm
        (one device-to-host read; under DDP one reduction over the ranks)."""
        step, vals = self._reduce_nonfinite(self._bad_step, self._bad_vals)
        info = torch.cat([step.double().reshape(1), vals.double().cpu()]).tolist()
        if info[0] >= 0:
            what, value = ("the loss", info[1]) if not math.isfinite(info[1]) else ("the gradient norm", info[2])
            raise self._diverged(what, value, int(info[0]))

    def _take_window(self, grad_norm: Tensor) -> Tuple[float, float]:
        """The mean loss since the last call (over ranks under DDP) and ``grad_norm``: one read."""
        mean = self._reduce_mean(self._loss_sum / max(self._loss_n, 1))
        loss, gn = torch.stack([mean, grad_norm.double()]).tolist()
        self._loss_sum.zero_()
        self._loss_n = 0
        return loss, gn

    @property
    def conditional(self) -> bool:
        """Whether the model is class-conditional (then batches carry the data set's labels)."""
        return bool(getattr(self.model, "num_classes", 0))

    def batch_loss(self) -> Tensor:
        """The loss of one training batch.  An unconditional model reads ``data.batch`` (the
        stream of earlier versions, so old runs resume bit-exactly); a class-conditional one reads
        ``data.labelled_batch`` (the same draws) and passes the labels to the loss, which drops
        them to the null label with probability ``loss.p_uncond``.  A streamed set (``stream=true``)
        reads the next batch of its DataLoader instead (:mod:`scoresde.data.stream`)."""
        if self._stream is not None:
            x0, y = self._stream.next(self.gen)
            if not self.conditional:
                return self.loss_fn(self.train_model, x0, self.gen)
            return self.loss_fn(self.train_model, x0, self.gen, labels=y)
        if not self.conditional:
            x0 = self.data.batch(self.cfg.batch_size, self.gen, device=self.device)
            return self.loss_fn(self.train_model, x0, self.gen)
        x0, y = self.data.labelled_batch(self.cfg.batch_size, self.gen, device=self.device)
        return self.loss_fn(self.train_model, x0, self.gen, labels=y)

    # -- hooks for distributed training (scoresde.training.distributed.DistributedTrainer) --------------
    is_main = True  # this process writes logs, checkpoints, metrics and samples

    def _rank_world(self) -> Tuple[int, int]:
        """This process's rank and the number of ranks (the data stream's shard)."""
        return 0, 1

    def _reduce_mean(self, value: Tensor) -> Tensor:
        """A logged value (the mean over ranks under DDP)."""
        return value

    def _reduce_nonfinite(self, step: Tensor, values: Tensor) -> Tuple[Tensor, Tensor]:
        """The first non-finite step (the earliest over ranks under DDP) and its values."""
        return step, values

    def _stop_requested(self, guard: PreemptionGuard) -> int:
        """The pre-emption signal to stop at this step for (0: go on); under DDP agreed by all ranks."""
        return guard.signum or 0

    def _preempt(self, signum: int, guard: PreemptionGuard) -> TrainingPreempted:
        """Checkpoint this step, leave the requeue marker; the exception to raise."""
        path = self.save()
        if self.is_main:
            marker = {"step": self.step, "signal": signal_name(signum), "checkpoint": str(path)}
            atomic_write_json(self.out_dir / "preempted.json", marker)
        return TrainingPreempted(self.step, signum, str(path), guard.previous.get(signum))

    def _save_best(self) -> None:
        if self._best_pending:
            self._best_pending = False
            self.save(self.best_path)

    def _note_best(self, out: Dict[str, Any]) -> None:
        """After an evaluation: is ``out[train.best_metric]`` the best so far? (then best.pt is due)"""
        name = self.cfg.best_metric
        if not name:
            return
        value = out.get(name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            _log.warning("train.best_metric=%r is not a finite number in this evaluation (%s): best.pt not "
                        "updated", name, sorted(k for k, v in out.items() if isinstance(v, (int, float))))
            return
        better = (self.best is None or (value < self.best["value"] if self.cfg.best_mode == "min"
                                        else value > self.best["value"]))
        if better:
            self.best = {"metric": name, "value": float(value), "step": self.step}
            self._best_pending = True

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train to ``train.steps`` (from the resumed step), evaluate, write metrics.json."""
        from tqdm.auto import tqdm

        self.out_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        log = _CSVLog(self.out_dir / "train_log.csv")
        tb = self._tensorboard()
        t_start = time.perf_counter()
        self._loss_sum.zero_()
        self._loss_n = 0
        bar = tqdm(total=cfg.steps, initial=self.step, disable=None if cfg.progress else True,
                   desc="train", dynamic_ncols=True)
        # no bar (output not a terminal: nohup, SLURM; or progress=false): a progress line through
        # logging every log_every steps instead, so train.log shows the run advancing
        progress_lines = bool(bar.disable) and self.is_main
        last_line = (time.perf_counter(), self.step)
        try:
            # the signals are trapped for the loop only: afterwards the final checkpoint is written
            with PreemptionGuard(self._signals) as guard:
                while self.step < cfg.steps:
                    stats = self.train_step()
                    bar.update(1)
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        self.check_finite()
                        loss, gnorm = self._take_window(stats["grad_norm"])
                        row = {"step": self.step, "time_s": round(time.perf_counter() - t_start, 3),
                               "loss": loss, "lr": stats["lr"], "grad_norm": gnorm}
                        self.metrics["train_loss"] = row["loss"]
                        if self.is_main:
                            log.write(row)
                        bar.set_postfix(loss=f"{row['loss']:.4f}")
                        if progress_lines:
                            last_line = _log_progress(self.step, cfg.steps, row, last_line)
                        if tb is not None:
                            for k in ("loss", "lr", "grad_norm"):
                                tb.add_scalar(f"train/{k}", row[k], self.step)
                    signum = self._stop_requested(guard)
                    if signum:
                        raise self._preempt(signum, guard)
                    if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:
                        self.save()
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                        self.evaluate(final=False, tb=tb)
                        self._save_best()
        except BaseException:   # pre-empted, diverged, interrupted: flush what TensorBoard has
            if tb is not None:
                tb.close()
            raise
        finally:
            bar.close()
        train_time = time.perf_counter() - t_start
        self.save()
        t_eval = time.perf_counter()
        self.evaluate(final=True, tb=tb)
        self._save_best()
        self.metrics.update(step=self.step, train_time_s=round(train_time, 3),
                            eval_time_s=round(time.perf_counter() - t_eval, 3))
        if self.is_main:
            atomic_write_json(self.out_dir / "metrics.json", self.metrics, indent=2)
            (self.out_dir / "preempted.json").unlink(missing_ok=True)   # the run is complete
        if tb is not None:
            tb.close()
        return self.metrics

    def _tensorboard(self):
        if not self.cfg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def heldout_loss(self) -> float:
        """The loss of the EMA model on the held-out set, with fixed times and noise."""
        g = torch.Generator(self.device).manual_seed(self.eval_cfg.seed)
        test = self.data.test
        total = 0.0
        for i in range(0, test.shape[0], self.eval_cfg.batch_size):
            xb = test[i:i + self.eval_cfg.batch_size]
            kw = {"labels": self.data.test_labels[i:i + self.eval_cfg.batch_size]} if self.conditional else {}
            total += float(self.loss_fn(self.ema.model, xb, g, **kw)) * xb.shape[0]
        return total / test.shape[0]

    @torch.no_grad()
    def heldout_bound(self) -> Dict[str, float]:
        """The DSM training bound of the EMA model on the held-out set (the module docstring).

        Randomness: ``torch.Generator(device).manual_seed(eval.seed)``; per repeat and per batch of
        ``eval.batch_size`` points, ``dsm_bound`` draws the times then the noise (then, for images
        on the plain grid, the decoder's x_eps).
        """
        from ..likelihood import gaussian_decoder_logp
        from ..data.images import from_model_range
        from ..losses import dsm_bound

        ec = self.eval_cfg
        if isinstance(ec.bound_repeats, bool) or not isinstance(ec.bound_repeats, int) or ec.bound_repeats < 1:
            raise ValueError(f"eval.bound_repeats must be an integer >= 1, got {ec.bound_repeats!r}")
        model, test = self.ema.model, self.data.test
        sde = model.sde
        g = torch.Generator(self.device).manual_seed(ec.seed)
        D = math.prod(self.data.event_shape)
        levels = self.data.info.get("levels") if test.dim() == 4 else None
        dequantized = bool(self.data.info.get("dequantize", False))
        bounds, losses = [], []
        for _ in range(ec.bound_repeats):
            b_r, l_r = [], []
            for i in range(0, test.shape[0], ec.batch_size):
                xb = test[i:i + ec.batch_size]
                b, loss = dsm_bound(model, sde, xb, importance_sampling=True, eps=ec.eps, generator=g)
                b = b.to(torch.float64)
                if levels is not None and not dequantized:
                    # log P(k) >= E[log P_dec(k | x_eps) + log q_eps(x_eps)] + D/2 log(2 pi e sigma_eps^2)
                    e = torch.tensor([ec.eps], dtype=torch.float64)
                    al, sg = float(sde.mean_coef(e)), float(sde.std(e))
                    z = torch.randn(xb.shape, generator=g, dtype=xb.dtype, device=xb.device)
                    k = from_model_range(xb, int(levels))
                    b = b + gaussian_decoder_logp(k, al * xb + sg * z, sde, ec.eps, int(levels)) \
                        + 0.5 * D * math.log(2 * math.pi * math.e * sg ** 2)
                b_r.append(b)
                l_r.append(loss.to(torch.float64))
            bounds.append(torch.cat(b_r))
            losses.append(torch.cat(l_r))
        bound = torch.stack(bounds).mean(0)             # [N]: per point, averaged over the repeats
        loss = torch.stack(losses).mean(0)
        se = float(bound.std() / math.sqrt(bound.numel())) if bound.numel() > 1 else float("nan")
        out = {"heldout_bound_loss": float(loss.mean())}
        if levels is None:
            out["heldout_nll_bound"] = float(-(bound.mean() + self.data.scaler.log_det(self.data.event_shape)))
            out["heldout_nll_bound_se"] = se
        else:
            cell = D * math.log(2.0 / int(levels)) if dequantized else 0.0
            out["heldout_nll_bound"] = float(-(bound.mean() + cell))   # nats of the levels k
            out["heldout_nll_bound_se"] = se
            out["heldout_bpd_bound"] = out["heldout_nll_bound"] / (D * math.log(2.0))
            out["heldout_bpd_bound_se"] = se / (D * math.log(2.0))
        return out

    def evaluate(self, final: bool = True, tb=None) -> Dict[str, Any]:
        """Held-out loss, training bound, NLL/KL and samples of the EMA model; appended to eval_log.csv."""
        import scoresde as sd

        ec = self.eval_cfg
        model = self.ema.model
        sde = model.sde
        out: Dict[str, Any] = {"step": self.step, "heldout_loss": self.heldout_loss()}
        if ec.bound:
            out.update(self.heldout_bound())
        mix = self.data.mixture
        if ec.n_nll > 0:
            x = self.data.test[:ec.n_nll]
            t0 = time.perf_counter()
            ll = sd.log_likelihood(model, sde, x, divergence=ec.divergence, rtol=ec.rtol, atol=ec.atol, eps=ec.eps)
            logp = ll.logp.double()
            # densities in data space: log p_data(x) = log p_model(x_model) + log|det d x_model / d x|
            log_det = self.data.scaler.log_det(self.data.event_shape)
            out["nll"] = float(-(logp + log_det).mean())
            out["nll_se"] = float(logp.std() / math.sqrt(logp.numel()))
            out["nll_nfe"] = int(ll.nfe) if hasattr(ll, "nfe") else None
            out["nll_time_s"] = round(time.perf_counter() - t0, 3)
            if mix is not None:
                # the mixture is the model-space density; KL is invariant under the affine scaler
                lp_data = mix.log_prob(x.double())
                diff = lp_data - logp
                out["kl"] = float(diff.mean())
                out["kl_se"] = float(diff.std() / math.sqrt(diff.numel()))
                out["entropy"], out["entropy_se"] = self._mixture_entropy()
                out["kl_entropy"] = float(-logp.mean()) - out["entropy"]
        if ec.n_samples > 0:
            opts = {k: v for k, v in self.sampler.items() if k != "name"}
            g = torch.Generator(self.device).manual_seed(ec.seed)
            t0 = time.perf_counter()
            res = sd.sample(model, sde, (ec.n_samples,) + tuple(self.data.event_shape),
                            sampler=self.sampler.get("name", "ode"), generator=g, **opts)
            out["sample_nfe"] = int(res.nfe)
            out["sample_time_s"] = round(time.perf_counter() - t0, 3)
            xs = res.x
            if mix is not None:
                # each distance beside its floor: what exact samples of the mixture score at this n
                stats = sd.metrics.mode_w2(xs, mix)
                w2_floor, weight_floor = self._exact_sample_floors(xs.shape[0])
                out["mode_w2"] = stats.w2
                out["mode_w2_floor"] = w2_floor
                out["mode_weight_error"] = stats.weight_error
                out["mode_weight_error_floor"] = weight_floor
            xd, ref = self.data.scaler.to_data(xs), self.data.scaler.to_data(self.data.test)
            if xd.dim() == 4:  # images: the scaler maps model space back to [0, 1] pixels
                ref = None
            name = "samples.png" if final else f"samples/step_{self.step:07d}.png"
            save_samples_png(xd, self.out_dir / name, reference=ref, title=f"{self.data.name}, step {self.step}")
        _CSVLog(self.out_dir / "eval_log.csv").write(out)
        self._note_best(out)
        if tb is not None:
            for k, v in out.items():
                if k != "step" and isinstance(v, (int, float)):
                    tb.add_scalar(f"eval/{k}", v, self.step)
        self.metrics.update(out)
        return out

    def _exact_sample_floors(self, n: int, repeats: int = 5) -> Tuple[float, float]:
        """The mean ``mode_w2`` and ``mode_weight_error`` of ``repeats`` sets of ``n`` exact mixture
        samples (their floors at this n: estimation noise, not sampler error), once per run;
        the W2 one equals ``sd.metrics.exact_floor(mixture, n, repeats, seed=eval.seed)``."""
        from ..metrics import mode_w2

        if self._floors is None or self._floors[0] != n:
            mix, g = self.data.mixture, torch.Generator().manual_seed(self.eval_cfg.seed)
            stats = [mode_w2(mix.sample(n, generator=g, dtype=torch.float64), mix) for _ in range(repeats)]
            self._floors = (n, sum(st.w2 for st in stats) / repeats, sum(st.weight_error for st in stats) / repeats)
        return self._floors[1], self._floors[2]

    def _mixture_entropy(self) -> Tuple[float, float]:
        """H(p_data) and its standard error, once per run (the evaluation seed fixes its draws)."""
        if self._entropy is None:
            g = torch.Generator().manual_seed(self.eval_cfg.seed)
            self._entropy = self.data.mixture.entropy(n=100_000, generator=g)
        return self._entropy


def _log_progress(step: int, total: int, row: Dict[str, Any], last: Tuple[float, int]) -> Tuple[float, int]:
    """Log ``step N/T (p%) loss .. lr .. S steps/s ETA ..``; the rate is over the steps since the
    previous line ``last = (time, step)``.  Returns this line's ``(time, step)``."""
    now = time.perf_counter()
    rate = (step - last[1]) / max(now - last[0], 1e-9)
    eta = (total - step) / rate if rate > 0 else math.inf
    eta_s = "?" if not math.isfinite(eta) else (f"{int(eta // 3600)}h{int(eta % 3600 // 60):02d}m" if eta >= 3600
                                               else f"{int(eta // 60)}m{int(eta % 60):02d}s")
    _log.info("step %d/%d (%d%%)  loss %.4f  lr %.3g  %.1f steps/s  ETA %s", step, total,
              int(100 * step / max(total, 1)), row["loss"], row["lr"], rate, eta_s)
    return now, step
