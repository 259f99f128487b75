"""Distributed data-parallel training under ``torchrun`` (DistributedDataParallel).

    torchrun --nproc_per_node=4 $(command -v scoresde-train) data=moons train.steps=20000
    python -m torch.distributed.run --nproc_per_node=2 -m scoresde.apps.train train.device=cpu ...

What changes under torchrun (detected from the ``RANK``/``WORLD_SIZE`` variables it sets):

* one process group: NCCL for CUDA tensors and gloo for CPU tensors (``cpu:gloo,cuda:nccl``) when
  CUDA is present, gloo alone otherwise; each process drives ``cuda:LOCAL_RANK``;
* ``train.batch_size`` stays the *global* batch: each of the N ranks draws ``batch_size / N``
  (so a sweep's results do not depend on the number of GPUs); the gradients are averaged by DDP;
* data sharded by rank: rank r trains on rows ``r::N`` of a stored training set, and its
  generator (data, times, noise) is seeded from ``(seed, r)`` (rank 0 keeps ``seed``, so a
  one-process run equals the plain trainer);
* one run directory: rank 0 alone lets Hydra create it and resolve ``${now:...}``; the other
  ranks start with Hydra's outputs switched off and receive rank 0's directory;
* rank 0 alone writes logs, checkpoints, metrics and samples and evaluates; checkpoints hold the
  generator state of every rank, so ``train.resume`` continues bit-exactly with the same number of
  ranks (with another number it reseeds each rank's generator and says so);
* dropout and other draws on torch's global generators: rank r > 0 seeds them with
  ``rank_seed(seed, r)`` after the model is built (the same initial weights everywhere, different
  masks per rank), and checkpoints hold each rank's own CPU and CUDA generator states
  (``rank_rng``), restored on that rank;
* evaluation runs on rank 0 while the other ranks wait *outside* any collective: they poll the
  process group's key-value store for rank 0's "done" (:meth:`DistributedTrainer.evaluate`), so
  a long evaluation does not trip NCCL's watchdog.  The process group's timeout (NCCL's watchdog
  and gloo's) is set to ``SCORESDE_DIST_TIMEOUT_S`` seconds, default 1800 (30 minutes; torch's own
  default is 10 minutes): it bounds the collectives that remain, a checkpoint write by rank 0
  while the others wait in a barrier and a straggling rank;
* pre-emption: every rank traps the signals; every ``train.stop_check_every`` steps the ranks
  reduce the flag (the signal number, MAX), so all stop at the same step and write one checkpoint
  (:mod:`scoresde.training.preemption`).  No collective is added to the other steps: the loss and
  the non-finite check are reduced at log steps and before checkpoints only.

The sharded sample app also runs as the tasks of one submitit job (``hydra/launcher=slurm`` with
``hydra.launcher.tasks_per_node=K``): :func:`task_rank_world` reads the rank and the number of
tasks from submitit's job environment; those tasks join no process group (see
:mod:`scoresde.apps._shard`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from datetime import timedelta
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..device import resolve_device
from .trainer import Trainer, TrainConfig, _as_config

log = logging.getLogger("scoresde")

__all__ = ["under_torchrun", "rank", "world_size", "init_process_group", "torchrun_argv",
           "broadcast_run_dir", "DistributedTrainer", "rank_seed", "SubmititTask", "submitit_task",
           "task_rank_world"]

# Hydra settings for ranks > 0: no run dir of their own (they get rank 0's), no .hydra/, no log file
_QUIET_RANK_OVERRIDES = ["hydra.run.dir=.", "hydra.output_subdir=null",
                         "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]


def under_torchrun() -> bool:
    """True when this process was started by torchrun (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SubmititTask(NamedTuple):
    """Where this process sits in a submitit job (``submitit.JobEnvironment``)."""
    global_rank: int
    num_tasks: int
    local_rank: int
    cluster: str            # "slurm" (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) or "local"


def submitit_task() -> Optional[SubmititTask]:
    """This process's task in a submitit job, or None outside one.

    submitit marks its jobs with ``SUBMITIT_EXECUTOR`` (``slurm`` under ``hydra/launcher=slurm``,
    ``local`` under ``hydra/launcher=submitit_local``); only then is submitit imported and its
    ``JobEnvironment`` read.  A bare ``SLURM_PROCID`` is not taken as a rank: the batch script of
    an ``sbatch --ntasks=4`` job has one too, with no other task beside it.
    """
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    try:
        import submitit
    except ImportError:    # the variable leaked into a process that has no submitit: not a task
        return None
    env = submitit.JobEnvironment()
    return SubmititTask(int(env.global_rank), int(env.num_tasks), int(env.local_rank), str(env.cluster))


def task_rank_world() -> Tuple[int, int]:
    """``(rank, world size)`` of this process in a job that shards its work (the sample app):
    torchrun's process group where one is initialized, else the tasks of a submitit job
    (``hydra.launcher.tasks_per_node`` times ``nodes``; no process group is needed), else ``(0, 1)``.

    In a submitit job of several tasks on a CUDA machine, each task is also put on its own GPU
    (``cuda:local_rank``, modulo the GPUs it sees), as :func:`init_process_group` does under torchrun.
    """
    if world_size() > 1 or (dist.is_available() and dist.is_initialized()):
        return rank(), world_size()
    task = submitit_task()
    if task is None or task.num_tasks == 1:
        return 0, 1
    if not 0 <= task.global_rank < task.num_tasks:
        raise ValueError(f"submitit task {task.global_rank} of {task.num_tasks}: the rank is out of range")
    if torch.cuda.is_available():
        torch.cuda.set_device(task.local_rank % torch.cuda.device_count())
    return task.global_rank, task.num_tasks


DEFAULT_TIMEOUT_S = 1800.0


def process_group_timeout() -> timedelta:
    """The collectives' timeout: ``SCORESDE_DIST_TIMEOUT_S`` seconds, default 1800 (module docstring)."""
    raw = os.environ.get("SCORESDE_DIST_TIMEOUT_S", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"SCORESDE_DIST_TIMEOUT_S must be a number of seconds, got {raw!r}") from None
    if not seconds > 0:
        raise ValueError(f"SCORESDE_DIST_TIMEOUT_S must be > 0, got {raw!r}")
    return timedelta(seconds=seconds)


def init_process_group() -> None:
    """Join torchrun's process group (once): NCCL for CUDA tensors, gloo for CPU tensors, with
    the timeout of :func:`process_group_timeout`.

    ``SCORESDE_DIST_BACKEND`` overrides the choice (e.g. ``gloo`` on a GPU machine).
    """
    if dist.is_initialized():
        return
    backend = os.environ.get("SCORESDE_DIST_BACKEND")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=process_group_timeout())


