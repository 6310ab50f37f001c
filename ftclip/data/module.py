"""What every task's LightningDataModule shares: stage switching, rank, loaders, preprocessing.

A task's datamodule subclasses :class:`StagedDataModule` (part of the task contract,
ftclip/tasks/base.py), parses its data in :meth:`load` and builds its loaders with
:meth:`eval_loader` (query/gallery/eval sets, sharded by the sampler it passes) and
:meth:`train_loader` (resumable mid-epoch: the sampler position is saved in every checkpoint,
see ftclip/data/resume.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import lightning as L
import torch
from torch.utils.data import DataLoader

from ftclip.data.resume import ResumableDataLoader, resumable_loader
from ftclip.data.tables import drop_repeats


class StagedDataModule(L.LightningDataModule, ABC):
    def __init__(self, cfg, preprocess_size: tuple[int, int], mean, std, interpolation: str | None, stage_kind: str):
        super().__init__()
        self.cfg = cfg
        # what the recipe says; set_preprocess puts the backbone's resolved values (tag mean/std/kernel) in place
        self.size, self.mean, self.std = preprocess_size, mean, std
        self.interpolation = interpolation or "bicubic"  # evaluation (and stage-1 cache) resize kernel
        self.train_interpolation = cfg.model.train_interpolation or self.interpolation
        self.stage_kind = stage_kind
        self.stage_batch_size = int(cfg.data.batch_size)
        self.bad_images: list[tuple[str, str]] = []
        self.notes: list[str] = []  # what loading changed (e.g. repeated rows dropped); `ftclip data check` warns

    def drop_repeats(self, items: list, key, source: str) -> list:
        """``items`` under the recipe's ``data.on_duplicate`` policy (ftclip/data/tables.py), noting what was dropped."""
        kept, note = drop_repeats(items, key, str(self.cfg.data.on_duplicate), source)
        if note is not None:
            print(note, flush=True)
            self.notes.append(note)
        return kept

    def set_preprocess(self, preprocess) -> None:
        """Use the backbone's resolved input size, mean/std and resize kernels (evaluation, training)."""
        self.size, self.mean, self.std = preprocess.image_size, preprocess.mean, preprocess.std
        self.interpolation, self.train_interpolation = preprocess.interpolation, preprocess.train_interpolation

    def set_stage(self, kind: str, batch_size: int | None) -> None:
        self.stage_kind = kind
        self.stage_batch_size = int(batch_size or self.cfg.data.batch_size)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _worker_kwargs(self, workers: int | None = None) -> dict:
        workers = int(self.cfg.data.num_workers if workers is None else workers)
        return {"num_workers": workers, "persistent_workers": workers > 0,
                "pin_memory": bool(self.cfg.data.pin_memory) and torch.cuda.is_available()}

    def eval_loader(self, dataset, **kwargs) -> DataLoader:
        return DataLoader(dataset, **self._worker_kwargs(), **kwargs)

    def train_loader(self, dataset, *, workers: int | None = None, **kwargs) -> ResumableDataLoader:
        loader = resumable_loader(self, dataset, **self._worker_kwargs(workers), **kwargs)
        restored, self._restored_train_state = getattr(self, "_restored_train_state", None), None
        if restored:
            # put the loader at the checkpoint's epoch and batch before Lightning's first fetch: it fetches one
            # batch ahead from a loader without len() (P x K) before it calls set_epoch, and after a resume from
            # an epoch's end it loads no loader state of its own
            loader.load_state_dict(restored)
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict:
        """Saved in every checkpoint by Lightning: the training loader's position (see :meth:`train_loader`)."""
        loader = getattr(self, "_train_loader", None)
        if loader is None or getattr(self, "trainer", None) is None:
            return {}
        return {"train_loader": loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Called by Lightning when a stage resumes from a checkpoint, before it asks for the loader."""
        self._restored_train_state = state.get("train_loader")

    # ------------------------------------------------------------------ the contract
    @abstractmethod
    def load(self):
        """Parse the data set(s) and decode every image once (``data.on_bad_image``); idempotent."""

    @abstractmethod
    def summary(self) -> str:
        """What was loaded, printed before training (a few lines)."""

    @property
    @abstractmethod
    def info(self) -> dict:
        """What the module's shape depends on (e.g. the number of identities); stored in checkpoints."""

    @abstractmethod
    def check_splits(self) -> dict[str, list[tuple[str, dict]]]:
        """Every split for ``ftclip data check``: ``{split: [(path, {label: value}), ...]}``; training splits
        are named ``train``, ``unlabeled`` or ``labeled``, the others are evaluation splits."""
