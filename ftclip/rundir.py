"""The run directory: everything a run writes, and what a resume reads back.

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

import datetime as dt
import os
from pathlib import Path

from ftclip.config import load_saved_config, to_yaml
from ftclip.errors import FtclipError
from ftclip.io import atomic_write_json, atomic_write_text, read_json


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
        import shutil

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
