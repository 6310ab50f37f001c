"""Runs on disk: the run directory, checkpoint verification, and loading a trained module.

Loading is not training: export, inference and the engine's resume all read runs through this
module, which never imports the training engine.

    <run.dir>/                     default runs/<name>/<YYYY-mm-dd_HH-MM-SS>
      config.yaml                  the resolved recipe (a resume reads only this)
      state.json                   completed stages, in order; "hashes": {checkpoint path: SHA-256}
      metrics.json                 {"initial": {...}, "<stage>": {...}} final metrics per stage
      checkpoints/<stage>/last.ckpt  written atomically every N steps / each epoch / at stage end
      checkpoints/<stage>/best.ckpt  with stages.<stage>.monitor: the best evaluation so far (atomically)
      logs/<stage>/metrics.csv     the stage's history, exactly once across resumes (ftclip/logs.py)
      plots/                       loss, lr and validation curves, task plots (re-ID rank list, IQA scatter)
      export/                      adapted encoders (ftclip export)
      report.html                  the run on one self-contained page (ftclip/artifacts/report.py)
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
import sys
import zipfile
from pathlib import Path

import torch

from ftclip.errors import FtclipError
from ftclip.io import atomic_write_json, atomic_write_text, nearest_existing, read_json, sha256_file
from ftclip.recipe import load_saved_config, to_yaml
from ftclip.tasks import get_task


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

    def mark_completed(self, stage: str) -> None:
        def change(state: dict) -> None:
            done = state.setdefault("completed", [])
            if stage not in done:
                done.append(stage)

        self.update_state(change)

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
    """The checkpoint export, inference and ``ftclip eval`` read: ``(stage, path)``.

    ``stage`` None: the last completed stage; ``which``: ``last`` (its final weights) or ``best``
    (``checkpoints/<stage>/best.ckpt``, kept with ``stages.<stage>.monitor``); ``cfg``: the run's
    config if already loaded. Every command that loads a run chooses its checkpoint here, so one
    rule holds for all of them.
    """
    if which not in CHECKPOINT_CHOICES:
        raise FtclipError(f"--checkpoint {which!r} is not one of {', '.join(CHECKPOINT_CHOICES)}")
    completed = run.completed_stages()
    if stage is None:
        if not completed:
            raise FtclipError(f"run {run.path} has no completed stage with a checkpoint; train it first (ftclip fit), "
                              f"or finish it with `ftclip fit --resume {run.path}`")
        stage = completed[-1]
    else:
        stages = list((cfg if cfg is not None else run.load_config()).stages)
        if stage not in stages:
            raise FtclipError(f"--stage {stage!r} is not a stage of run {run.path}; its stages: {', '.join(stages)}")
    path = run.checkpoint_dir(stage) / f"{which}.ckpt"
    if not path.is_file():
        if which == "best":
            raise FtclipError(f"stage '{stage}' of run {run.path} kept no best checkpoint ({path} does not exist): "
                              f"it is kept when the recipe sets stages.{stage}.monitor; use --checkpoint last")
        raise FtclipError(f"stage '{stage}' of run {run.path} has no checkpoint ({path} does not exist); "
                          f"train it first (`ftclip fit --resume {run.path}`)")
    return stage, path


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
    (default: the final weights of the last completed stage). ``cfg``: build the module with this
    config instead of the run's own (``ftclip eval RUN eval.key=...``); the model comes from the
    checkpoint either way.

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
