"""Runs on disk: the run directory, checkpoint verification, and loading a trained module.

Loading is not training: export, inference and the engine's resume all read runs through this
module, which never imports the training engine.

    <run.dir>/                     default runs/<name>/<YYYY-mm-dd_HH-MM-SS>
      config.yaml                  the resolved recipe (a resume reads only this; --resume overrides update it)
      state.json                   completed stages, each stage's status, interruptions, history (below);
                                   "hashes": {checkpoint path: SHA-256}
      .lock                        while a process trains it: {"pid", "host", "command", "since"}
      metrics.json                 {"initial": {...}, "<stage>": {...}} final metrics per stage
      checkpoints/<stage>/last.ckpt  written atomically every N steps / each epoch / at stage end
      checkpoints/<stage>/best.ckpt  with stages.<stage>.monitor: the best evaluation so far (atomically)
      logs/<stage>/metrics.csv     the stage's history, exactly once across resumes (ftclip/logs.py)
      plots/                       loss, lr and validation curves, task plots (re-ID rank list, IQA scatter)
      export/                      adapted encoders (ftclip export)
      report.html                  the run on one self-contained page (ftclip/artifacts/report.py)

``state.json``::

    {"completed": ["prompts"],                      # finished stages, in order (what "finished" means)
     "stages": {"prompts": {"status": "finished", "epoch": 2, "step": 8, "time": "..."},
                "image": {"status": "interrupted", "epoch": 1, "step": 5, "signal": "SIGTERM", "time": "..."}},
     "interruptions": [{"stage": "image", "epoch": 1, "step": 5, "signal": "SIGTERM", "time": "..."}],
     "history": [{"command": "ftclip fit --resume", "time": "...", "pid": 4242, "host": "node1",
                  "overrides": ["stages.image.optimizer.lr=1e-05"],
                  "changes": {"stages.image.optimizer.lr": [0.001, 1e-05]}}]}

A stage's ``status`` is ``running`` (a process trains it; after a crash it stays so), ``interrupted``
(a signal stopped it after writing the step's checkpoint), ``failed`` (``reason``: diverged or disk
full; another error leaves it ``running``) or ``finished``. A run is finished when every stage of its config is in ``completed``;
:func:`select_checkpoint` is the one rule that commands reading a run (export, embed, score,
predict, eval) go through. Other sections (e.g. ``hashes``) are kept as they are.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
import socket
import sys
import zipfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ftclip.config import ScheduleConfig
from ftclip.errors import ConfigError, FtclipError
from ftclip.io import atomic_write_json, atomic_write_text, nearest_existing, read_json, sha256_file
from ftclip.lockfile import LOCK_FILE, RunLock, describe
from ftclip.recipe import load_saved_config, parse_overrides, to_yaml, validate
from ftclip.tasks import get_task

#: what ``ftclip fit --resume RUN key=value`` may change (in stages not finished yet)
RESUMABLE_OPTIMIZER_KEYS = ("lr", "weight_decay", "bias_lr_factor", "momentum", "eps")
#: every schedule key but ``interval``: the restored scheduler counts epochs or steps as the stage began
RESUMABLE_SCHEDULE_KEYS = tuple(k for k in ScheduleConfig.__dataclass_fields__ if k != "interval")


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is an ftclip run directory (a ``config.yaml`` with a ``state.json`` or ``checkpoints/``)."""
    path = Path(path)
    return (path / "config.yaml").is_file() and ((path / "state.json").is_file() or (path / "checkpoints").is_dir())


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._created_below: Path | None = None  # set by create(): the folder its mkdir started from

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, cfg) -> "RunDir":
        if cfg.run.dir:
            path = Path(cfg.run.dir)
        else:
            stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            path = Path(cfg.run.root) / str(cfg.name) / stamp
        if path.exists() and any(path.iterdir()):
            raise FtclipError(
                f"run directory {path} already exists and is not empty; resume it with `ftclip fit --resume {path}` "
                "or choose another run.dir"
            )
        made = nearest_existing(path)  # what discard() may remove: the folders this call creates
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise FtclipError(
                f"run directory {path} is not writable ({exc.strerror}); set run.dir or run.root to a writable folder"
            ) from None
        run = cls(path)
        run._created_below = made
        cfg.run.dir = str(path)
        atomic_write_text(run.config_path, to_yaml(cfg))
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if not run.config_path.is_file():
            raise FtclipError(f"{path} is not an ftclip run directory (no config.yaml); give the folder `ftclip fit` made")
        if not os.access(run.path, os.W_OK):
            raise FtclipError(f"run directory {path} is not writable")
        return run

    def started(self) -> bool:
        """Whether the run holds results worth keeping: a checkpoint, a completed stage or recorded metrics."""
        return bool(self.completed_stages() or self.metrics() or any(self.path.glob("checkpoints/*/*.ckpt")))

    def discard(self) -> None:
        """Remove what :meth:`create` made in this process (a failed start: nothing worth keeping): the run
        directory (emptied only, if it existed before) and the empty folders created above it."""
        path, made = Path(os.path.abspath(self.path)), self._created_below
        if not path.is_dir() or made is None:
            return
        if made == path:
            for child in path.iterdir():
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
            return
        shutil.rmtree(path)
        parent = path.parent
        while made in parent.parents and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def load_config(self):
        return load_saved_config(self.config_path)

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    def checkpoint_dir(self, stage: str) -> Path:
        return self.path / "checkpoints" / stage

    def last_checkpoint(self, stage: str) -> Path | None:
        path = self.checkpoint_dir(stage) / "last.ckpt"
        return path if path.is_file() else None

    def log_dir(self) -> Path:
        return self.path / "logs"

    def plots_dir(self) -> Path:
        path = self.path / "plots"
        path.mkdir(exist_ok=True)
        return path

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    # ------------------------------------------------------------------ one process per run
    def lock(self, command: str) -> RunLock:
        """Take the run's lock (FtclipError naming the holder if another process has it); use as a context."""
        return RunLock(self.lock_path).acquire(command)

    def lock_holder(self) -> dict | None:
        """Who trains this run now (``{"pid", "host", "command", "since"}``), or None."""
        return RunLock(self.lock_path).holder()

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    def state(self) -> dict:
        """``state.json``: {"completed": [stages], "hashes": {path: sha256}, ...}; {} before the first write."""
        try:
            state = read_json(self.state_path, {})
        except (OSError, ValueError) as exc:
            raise FtclipError(f"{self.state_path} cannot be read ({exc}); restore it from a copy") from None
        if not isinstance(state, dict):
            raise FtclipError(f"{self.state_path} is not a JSON object; restore it from a copy")
        return state

    def update_state(self, change) -> None:
        """Read ``state.json``, apply ``change(state)`` in place, write it atomically (other sections kept)."""
        state = self.state()
        change(state)
        atomic_write_json(self.state_path, state)

    def completed_stages(self) -> list[str]:
        return list(self.state().get("completed", []))

    def mark_completed(self, stage: str, epoch: int | None = None, step: int | None = None) -> None:
        def change(state: dict) -> None:
            done = state.setdefault("completed", [])
            if stage not in done:
                done.append(stage)
            entry = {"status": "finished", "time": _now()}
            entry.update({k: v for k, v in (("epoch", epoch), ("step", step)) if v is not None})
            state.setdefault("stages", {})[stage] = entry

        self.update_state(change)

    def set_stage_status(self, stage: str, status: str, **fields) -> None:
        """``running`` / ``interrupted`` / ``failed`` (with ``reason``), plus position fields."""
        def change(state: dict) -> None:
            entry = {"status": status, "time": _now()}
            entry.update({k: v for k, v in fields.items() if v is not None})
            state.setdefault("stages", {})[stage] = entry

        self.update_state(change)

    def record_interruption(self, stage: str | None, epoch: int | None, step: int | None, signal: str,
                            note: str = "") -> None:
        def change(state: dict) -> None:
            entry = {"stage": stage, "epoch": epoch, "step": step, "signal": signal, "time": _now()}
            if note:
                entry["note"] = note
            state.setdefault("interruptions", []).append(entry)
            if stage is not None and stage not in state.get("completed", []):
                state.setdefault("stages", {})[stage] = {"status": "interrupted", "epoch": epoch, "step": step,
                                                         "signal": signal, "time": entry["time"]}

        self.update_state(change)

    def record_history(self, command: str, overrides: list[str] | None = None, changes: dict | None = None) -> None:
        """One entry per ``ftclip fit --resume`` of this run: who, when, and what it changed."""
        def change(state: dict) -> None:
            entry = {"command": command, "time": _now(), "pid": os.getpid(), "host": socket.gethostname()}
            if overrides:
                entry["overrides"] = list(overrides)
            if changes:
                entry["changes"] = changes
            state.setdefault("history", []).append(entry)

        self.update_state(change)

    def stage_status(self, stage: str) -> dict:
        """``{"status": ..., ...}`` of a stage; ``not started`` when state.json says nothing of it."""
        state = self.state()
        if stage in state.get("completed", []):
            return {"status": "finished", **{k: v for k, v in state.get("stages", {}).get(stage, {}).items()
                                             if k != "status"}}
        return dict(state.get("stages", {}).get(stage) or {"status": "not started"})

    def describe_stage(self, stage: str) -> str:
        """A few words on where a stage stands, e.g. ``interrupted at epoch 1, step 5 (SIGTERM)``."""
        st = self.stage_status(stage)
        status = st.get("status")
        at = f" at epoch {st['epoch']}, step {st['step']}" if "epoch" in st and "step" in st else ""
        if status == "interrupted":
            return f"interrupted{at}" + (f" ({st['signal']})" if st.get("signal") else "")
        if status == "failed":
            return f"failed{at} ({st.get('reason', 'error')})"
        if status == "running":
            holder = self.lock_holder()
            if holder:
                return f"being trained now by {describe(holder)}"
            return "stopped while training (its process ended without finishing it)"
        return str(status)

    def is_finished(self, cfg=None) -> bool:
        """Every stage of the run's config is finished."""
        cfg = cfg if cfg is not None else self.load_config()
        done = set(self.completed_stages())
        return all(name in done for name in cfg.stages)

    # ------------------------------------------------------------------ file hashes
    def relative(self, path: str | Path) -> str:
        """``path`` relative to the run directory, as state.json records it (``checkpoints/image/last.ckpt``)."""
        return Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(self.path))).as_posix()

    def record_hash(self, path: str | Path, sha256: str | None, in_place: bool = True) -> None:
        """Record the SHA-256 of a file of the run in ``state.json`` ("hashes"); ``in_place=False``: the file is
        about to replace the one at ``path`` (both are accepted until it is recorded in place, so a crash
        between the two writes never condemns a good file); ``sha256=None``: the file was removed."""
        rel = self.relative(path)

        def change(state: dict) -> None:
            hashes, pending = state.setdefault("hashes", {}), state.setdefault("pending_hashes", {})
            if sha256 is None:
                hashes.pop(rel, None)
                pending.pop(rel, None)
            elif not in_place:
                pending[rel] = sha256
            else:
                hashes[rel] = sha256
                pending.pop(rel, None)
            if not pending:
                del state["pending_hashes"]

        self.update_state(change)

    def recorded_hashes(self, path: str | Path) -> list[str]:
        """The SHA-256 values ``path`` may have (none: written by an ftclip that recorded no hashes)."""
        state, rel = self.state(), self.relative(path)
        return [h for h in (state.get("hashes", {}).get(rel), state.get("pending_hashes", {}).get(rel)) if h]

    def verify_hash(self, path: str | Path) -> bool:
        """Raise FtclipError if ``path`` does not have the SHA-256 recorded when it was written; False if
        none was recorded."""
        expected = self.recorded_hashes(path)
        if not expected:
            return False
        actual = sha256_file(path)
        if actual not in expected:
            raise FtclipError(
                f"checkpoint {path} is corrupt: its SHA-256 is {actual[:16]}..., but {expected[0][:16]}... was "
                f"recorded in {self.state_path} when it was written (the file changed on disk: a disk fault, "
                f"a bad copy or an edit); {_retrain(self, Path(path))}"
            )
        return True

    def metrics(self) -> dict:
        return read_json(self.metrics_path, {})

    def record_metrics(self, key: str, values: dict) -> None:
        metrics = self.metrics()
        metrics[key] = values
        atomic_write_json(self.metrics_path, metrics)

    def best_checkpoint(self, stage: str) -> Path | None:
        path = self.checkpoint_dir(stage) / "best.ckpt"
        return path if path.is_file() else None


