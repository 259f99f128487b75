"""Training: denoising score matching with AdamW, warm-up, clipping, EMA, checkpoints and evaluation.

The library entry points work without Hydra:

* :func:`train` builds everything from a plain config dict (the same tree Hydra composes from
  ``conf/``) and runs a :class:`Trainer`;
* :class:`Trainer` trains a :class:`~scoresde.ScoreModel` on a :class:`~scoresde.data.DataSet`;
* :func:`load_model` returns the trained score model (EMA weights) from a checkpoint.

Checkpoints are written atomically (a temporary file in the same directory, fsync, then
``os.replace``), so a crash leaves the previous checkpoint whole.  They hold the model, the EMA,
the optimizer, the step, every RNG state the loop draws from (:func:`_rng_state`) and the config; ``resume`` continues
bit-exactly (same weights as an uninterrupted run).  A non-finite loss or gradient stops the run
with :class:`TrainingDiverged` before anything is written.

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
mode-by-mode W2 of :func:`scoresde.metrics.mode_w2`.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from ..data import DataSet
from ..device import resolve_device
from ..losses import DSMLoss
from ..plots import save_samples_png
from ..score import ScoreModel

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

__all__ = ["OptimConfig", "TrainConfig", "EvalConfig", "Trainer", "TrainingDiverged", "EMA", "lr_factor"]



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
    log_every: int = 100
    eval_every: int = 0             # periodic evaluation; 0 = only at the end
    ckpt_every: int = 1000          # periodic checkpoint; 0 = only at the end
    resume: Optional[str] = None    # a checkpoint to continue from; "auto": out_dir's last.pt if present
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
        self.ema = EMA(self.model, self.cfg.ema_decay)
        o = self.optim_cfg
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                     weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.amp == "fp16")
        self.gen = torch.Generator(self.device).manual_seed(self.seed)
        self.step = 0
        self.last_good_step: Optional[int] = None
        self._entropy: Optional[Tuple[float, float]] = None
        self.metrics: Dict[str, Any] = {}
        if self.cfg.resume == "auto":
            # the same command continues a killed run (a preempted job) and starts a new one
            if self.ckpt_path.is_file():
                self.load(self.ckpt_path)
        elif self.cfg.resume:
            self.load(self.cfg.resume)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(), "grad_scaler": self.scaler.state_dict(),
            "rng": _rng_state(self.gen), "config": self.config, "spec": self.model.spec,
            "data": {"name": self.data.name, "event_shape": list(self.data.event_shape),
                     "scaler": {"shift": self.data.scaler.shift, "scale": self.data.scaler.scale}},
        }

    def save(self, path: Optional[PathLike] = None) -> Path:
        if self.model.spec is None:
            raise ValueError("model.spec is not set: build the model with build_score_model so that "
                             "the checkpoint can rebuild it")
        out = save_checkpoint(self.state_dict(), path or self.ckpt_path)
        self.last_good_step = self.step
        return out

    def load(self, path: PathLike) -> None:
        """Restore everything from a checkpoint (to continue bit-exactly)."""
        state = load_checkpoint(path)
        if state["spec"] != self.model.spec:
            raise ValueError(f"checkpoint {path} holds a different model: {state['spec']} vs {self.model.spec}")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["grad_scaler"])
        _set_rng_state(state["rng"], self.gen)
        self.step = int(state["step"])
        self.last_good_step = self.step

    # -- one step ------------------------------------------------------------------------------
    def _diverged(self, what: str, value: float) -> TrainingDiverged:
        kept = (f"the last good checkpoint (step {self.last_good_step}) is kept at {self.ckpt_path}"
                if self.last_good_step is not None else "no checkpoint was written")
        return TrainingDiverged(f"{what} is {value} at step {self.step}; training stopped and {kept}. "
                                f"Try a lower optim.lr or optim.grad_clip.")

    def train_step(self) -> Dict[str, float]:
        for group in self.opt.param_groups:
            group["lr"] = self.optim_cfg.lr * lr_factor(self.step, self.optim_cfg, self.cfg.steps)
        amp = self.cfg.amp != "none"
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=amp):
            loss = self.batch_loss()
        loss_val = self._loss_value(loss)
        if not math.isfinite(loss_val):
            raise self._diverged("the loss", loss_val)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        clip = self.optim_cfg.grad_clip
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip else float("inf"))
        gnorm_val = float(gnorm)
        if not math.isfinite(gnorm_val) and not self.scaler.is_enabled():
            raise self._diverged("the gradient norm", gnorm_val)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.ema.update(self.model, self.step)
        self.step += 1
        return {"loss": loss_val, "grad_norm": gnorm_val, "lr": self.opt.param_groups[0]["lr"]}

    @property
    def conditional(self) -> bool:
        """Whether the model is class-conditional (then batches carry the data set's labels)."""
        return bool(getattr(self.model, "num_classes", 0))

    def batch_loss(self) -> Tensor:
        """The loss of one training batch.  An unconditional model reads ``data.batch`` (the
        stream of earlier versions, so old runs resume bit-exactly); a class-conditional one reads
        ``data.labelled_batch`` (the same draws) and passes the labels to the loss, which drops
        them to the null label with probability ``loss.p_uncond``."""
        if not self.conditional:
            x0 = self.data.batch(self.cfg.batch_size, self.gen, device=self.device)
            return self.loss_fn(self.train_model, x0, self.gen)
        x0, y = self.data.labelled_batch(self.cfg.batch_size, self.gen, device=self.device)
        return self.loss_fn(self.train_model, x0, self.gen, labels=y)

    # -- hooks for distributed training (scoresde.distributed.DistributedTrainer) --------------
    is_main = True  # this process writes logs, checkpoints, metrics and samples

    def _loss_value(self, loss: Tensor) -> float:
        """The loss as a float for logging and the divergence check (the mean over ranks under DDP)."""
        return float(loss.detach())

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train to ``train.steps`` (from the resumed step), evaluate, write metrics.json."""
        from tqdm.auto import tqdm

        self.out_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        log = _CSVLog(self.out_dir / "train_log.csv")
        tb = self._tensorboard()
        t_start = time.perf_counter()
        window = []
        bar = tqdm(total=cfg.steps, initial=self.step, disable=None if cfg.progress else True,
                   desc="train", dynamic_ncols=True)
        try:
            while self.step < cfg.steps:
                stats = self.train_step()
                window.append(stats["loss"])
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    row = {"step": self.step, "time_s": round(time.perf_counter() - t_start, 3),
                           "loss": sum(window) / len(window), "lr": stats["lr"], "grad_norm": stats["grad_norm"]}
                    self.metrics["train_loss"] = row["loss"]
                    window = []
                    if self.is_main:
                        log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    if tb is not None:
                        for k in ("loss", "lr", "grad_norm"):
                            tb.add_scalar(f"train/{k}", row[k], self.step)
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:
                    self.save()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self.evaluate(final=False, tb=tb)
        finally:
            bar.close()
        train_time = time.perf_counter() - t_start
        self.save()
        t_eval = time.perf_counter()
        self.evaluate(final=True, tb=tb)
        self.metrics.update(step=self.step, train_time_s=round(train_time, 3),
                            eval_time_s=round(time.perf_counter() - t_eval, 3))
        if self.is_main:
            with open(self.out_dir / "metrics.json", "w") as f:
                json.dump(self.metrics, f, indent=2)
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
                stats = sd.metrics.mode_w2(xs, mix)
                out["mode_w2"] = stats.w2
                out["mode_weight_error"] = stats.weight_error
            xd, ref = self.data.scaler.to_data(xs), self.data.scaler.to_data(self.data.test)
            if xd.dim() == 4:  # images: the scaler maps model space back to [0, 1] pixels
                ref = None
            name = "samples.png" if final else f"samples/step_{self.step:07d}.png"
            save_samples_png(xd, self.out_dir / name, reference=ref, title=f"{self.data.name}, step {self.step}")
        _CSVLog(self.out_dir / "eval_log.csv").write(out)
        if tb is not None:
            for k, v in out.items():
                if k != "step" and isinstance(v, (int, float)):
                    tb.add_scalar(f"eval/{k}", v, self.step)
        self.metrics.update(out)
        return out

    def _mixture_entropy(self) -> Tuple[float, float]:
        """H(p_data) and its standard error, once per run (the evaluation seed fixes its draws)."""
        if self._entropy is None:
            g = torch.Generator().manual_seed(self.eval_cfg.seed)
            self._entropy = self.data.mixture.entropy(n=100_000, generator=g)
        return self._entropy

