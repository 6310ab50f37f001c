"""Graceful stops: SIGTERM, SIGINT and SLURM's requeue signal end training at a step boundary.

:func:`handle_signals` installs ftclip's handlers for a block (the ``fit`` command, the engine's
``fit``). Inside it:

* while a stage trains (between Lightning's ``on_train_start`` and ``on_train_end``) a signal is
  only recorded; at the end of the current optimizer step :class:`StopAtStepEnd` agrees on it
  with every rank (an all-reduce over a CPU/gloo group: no device sync), writes that step's
  checkpoint (atomically, like every checkpoint) and raises :class:`~ftclip.errors.Interrupted`.
  Every rank stops after the same step, whichever rank got the signal. A second SIGINT during a
  step stops at once (the previous checkpoint stays the one a resume uses);
* anywhere else (data decoding, evaluation, export) nothing is lost by stopping at once, so the
  signal raises :class:`~ftclip.errors.Interrupted` right away (and is passed on to the DDP
  workers Lightning started, which would otherwise wait in a collective).

Lightning's own SIGTERM handler (a flag that ends ``fit`` after the step with exit status 0 and
no checkpoint, and a broadcast from inside the handler) is replaced while a stage trains. Under
SLURM (Lightning's ``SLURMEnvironment``, whose ``auto_requeue`` is on by default) the requeue
signal (SIGUSR1, ``#SBATCH --signal=SIGUSR1@90``) stops the same way, then rank 0 runs
``scontrol requeue <job>``; Lightning's own requeue handler (which saves ``hpc_ckpt_*.ckpt``
files in the middle of a step) is not installed, because this one is there first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from ftclip.errors import Interrupted

REQUEUE_SIGNAL = signal.SIGUSR1  # Lightning's SLURMEnvironment default


class _Requests:
    """This process's signal bookkeeping (one instance, :data:`_REQ`)."""

    def __init__(self):
        self.owner = 0  # pid that installed the handlers (forked DataLoader workers ignore them)
        self.signum: int | None = None
        self.count = 0
        self.deferring = False
        self.stopping = False
        self.requeue = False  # SLURM: the requeue signal is ours too
        self.children: Callable[[], list] = list  # processes to pass a signal on to when stopping at once

    def reset(self) -> None:
        self.signum, self.count, self.deferring, self.stopping = None, 0, False, False


_REQ = _Requests()


def _signals() -> list[int]:
    sigs = [signal.SIGTERM, signal.SIGINT]
    if _REQ.requeue:
        sigs.append(REQUEUE_SIGNAL)
    return sigs


def _on_signal(signum, frame) -> None:
    if os.getpid() != _REQ.owner or _REQ.stopping:
        return
    _REQ.count += 1
    if _REQ.signum is None:
        _REQ.signum = signum
    if _REQ.deferring and not (signum == signal.SIGINT and _REQ.count > 1):
        return  # StopAtStepEnd acts at the end of the step
    _REQ.stopping = True
    _REQ.deferring = False
    for proc in _REQ.children():
        with contextlib.suppress(Exception):
            proc.send_signal(signum)
    raise Interrupted(signum)


def _install() -> None:
    for sig in _signals():
        signal.signal(sig, _on_signal)