# ---------------------------------------------------------------------- which checkpoint a command uses
CHECKPOINT_CHOICES = ("last", "best")


def select_checkpoint(run: RunDir, stage: str | None = None, cfg=None, which: str = "last") -> tuple[str, Path]:
    """The one rule for commands that read a run (export, embed, score, predict, eval): ``(stage, checkpoint)``.

    Without ``stage`` the run must be finished (every stage of its config completed): the last
    stage's checkpoint. With ``stage`` (``--stage prompts``) that stage must be finished: its
    checkpoint. ``which``: ``last`` (the stage's final weights) or ``best``
    (``checkpoints/<stage>/best.ckpt``, kept with ``stages.<stage>.monitor``); ``cfg``: the run's
    config if already loaded. Anything else is one FtclipError naming which stages are done and
    which are not, and how to go on.
    """
    if which not in CHECKPOINT_CHOICES:
        raise FtclipError(f"--checkpoint {which!r} is not one of {', '.join(CHECKPOINT_CHOICES)}")
    cfg = cfg if cfg is not None else run.load_config()
    names = list(cfg.stages)
    completed = set(run.completed_stages())
    done = [n for n in names if n in completed]
    if stage is None:
        pending = [n for n in names if n not in completed]
        if pending:
            finished = (f"stage{'s' if len(done) > 1 else ''} {_names(done)} {'are' if len(done) > 1 else 'is'} "
                        "finished, " if done else "no stage is finished: ")
            unfinished = "; ".join(f"stage '{n}' is {run.describe_stage(n)}" for n in pending)
            hint = f", or pass --stage {done[-1]} to use the weights of the finished stage" if done else ""
            raise FtclipError(f"run {run.path} is not finished: {finished}{unfinished}. Finish it with "
                              f"`ftclip fit --resume {run.path}`{hint}")
        chosen = names[-1]
    else:
        if stage not in names:
            raise FtclipError(f"run {run.path} has no stage '{stage}'; its stages: {', '.join(names)}")
        if stage not in completed:
            others = f"; finished: {_names(done)}" if done else "; no stage is finished yet"
            raise FtclipError(f"stage '{stage}' of run {run.path} is not finished ({run.describe_stage(stage)}){others}. "
                              f"Finish it with `ftclip fit --resume {run.path}`")
        chosen = stage
    if which == "best":
        best = run.best_checkpoint(chosen)
        if best is None:
            raise FtclipError(f"stage '{chosen}' of run {run.path} kept no best checkpoint "
                              f"({run.checkpoint_dir(chosen) / 'best.ckpt'} does not exist): it is kept when the "
                              f"recipe sets stages.{chosen}.monitor; use --checkpoint last")
        return chosen, best
    ckpt = run.last_checkpoint(chosen)
    if ckpt is None:
        raise FtclipError(f"stage '{chosen}' is marked finished in {run.state_path} but "
                          f"{run.checkpoint_dir(chosen) / 'last.ckpt'} is missing; restore it, or remove '{chosen}' "
                          f"from state.json and `ftclip fit --resume {run.path}` to train that stage again")
    return chosen, ckpt


