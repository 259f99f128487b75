"""Pre-emption: stop a training run at a step boundary on SLURM's warning signals, checkpoint
that step, and leave a requeue marker.

Clusters warn a job before they take its resources: SLURM sends SIGTERM on pre-emption (then
SIGKILL after the partition's ``KillWait``, 30 s by default) and, with ``--signal=USR1@120`` (or
submitit's ``signal_delay_s``, USR2 in recent submitit versions), a signal 120 s before the time
limit.  :class:`PreemptionGuard` traps those signals for the duration of the training loop: the
handler only records the signal; the loop finishes the step it is in, writes an atomic checkpoint
of that step (:meth:`scoresde.training.Trainer.save`) and raises :class:`TrainingPreempted`.

The requeue convention (see ``docs/cluster.md``):

* the train app exits with :data:`REQUEUE_EXIT_CODE` (124) and rank 0 leaves
  ``<run dir>/preempted.json`` (``{"step", "signal"}``; removed when the run finishes), so a batch
  script tests either (under torchrun the agent's exit status is its own, so test the file);
* where another Python handler was installed before ours (submitit's, under
  ``hydra/launcher=slurm``), it is called after the checkpoint is written: submitit then requeues
  the job (``scontrol requeue``) with the same config, so the same run directory;
* the requeued job runs the same command with ``train.resume=auto`` and continues from the
  checkpoint; the run ends equal, in every tensor, to an uninterrupted one.

Under DDP every rank traps the signals and the ranks agree on the step to stop at by reducing the
flag every ``train.stop_check_every`` steps (:meth:`DistributedTrainer._stop_requested`), not
with a collective every step: a signal is acted on at most ``stop_check_every - 1`` steps late.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = ["REQUEUE_EXIT_CODE", "TrainingPreempted", "PreemptionGuard", "parse_signals"]

REQUEUE_EXIT_CODE = 124
"""Exit status of ``scoresde-train`` after a pre-emption signal: checkpoint written, run again."""


class TrainingPreempted(Exception):
    """A pre-emption signal stopped training at ``step``; the checkpoint of that step is written.

    ``previous_handler``: the Python handler installed for ``signum`` before the trainer's (e.g.
    submitit's requeue), or None; :meth:`chain` calls it.
    """

    def __init__(self, step: int, signum: int, checkpoint: Optional[str] = None, previous_handler: Any = None):
        self.step, self.signum, self.checkpoint = int(step), int(signum), checkpoint
        self.previous_handler = previous_handler
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
        super().__init__(f"{name} received: training stopped at step {step} and its checkpoint was written to "
                         f"{checkpoint}; run the same command again (train.resume=auto, same hydra.run.dir) "
                         f"to continue")

    def chain(self) -> None:
        """Call the handler that was installed before ours (submitit's requeue), if it is Python's."""
        if callable(self.previous_handler):
            self.previous_handler(self.signum, None)


_POSIX_ONLY = {"SIGUSR1", "SIGUSR2", "SIGHUP", "SIGQUIT", "SIGCONT", "SIGALRM"}


def parse_signals(spec: str) -> Tuple[int, ...]:
    """``"SIGTERM,SIGUSR1"`` (or ``"TERM,USR1"``, or numbers) -> signal numbers; ``""``: none."""
    if not isinstance(spec, str):
        raise TypeError(f"train.preempt_signals must be a comma-separated string, got {type(spec).__name__}")
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.isdigit():
            out.append(int(part))
            continue
        name = part.upper() if part.upper().startswith("SIG") else "SIG" + part.upper()
        sig = getattr(signal, name, None)
        if sig is None and name in _POSIX_ONLY:   # e.g. SIGUSR1 on Windows: nothing sends it there
            continue
        if not isinstance(sig, signal.Signals):
            raise ValueError(f"train.preempt_signals: unknown signal {part!r} (e.g. SIGTERM, SIGUSR1, SIGUSR2)")
        out.append(int(sig))
    return tuple(dict.fromkeys(out))


class PreemptionGuard:
    """Context manager: trap ``signals`` while training, recording the first one received.

    Handlers can only be installed from the main thread; elsewhere (a trainer run from a worker
    thread) the guard is inert and says so in :attr:`active`.  The previous handlers are restored
    on exit.
    """

    def __init__(self, signals: Sequence[int]):
        self.signals = tuple(signals)
        self.signum: Optional[int] = None
        self.previous: Dict[int, Any] = {}
        self.active = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        # only record it: the loop finishes its step and checkpoints (no I/O in a signal handler)
        if self.signum is None:
            self.signum = signum

    def __enter__(self) -> "PreemptionGuard":
        if self.signals and threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self.previous[s] = signal.signal(s, self._handle)
            self.active = True
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self.active = False

    def previous_handler(self) -> Any:
        """The handler that was installed for the received signal before ours."""
        return self.previous.get(self.signum) if self.signum is not None else None
