"""Runs on disk: the run directory, checkpoint verification, and loading a trained module.

Loading is not training: export, inference and the engine's resume all read runs through this
module, which never imports the training engine.

    <run.dir>/                     default runs/<name>/<YYYY-mm-dd_HH-MM-SS>
      config.yaml                  the resolved recipe (a resume reads only this)
      state.json                   completed stages, in order
      metrics.json                 {"initial": {...}, "<stage>": {...}} final metrics per stage
      checkpoints/<stage>/last.ckpt  written atomically every N steps / each epoch / at stage end
      logs/<stage>/metrics.csv     per-step and per-epoch logs (Lightning CSVLogger)
      plots/                       loss curves per stage, task plots (e.g. IQA scatter)
      export/                      adapted encoders (ftclip export)
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import shutil
import zipfile
from pathlib import Path

import torch

from ftclip.errors import FtclipError
from ftclip.io import atomic_write_json, atomic_write_text, read_json
from ftclip.recipe import load_saved_config, to_yaml
from ftclip.tasks import get_task


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

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

    def discard_if_unused(self) -> bool:
        """Remove a run directory that holds nothing but its ``config.yaml`` (a run that failed on
        bad input before any work); return whether it was removed."""
        if not self.path.is_dir():
            return False
        files = [p for p in self.path.rglob("*") if p.is_file()]
        if any(p != self.config_path for p in files):
            return False
        shutil.rmtree(self.path)
        return True

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
    def completed_stages(self) -> list[str]:
        return list(read_json(self.path / "state.json", {}).get("completed", []))

    def mark_completed(self, stage: str) -> None:
        done = self.completed_stages()
        if stage not in done:
            done.append(stage)
        atomic_write_json(self.path / "state.json", {"completed": done})

    def metrics(self) -> dict:
        return read_json(self.metrics_path, {})

    def record_metrics(self, key: str, values: dict) -> None:
        metrics = self.metrics()
        metrics[key] = values
        atomic_write_json(self.metrics_path, metrics)

    def final_checkpoint(self) -> Path | None:
        """The last checkpoint of the last completed stage (what export and scoring use)."""
        for stage in reversed(self.completed_stages()):
            ckpt = self.last_checkpoint(stage)
            if ckpt:
                return ckpt
        return None


# ---------------------------------------------------------------------- checkpoints
def verify_checkpoint(path: Path) -> Path:
    """A cheap integrity check before a resume trusts ``path`` (torch checkpoints are zip archives).

    Atomic writes mean a crash never leaves a truncated ``last.ckpt`` (leftover ``.last.ckpt.*.tmp``
    files are never read); this catches a file damaged afterwards (disk, copy) with a clear message.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise zipfile.BadZipFile("no data.pkl inside")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FtclipError(
            f"checkpoint {path} is damaged ({exc}); delete it to restart that stage from its beginning "
            f"(the previous stages' checkpoints are kept), then `ftclip fit --resume` again"
        ) from None
    return path


def read_checkpoint(path: Path) -> dict:
    """A verified checkpoint's content (on the CPU)."""
    return torch.load(verify_checkpoint(path), map_location="cpu", weights_only=False)


def apply_checkpoint(module, state: dict) -> None:
    """Load a checkpoint's weights into a task module (refusing another architecture by name)."""
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"], strict=True)


def load_weights(module, ckpt: Path) -> None:
    """The weights of checkpoint file ``ckpt`` into ``module``."""
    apply_checkpoint(module, read_checkpoint(ckpt))


def load_module_from_run(run: RunDir):
    """The trained module of a run (final weights of its last completed stage) and its config.

    Needs neither the data nor the pretrained weights: the module's shape (``info``) and the
    backbone's description (QuickGELU, input statistics) are stored in every checkpoint, which
    holds all the weights.
    """
    cfg = run.load_config()
    ckpt = run.final_checkpoint()
    if ckpt is None:
        raise FtclipError(f"run {run.path} has no completed stage with a checkpoint; train it first (ftclip fit)")
    state = read_checkpoint(ckpt)
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
