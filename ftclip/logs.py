"""What a stage logs: its history file ``logs/<stage>/metrics.csv`` and the loggers named by ``trainer.logger``.

The history is ftclip's own record of a stage, read by the plots, the run report and ``--resume``:

* a row every ``trainer.log_every_n_steps`` optimizer steps: ``epoch``, ``step`` (optimizer steps
  done), the ``train/*`` values the module logged in that step;
* a row at every epoch end: the epoch means ``train/<name>_epoch`` and the ``lr`` the epoch trained
  with (the first parameter group's);
* a row after every validation during the stage: the ``val/*`` values.

Exactly once across resumes: a row is written *before* any checkpoint of the same step is saved
(Lightning calls checkpoint callbacks last), every checkpoint stores how many rows the file held,
and a resumed stage first cuts the file back to that count. So a stage killed at any moment and
resumed holds the rows of an uninterrupted run, each once. (Lightning's ``CSVLogger`` deletes the
earlier file on resume and logs a step's row only after that step's checkpoint is written.) The
running epoch means and the stage's training time travel in the checkpoint too, so
``train_seconds`` counts the whole stage, not only the part after the last resume.

``trainer.logger`` adds Lightning's loggers (``tensorboard``, ``wandb`` offline unless
``WANDB_MODE`` says otherwise, ``mlflow``) under ``logs/``; the history is always written.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from ftclip.config import LOGGERS
from ftclip.errors import ConfigError
from ftclip.io import atomic_write

HISTORY_FILE = "metrics.csv"

#: trainer.logger name (ftclip.config.LOGGERS) -> (the packages that provide it, any one; the pip extra)
PACKAGES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "csv": ((), None),
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
}


#: what the engine adds to a stage's entry of metrics.json beside the task's metrics
BOOKKEEPING_KEYS = ("train_seconds", "best/epoch", "stopped_early_at_epoch")


def is_metric_key(key: str) -> bool:
    """Whether a ``metrics.json`` key is a metric the task logged (not the engine's bookkeeping)."""
    return key not in BOOKKEEPING_KEYS and not key.startswith("best/")


def is_number(value) -> bool:
    """A plain number of ``metrics.json`` (tasks may also record tables there, e.g. per-class accuracy)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------- the history
def read_history(path: str | Path) -> list[dict[str, float]]:
    """The rows of a history file as numbers (empty cells left out); ``[]`` if there is none."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            values = {}
            for key, text in row.items():
                if key is None or text in (None, ""):
                    continue
                try:
                    values[key] = float(text)
                except ValueError:
                    continue
            rows.append(values)
    return rows


def _write_rows(path: Path, header: list[str], rows: list[dict]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


class StageHistory(Callback):
    """Writes one stage's history file (see the module docstring); only ``write=True`` (rank 0) writes.

    ``on_epoch(line)`` receives one progress line per epoch (loss, lr, the last validation, elapsed time).
    An epoch shorter than the loader's ``len()`` is a warning (see :meth:`_warn_short_epoch`).
    ``resuming``: the stage resumes from a checkpoint; one written before ftclip kept the history in
    checkpoints has no row count, and then the file is kept as it is.
    """

    def __init__(self, path: str | Path, stage: str, epochs: int, log_every: int, write: bool = True,
                 on_epoch: Callable[[str], None] | None = None, resuming: bool = False):
        self.path, self.stage, self.epochs = Path(path), stage, int(epochs)
        self.log_every = max(1, int(log_every))
        self.write, self.on_epoch = write, on_epoch
        self.rows = 0  # rows the file holds (counted on every rank alike)
        self._resume_rows: int | None = None if resuming else 0
        self._seconds_before = 0.0  # training time before this process (from the checkpoint)
        self._started: float | None = None
        self._sums: dict[str, torch.Tensor | float] = {}
        self._count = 0
        self._lr: float | None = None
        self._last_val: dict[str, float] = {}
        self._header: list[str] | None = None  # the file's columns, once read
        self._warned = False

    # ------------------------------------------------------------------ state in every checkpoint
    def state_dict(self) -> dict:
        if self.write and self.path.is_file():
            with open(self.path, "rb") as fh:
                os.fsync(fh.fileno())
        sums = {k: float(v) for k, v in self._sums.items()}
        return {"rows": self.rows, "seconds": self.seconds, "sums": sums, "count": self._count, "lr": self._lr}

    def load_state_dict(self, state: dict) -> None:
        self._resume_rows = self.rows = int(state.get("rows", 0))
        self._seconds_before = float(state.get("seconds", 0.0))
        self._sums = dict(state.get("sums", {}))
        self._count = int(state.get("count", 0))
        self._lr = state.get("lr")

    @property
    def seconds(self) -> float:
        """Training time of the stage so far, including the time before the last resume."""
        running = time.monotonic() - self._started if self._started is not None else 0.0
        return self._seconds_before + running

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer, pl_module) -> None:
        self._started = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        """After any checkpoint was restored: cut the file back to the rows the checkpoint had seen."""
        if self._resume_rows is None:  # an older checkpoint without the row count: append to what is there
            self.rows = len(read_history(self.path))
            return
        if not self.write or not self.path.is_file():
            return
        with open(self.path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            kept = [row for _, row in zip(range(self._resume_rows), reader)]
        if self._resume_rows == 0:
            self.path.unlink()  # rows of an attempt that never reached a checkpoint
            self._header = []
        else:
            _write_rows(self.path, header, kept)
            self._header = header

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.optimizers:
            self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        values = dict(getattr(pl_module, "step_log", {}))
        pl_module.step_log = {}
        for key, value in values.items():
            value = value.detach().double() if isinstance(value, torch.Tensor) else float(value)
            self._sums[key] = self._sums.get(key, 0.0) + value
        self._count += 1
        if values and trainer.global_step % self.log_every == 0:
            self._append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                          **{k: float(v) for k, v in values.items()}})

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # only validations during training
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if values:
            self._last_val = values
            self._append({"epoch": trainer.current_epoch, "step": trainer.global_step, **values})

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        means = {f"{k}_epoch": float(v) / self._count for k, v in self._sums.items()} if self._count else {}
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, **means}
        if self._lr is not None:
            row["lr"] = self._lr
        self._append(row)
        if self.on_epoch is not None and self.write:
            self.on_epoch(self._line(trainer.current_epoch, means))
        self._warn_short_epoch(trainer)
        self._sums, self._count, self._last_val = {}, 0, {}

    def _warn_short_epoch(self, trainer) -> None:
        """Once per stage: an epoch of a sized loader that ended before its ``len()`` (P x K loaders have no
        ``len()``, so Lightning knows their last batch and this never fires for them). Lightning
        2.6 then skips that epoch's step of the lr schedule and its validation (both wait for ``len()``
        batches), so the schedule and ``eval_every`` silently stop advancing."""
        expected = getattr(trainer, "num_training_batches", float("inf"))
        limit = int(getattr(trainer, "max_steps", -1))  # a cap (max_steps; 0: a closed-form stage) ends it on purpose
        cut = bool(getattr(trainer, "should_stop", False)) or 0 <= limit <= trainer.global_step
        if self._warned or cut or not self.write or expected == float("inf") or self._count >= expected:
            return
        self._warned = True
        print(f"warning: [{self.stage}] epoch {trainer.current_epoch + 1} ended after {self._count} of the loader's "
              f"len() = {int(expected)} batches: Lightning skips the lr-schedule step and the evaluation "
              "(eval_every, monitor) of such an epoch", flush=True)

    # ------------------------------------------------------------------ writing
    def _line(self, epoch: int, means: dict[str, float]) -> str:
        parts = [f"[{self.stage}] epoch {epoch + 1}/{self.epochs}"]
        if "train/loss_epoch" in means:
            parts.append(f"loss {means['train/loss_epoch']:.4f}")
        if self._lr is not None:
            parts.append(f"lr {self._lr:.3g}")
        parts += [f"{k.split('/', 1)[1]} {v:.4f}" for k, v in self._last_val.items()]
        parts.append(format_seconds(self.seconds))
        return "  ".join(parts)

    def _append(self, row: dict) -> None:
        self.rows += 1
        if not self.write:
            return
        if self._header is None:
            self._header = []
            if self.path.is_file():
                with open(self.path, newline="", encoding="utf-8") as fh:
                    self._header = next(csv.reader(fh), [])
        new = [k for k in row if k not in self._header]
        if new or not self._header:  # new columns: rewrite the file with the wider header (atomically)
            old = []
            if self._header and self.path.is_file():
                with open(self.path, newline="", encoding="utf-8") as fh:
                    old = list(csv.DictReader(fh))
            self._header = self._header + new
            _write_rows(self.path, self._header, old + [row])
            return
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            csv.DictWriter(fh, fieldnames=self._header, extrasaction="ignore").writerow(row)