def _names(stages: list[str]) -> str:
    return ", ".join(f"'{s}'" for s in stages)


# ---------------------------------------------------------------------- --resume overrides
def resume_config(run: RunDir, cfg, overrides: list[str]):
    """``cfg`` with ``ftclip fit --resume RUN key=value`` overrides applied and validated: ``(cfg, changes)``.

    Only the optimizer hyper-parameters and the schedule of stages not finished yet may change
    (:data:`RESUMABLE_OPTIMIZER_KEYS`, :data:`RESUMABLE_SCHEDULE_KEYS`): the engine puts them onto
    the restored optimizer and rebuilds the schedule at the stage's position. Anything else would
    change what the saved checkpoints were trained with (data, model, batches, stage length), so it
    is one ConfigError with the reason. ``changes`` maps each key to ``[old, new]``.
    """
    if not overrides:
        return cfg, {}
    completed = set(run.completed_stages())
    for item in overrides:
        key = item.partition("=")[0].strip()
        _check_resume_key(run, cfg, key, completed)
    source = f"{run.config_path} (with --resume overrides {' '.join(overrides)})"
    raw = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), parse_overrides(overrides))
    new = validate(raw, source)
    changes = {}
    for item in overrides:
        key = item.partition("=")[0].strip()
        old, value = OmegaConf.select(cfg, key), OmegaConf.select(new, key)
        old = OmegaConf.to_container(old) if OmegaConf.is_config(old) else old
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if old != value:
            changes[key] = [old, value]
    return new, changes