def slurm_requeue_enabled() -> bool:
    """Whether Lightning will pick its SLURM environment (with auto-requeue, its default) for this process."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


@contextlib.contextmanager
def handle_signals(children: Callable[[], list] | None = None) -> Iterator[None]:
    """ftclip's handlers for SIGTERM and SIGINT (and, under SLURM, SIGUSR1) for the block; the previous
    ones come back after it. Nested blocks share the outer one's. Outside the main thread it does nothing
    (Python delivers signals there only)."""
    if threading.current_thread() is not threading.main_thread() or _REQ.owner == os.getpid():
        yield
        return
    _REQ.reset()
    _REQ.requeue = slurm_requeue_enabled()
    _REQ.children = children or list
    previous = {sig: signal.getsignal(sig) for sig in _signals()}
    _REQ.owner = os.getpid()
    _install()
    try:
        yield
    finally:
        _REQ.owner = 0
        _REQ.deferring = False
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def set_children(children: Callable[[], list]) -> None:
    """Where a signal is passed on when it stops this process at once (Lightning's DDP worker processes)."""
    _REQ.children = children


def pending() -> int | None:
    """The signal received and not acted on yet (None when there is none)."""
    return None if _REQ.stopping else _REQ.signum


# ---------------------------------------------------------------------- DDP agreement
_GLOO_GROUP = None


def _cpu_group():
    """A gloo group over all ranks (the default group when it is gloo already): a CPU all-reduce per
    step costs one small message and no device synchronisation."""
    global _GLOO_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _GLOO_GROUP is None:
        _GLOO_GROUP = dist.new_group(backend="gloo")
    return _GLOO_GROUP


def agreed_signal(world_size: int, group=None) -> int:
    """The signal any rank received (0: none): all ranks get the same answer."""
    local = pending() or 0
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return local
    flag = torch.tensor([local], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return int(flag.item())


# ---------------------------------------------------------------------- the callback
def _requeue_slurm_job() -> str:
    job = os.environ.get("SLURM_JOB_ID", "")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        return "SLURM_JOB_ID is not set: the job was not requeued"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`scontrol requeue {job}` failed ({exc}): resubmit the job"
    if result.returncode != 0:
        return f"`scontrol requeue {job}` failed (exit {result.returncode}): resubmit the job"
    return f"SLURM job {job} requeued"


class StopAtStepEnd(Callback):
    """Acts on a recorded signal after the current optimizer step: writes ``ckpt_path`` and raises
    :class:`Interrupted` naming the stage, epoch and step a resume continues from.

    After an epoch's last step it lets the epoch end first (its history row, a scheduled evaluation and
    the epoch-end checkpoint) and stops as the next epoch starts: Lightning counts an epoch whose last
    batch was checkpointed as done on resume without running its epoch-end hooks, so stopping inside
    that last step would lose them."""

    def __init__(self, stage: str, ckpt_path: str | Path):
        self.stage, self.ckpt_path = stage, Path(ckpt_path)
        self._group = None
        self._after_epoch: int | None = None  # a signal agreed on at an epoch's last step

    def on_train_start(self, trainer, pl_module) -> None:
        if _REQ.owner != os.getpid():  # fit called outside handle_signals(): Lightning's own handling stays
            return
        _install()  # over the SIGTERM handler Lightning registered just before this hook
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            self._group = _cpu_group()  # collective: every rank runs this hook
        _REQ.deferring = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not _REQ.deferring:
            return
        if self._after_epoch is not None:
            return
        signum = agreed_signal(trainer.world_size, self._group)
        if signum and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._after_epoch = signum  # the same on every rank (agreed): stop once the epoch has ended
        elif signum:
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)  # as a step checkpoint; every rank calls it
            self._stop(trainer, signum)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._after_epoch is not None:  # the previous epoch ended and wrote its checkpoint
            signum, self._after_epoch = self._after_epoch, None
            self._stop(trainer, signum)

    def on_train_end(self, trainer, pl_module) -> None:
        if not _REQ.deferring:
            return
        signum = self._after_epoch or agreed_signal(trainer.world_size, self._group)
        self._after_epoch = None
        _REQ.deferring = False
        if signum:  # after the last step: the epoch-end checkpoint holds the stage's final step
            self._stop(trainer, signum)

    def on_exception(self, trainer, pl_module, exception) -> None:
        _REQ.deferring = False

    def _stop(self, trainer, signum: int) -> None:
        _REQ.deferring = False
        _REQ.stopping = True
        note = ""
        if _REQ.requeue and signum == REQUEUE_SIGNAL and trainer.is_global_zero:
            note = _requeue_slurm_job()
        raise Interrupted(signum, stage=self.stage, epoch=int(trainer.current_epoch), step=int(trainer.global_step),
                          main=bool(trainer.is_global_zero), note=note)