def format_seconds(seconds: float) -> str:
    """``42.7s``, ``3m05s``, ``1h02m`` (how ftclip prints durations)."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# ---------------------------------------------------------------------------------------- Lightning loggers
def logger_names(value) -> list[str]:
    """``trainer.logger`` (a name or a list of names) -> the names, checked; ``csv`` is always among them."""
    names = [value] if isinstance(value, str) else list(value or [])
    names = [str(n).strip().lower() for n in names]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:  # recipe validation refuses them already; this guards direct calls
        raise ConfigError(f"trainer.logger names unknown logger(s) {unknown}; choose from: {', '.join(LOGGERS)} "
                          "(a name or a list, e.g. trainer.logger=[csv,tensorboard])")
    return list(dict.fromkeys(["csv", *names]))


def check_loggers(value) -> list[str]:
    """The names of ``trainer.logger``, each logger's package importable (ConfigError naming the extra if not)."""
    names = logger_names(value)
    for name in names:
        packages, extra = PACKAGES[name]
        if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
            raise ConfigError(f"trainer.logger={name} needs the {packages[0]} package, which is not installed: "
                              f"pip install 'ftclip[{extra}]' (or remove {name} from trainer.logger)")
    return names


def build_loggers(value, log_dir: str | Path, run_name: str, stage: str) -> list:
    """Lightning loggers for one stage, under ``log_dir`` (the history file is not one of them)."""
    log_dir = Path(log_dir)
    loggers = []
    for name in check_loggers(value):
        if name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(save_dir=str(log_dir / "tensorboard"), name=stage, version="",
                                             default_hp_metric=False))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            offline = os.environ.get("WANDB_MODE", "offline") == "offline"
            loggers.append(WandbLogger(name=f"{run_name}/{stage}", project=run_name, save_dir=str(log_dir),
                                       offline=offline))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            uri = os.environ.get("MLFLOW_TRACKING_URI") or (log_dir / "mlruns").resolve().as_uri()
            loggers.append(MLFlowLogger(experiment_name=run_name, run_name=stage, tracking_uri=uri))
    return loggers