def _check_resume_key(run: RunDir, cfg, key: str, completed: set) -> None:
    allowed = (f"stages.<stage>.optimizer.{{{','.join(RESUMABLE_OPTIMIZER_KEYS)}}} and "
               f"stages.<stage>.schedule.<key> (but interval) of stages not finished yet")
    parts = key.split(".")
    if len(parts) != 4 or parts[0] != "stages" or parts[2] not in ("optimizer", "schedule"):
        raise ConfigError(
            f"--resume cannot change '{key}': a resume continues the saved checkpoints, and that key would change "
            f"what they were trained with (data, model, batches or stage length). It accepts {allowed}; for other "
            "changes start a new run (ftclip fit RECIPE key=value)")
    stage, section, name = parts[1], parts[2], parts[3]
    if stage not in cfg.stages:
        raise ConfigError(f"--resume override '{key}': run {run.path} has no stage '{stage}'; "
                          f"its stages: {', '.join(cfg.stages)}")
    if stage in completed:
        raise ConfigError(f"--resume override '{key}': stage '{stage}' is finished, so its optimizer and schedule "
                          "are not used again; only stages not finished yet can change")
    if section == "optimizer" and name not in RESUMABLE_OPTIMIZER_KEYS:
        why = ("the restored optimizer state belongs to the optimizer the stage started with"
               if name in ("name", "fused") else "it is not an optimizer setting")
        raise ConfigError(f"--resume cannot change '{key}': {why}. It accepts {allowed}")
    if section == "schedule" and name == "interval":
        raise ConfigError(f"--resume cannot change '{key}': the restored schedule counts "
                          f"{cfg.stages[stage].schedule.interval}s since the stage began. It accepts {allowed}")
    if section == "schedule" and name not in RESUMABLE_SCHEDULE_KEYS:
        raise ConfigError(f"--resume override '{key}': '{name}' is not a schedule key "
                          f"(one of {', '.join(RESUMABLE_SCHEDULE_KEYS)})")