def torchrun_argv(argv: List[str]) -> List[str]:
    """Prepare a torchrun launch of a Hydra app: join the process group and return ``argv`` with
    Hydra's outputs switched off on ranks > 0 (rank 0 alone creates the run dir)."""
    if any(a in ("-m", "--multirun") for a in argv[1:]):
        raise ValueError("--multirun is not supported under torchrun: start one torchrun per run, "
                         "or sweep with a launcher and run DDP inside each job")
    init_process_group()
    return list(argv) + (_QUIET_RANK_OVERRIDES if rank() > 0 else [])


def broadcast_run_dir(path: str) -> str:
    """Rank 0's run directory, on every rank."""
    if not dist.is_initialized():
        return path
    obj = [path]
    dist.broadcast_object_list(obj, src=0)
    return obj[0]


def rank_seed(seed: int, r: int) -> int:
    """The generator seed of rank ``r``: ``seed`` on rank 0; elsewhere a seed spawned from
    ``(seed, r)`` by NumPy's SeedSequence (independent streams, no overlap with other seeds)."""
    if r == 0:
        return int(seed)
    return int(np.random.SeedSequence(int(seed), spawn_key=(int(r),)).generate_state(1, np.uint64)[0] >> 1)


class _DDP(DistributedDataParallel):
    """DDP that forwards unknown attributes (``.sde``, ``.spec``) to the wrapped score model."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


class DistributedTrainer(Trainer):
    """:class:`~scoresde.training.Trainer` for one rank of a torchrun job (see the module docstring)."""

    def __init__(self, model, data, loss=None, optim=None, train=None, eval=None, sampler=None,
                 out_dir=".", config=None, seed: int = 0):
        if not dist.is_initialized():
            raise ValueError("DistributedTrainer needs an initialized process group (start with torchrun)")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        cfg = _as_config(TrainConfig, train, "train")
        if cfg.batch_size % self.world:
            raise ValueError(f"train.batch_size={cfg.batch_size} (the global batch) must be divisible by the "
                             f"number of processes, {self.world}")
        device = resolve_device(cfg.device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size // self.world, device=str(device),
                                  progress=cfg.progress and self.is_main,
                                  tensorboard=cfg.tensorboard and self.is_main)
        if data.train is not None:   # a stored training set: each rank its own rows
            data.train = data.train[self.rank::self.world]
            if data.train_labels is not None:   # the labels of those rows (class-conditional runs)
                data.train_labels = data.train_labels[self.rank::self.world]
        self._resumed = False
        self._eval_calls = 0
        # small control tensors (stop flag, non-finite step) travel on gloo where the group has it
        backend = str(dist.get_backend())
        self._ctl_device = torch.device("cpu") if "gloo" in backend else None
        super().__init__(model, data, loss, optim, cfg, eval, sampler, out_dir, config, seed)
        if not self._resumed:
            self.gen.manual_seed(rank_seed(self.seed, self.rank))
            if self.rank > 0:
                # dropout masks differ by rank (the model was built, identically, before this)
                torch.manual_seed(rank_seed(self.seed, self.rank))
        self.train_model = _DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _rank_world(self):
        return self.rank, self.world

    # -- reductions at log steps and checkpoints only -------------------------------------------
    def _ctl(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self._ctl_device or self.device)

    def _reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        v = self._ctl(value.detach().double().reshape(1)).clone()
        dist.all_reduce(v)
        return (v / self.world).reshape(()).to(value.device)

    def _reduce_nonfinite(self, step: torch.Tensor, values: torch.Tensor):
        big = torch.iinfo(torch.int64).max
        s = self._ctl(torch.where(step < 0, big, step).reshape(1)).clone()
        dist.all_reduce(s, op=dist.ReduceOp.MIN)
        return torch.where(s == big, -1, s).reshape(()).to(step.device), values

    def _stop_requested(self, guard) -> int:
        # every stop_check_every steps (and at the last step) all ranks agree: the largest signal
        # number any rank received, 0 for none
        if self.step % self.cfg.stop_check_every and self.step != self.cfg.steps:
            return 0
        flag = torch.tensor([guard.signum or 0], dtype=torch.int64, device=self._ctl_device or self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)

    def _gathered_generator_states(self) -> List[torch.Tensor]:
        states: List[Any] = [None] * self.world
        dist.all_gather_object(states, self.gen.get_state())
        return states

    def _own_rng(self) -> Dict[str, torch.Tensor]:
        """This rank's global generators: CPU, and its own CUDA device's."""
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.empty(0)}

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["rank_generators"] = self._gathered_generator_states()
        ranks: List[Any] = [None] * self.world
        dist.all_gather_object(ranks, self._own_rng())
        state["rank_rng"] = ranks
        state["world_size"] = self.world
        return state

    def save(self, path=None):
        """Collective: every rank contributes its generator states, rank 0 writes."""
        self.check_finite()
        state = self.state_dict()
        out = path or self.ckpt_path
        if self.is_main:
            out = self._write(state, path)
        dist.barrier()
        self.last_good_step = self.step
        return out

    def load(self, path, state=None) -> Dict[str, Any]:
        state = super().load(path, state)
        self._resumed = True
        states = state.get("rank_generators")
        rngs = state.get("rank_rng")
        if rngs is not None and len(rngs) == self.world:
            torch.set_rng_state(rngs[self.rank]["torch"])
            if self.device.type == "cuda" and rngs[self.rank]["cuda"].numel():
                torch.cuda.set_rng_state(rngs[self.rank]["cuda"], self.device)
        elif self.rank > 0:
            torch.manual_seed(rank_seed(self.seed, self.rank) + self.step)
        if states is not None and len(states) == self.world:
            self.gen.set_state(states[self.rank])
        else:
            # another number of ranks (or a single-process checkpoint): fresh, distinct streams
            self.gen.manual_seed(rank_seed(self.seed, self.rank) + self.step)
            if self.is_main:
                log.warning("resuming %s with %d processes: its generator states are for %s; reseeding each "
                            "rank (the run continues correctly but not bit-exactly)", path, self.world,
                            len(states) if states is not None else "1 process")
        return state

    def evaluate(self, final: bool = True, tb=None) -> Dict[str, Any]:
        """Rank 0 evaluates; the others wait for it on the key-value store, in no collective (so
        no watchdog runs while they wait), and learn whether best.pt is due."""
        key = f"scoresde/eval/{self._eval_calls}"
        self._eval_calls += 1
        store = dist.distributed_c10d._get_default_store()
        if self.is_main:
            status = "failed"
            try:
                out = super().evaluate(final, tb)
                status = "best" if self._best_pending else "done"
                return out
            finally:
                store.set(key, status)
        while True:
            try:
                store.wait([key], timedelta(seconds=60))
                break
            except RuntimeError:   # a minute without an answer: rank 0 is still evaluating
                time.sleep(0.01)
        status = store.get(key).decode()
        if status == "failed":
            raise RuntimeError(f"rank 0 failed in evaluation at step {self.step} (see its log)")
        self._best_pending = status == "best"
        return {}


def trainer_class() -> Optional[type]:
    """The trainer class for this process: DistributedTrainer under an initialized process group."""
    return DistributedTrainer if dist.is_available() and dist.is_initialized() else None


def finish() -> None:
    """Leave the process group (end of a torchrun job)."""
    if dist.is_initialized():
        dist.destroy_process_group()