# ---------------------------------------------------------------------- checkpoints
def _retrain(run: "RunDir | None", path: Path) -> str:
    """What to do about a damaged checkpoint ``path``."""
    if run is None:
        return "restore it from a copy"
    stage = path.parent.name
    extra = (f" after removing '{stage}' from \"completed\" in {run.state_path}"
             if stage in run.completed_stages() else "")
    return (f"restore it from a copy, or delete it and retrain stage '{stage}' from its beginning with "
            f"`ftclip fit --resume {run.path}`{extra} (the other stages' checkpoints are kept)")


_NOTED: set[str] = set()


def note_once(key: str, message: str) -> None:
    """Print ``message`` to stderr the first time ``key`` is seen in this process."""
    if key not in _NOTED:
        _NOTED.add(key)
        print(f"note: {message}", file=sys.stderr, flush=True)


def _check_checkpoint(path: Path, run: "RunDir | None") -> bool:
    """FtclipError if ``path`` is damaged; True if its SHA-256 was checked, False if only its zip CRC-32s were."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise zipfile.BadZipFile("no data.pkl inside")
            if run is not None and run.verify_hash(path):
                return True
            bad = archive.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"its entry {bad} fails its CRC-32 check")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FtclipError(f"checkpoint {path} is damaged ({exc}); {_retrain(run, path)}") from None
    return False


def verify_checkpoint(path: Path, run: "RunDir | None" = None) -> Path:
    """Check ``path`` before anything trusts it: its zip structure (torch checkpoints are zip archives), then
    its SHA-256 against the one ``run`` recorded when it was written. A checkpoint of a run made before
    ftclip recorded hashes (or one outside a run) is checked against its zip CRC-32s instead, with a note.

    Atomic writes mean a crash never leaves a truncated ``last.ckpt`` (leftover ``.last.ckpt.*.tmp``
    files are never read); this catches a file damaged afterwards (disk, copy) with a clear message.
    """
    path = Path(path)
    if not _check_checkpoint(path, run) and run is not None:
        note_once(str(run.path), f"run {run.path} records no checkpoint hashes (written by an older ftclip): its "
                                 "checkpoints are checked by their zip CRC-32s only")
    return path


def check_run(run: RunDir) -> list[tuple[bool, str, str]]:
    """``ftclip verify`` of a run: ``(ok, file, what)`` for its config, state and every checkpoint."""
    rows: list[tuple[bool, str, str]] = []
    try:
        run.load_config()
        rows.append((True, "config.yaml", "a valid recipe"))
    except FtclipError as exc:
        rows.append((False, "config.yaml", str(exc)))
    try:
        completed = run.completed_stages()
        rows.append((True, "state.json", f"completed stages: {', '.join(completed) or 'none'}"))
    except FtclipError as exc:
        return rows + [(False, "state.json", str(exc))]
    found = sorted(run.path.glob("checkpoints/*/*.ckpt"))
    for path in found:
        try:
            hashed = _check_checkpoint(path, run)
            rows.append((True, run.relative(path), "SHA-256 as recorded" if hashed else
                         "no hash recorded (older ftclip): zip CRC-32s match"))
        except FtclipError as exc:
            rows.append((False, run.relative(path), str(exc)))
    for i, stage in enumerate(completed):
        if run.last_checkpoint(stage) is None:  # needed unless a later completed stage has its own
            needed = not any(run.last_checkpoint(later) for later in completed[i + 1:])
            rows.append((not needed, f"checkpoints/{stage}/last.ckpt", f"stage '{stage}' is completed but its "
                         f"checkpoint is missing{'' if needed else ' (not needed: a later stage has its own)'}"))
    return rows


def read_checkpoint(path: Path, run: "RunDir | None" = None) -> dict:
    """A verified checkpoint's content (on the CPU); FtclipError naming the file if it cannot be read."""
    verify_checkpoint(path, run)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, pickle and EOF errors for damaged archives
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise FtclipError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {first}); "
                          f"{_retrain(run, Path(path))}") from None


def apply_checkpoint(module, state: dict) -> None:
    """Load a checkpoint's weights into a task module (refusing another architecture by name)."""
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"], strict=True)


def load_weights(module, ckpt: Path, run: "RunDir | None" = None) -> None:
    """The weights of checkpoint file ``ckpt`` (of ``run``: its hash is checked) into ``module``."""
    apply_checkpoint(module, read_checkpoint(ckpt, run))


def load_module_from_run(run: RunDir, stage: str | None = None, checkpoint: str = "last", cfg=None):
    """The trained module of a run and its config: the checkpoint :func:`select_checkpoint` picks
    (default: the final weights of the finished run; ``stage``: of that finished stage; an
    unfinished run is refused). ``cfg``: build the module with this config instead of the run's
    own (``ftclip eval RUN eval.key=...``); the model comes from the checkpoint either way.

    Needs neither the data nor the pretrained weights: the module's shape (``info``) and the
    backbone's description (QuickGELU, input statistics) are stored in every checkpoint, which
    holds all the weights.
    """
    cfg = run.load_config() if cfg is None else cfg
    _, ckpt = select_checkpoint(run, stage, cfg, which=checkpoint)
    state = read_checkpoint(ckpt, run)
    info = state.get("ftclip", {}).get("info")
    if info is None:
        raise FtclipError(f"checkpoint {ckpt} was not written by ftclip (no 'ftclip' metadata)")
    backbone = state["ftclip"].get("backbone", {})
    build_cfg = copy.deepcopy(cfg)  # the run's own config stays as recorded
    build_cfg.model.pretrained = None  # every weight comes from the checkpoint
    for key in ("quick_gelu", "mean", "std", "interpolation"):
        if backbone.get(key) is not None:
            build_cfg.model[key] = backbone[key]
    module = get_task(str(cfg.task)).build_module(build_cfg, info)
    apply_checkpoint(module, state)
    return module.eval(), cfg
