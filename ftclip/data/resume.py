"""Training loaders that resume mid-epoch exactly.

Lightning (2.x) saves ``state_dict()`` of every training ``DataLoader`` that has one into
each checkpoint and calls ``load_state_dict()`` on resume, *before* it creates the first
iterator (see ``_FitLoop.setup_data``). A plain ``DataLoader`` has neither, so a resume from a
mid-epoch checkpoint would start the epoch's sample order again from its first batch (and,
for epochs > 0, with the sampler still at epoch 0).

:func:`resumable_loader` builds a :class:`ResumableDataLoader` around a batch sampler that
is deterministic per ``(seed, epoch)`` (ftclip's samplers are). Its state is
``{"epoch", "done", "finished", "total"}``: the epoch and how many of its batches the training
loop had finished (read from the Trainer's progress, so loader prefetching and worker queues do not
matter). On resume the sampler is put back at that epoch and the finished batches are
skipped by index -- no image is decoded for them. A checkpoint written at an epoch's end
resumes at the next epoch's first batch.
"""

from __future__ import annotations

from typing import Any, Callable

from torch.utils.data import BatchSampler, DataLoader, Sampler

from ftclip.errors import FtclipError


class SkippingBatchSampler(Sampler):
    """Wraps a batch sampler; its next iteration can skip a given number of leading batches."""

    def __init__(self, inner):
        self.inner = inner
        self._skip: tuple[int, int] | None = None  # (epoch, batches to skip in it)
        self.iterated_epoch: int | None = None  # the epoch of the latest iteration (what the loop's count is of)

    @property
    def epoch(self) -> int:
        return int(getattr(self.inner, "epoch", getattr(getattr(self.inner, "sampler", None), "epoch", 0)))

    @property
    def sampler(self) -> "SkippingBatchSampler":
        """Where Lightning's ``_set_sampler_epoch`` looks (``loader.sampler`` and ``loader.batch_sampler.sampler``,
        never ``loader.batch_sampler`` itself): without it the sampler stayed at epoch 0 in every epoch of an
        uninterrupted run (same order, same augmentation seeds), while a resume set the right epoch."""
        return self

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)
        elif hasattr(getattr(self.inner, "sampler", None), "set_epoch"):
            self.inner.sampler.set_epoch(epoch)

    def skip_next(self, epoch: int, count: int) -> None:
        """The next iteration, if it is of ``epoch``, skips its first ``count`` batches."""
        self._skip = (int(epoch), max(0, int(count)))

    def __iter__(self):
        pending, self._skip = self._skip, None
        skip = pending[1] if pending is not None and pending[0] == self.epoch else 0
        self.iterated_epoch = self.epoch
        for i, batch in enumerate(self.inner):
            if i >= skip:
                yield batch

    def __len__(self) -> int:
        """The inner sampler's; a TypeError for one without (a P x K sampler), so the loader has none either."""
        return len(self.inner)

    def max_batches(self) -> int:
        """Batches per epoch: the inner sampler's ``len()``, or its upper bound when it has none."""
        bound = getattr(self.inner, "max_batches", None)
        return int(bound()) if bound is not None else len(self.inner)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is saved in Lightning checkpoints."""

    def __init__(self, dataset, batch_sampler: SkippingBatchSampler, progress: Callable[[], tuple[int, int, bool]],
                 **kwargs):
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict[str, Any]:
        epoch, done, finished = self._progress()
        if self.batch_sampler.iterated_epoch is not None:
            # the batch counts are of the epoch last iterated; Lightning's epoch counter has moved past it when
            # the checkpoint is written after the epoch ended (the engine's final save after a max_steps stop)
            epoch = self.batch_sampler.iterated_epoch
        return {"epoch": int(epoch), "done": int(done), "finished": bool(finished), "total": self.batch_sampler.max_batches()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, done, total = int(state["epoch"]), int(state["done"]), int(state["total"])
        if total != self.batch_sampler.max_batches():
            raise FtclipError(
                f"cannot resume: the checkpoint was written with {total} training batches per epoch, this loader has "
                f"{self.batch_sampler.max_batches()}: the data or the batch size changed since the run started; put them back "
                "as they were (the batch sizes in RUN_DIR/config.yaml, the data set's files), or delete the stage's "
                "last.ckpt to train that stage again from its beginning"
            )
        if state.get("finished") or done >= total:  # written at the epoch's end: the next one starts afresh
            epoch, done = epoch + 1, 0
        self.batch_sampler.set_epoch(epoch)
        self.batch_sampler.skip_next(epoch, done)


def trainer_progress(owner) -> Callable[[], tuple[int, int, bool]]:
    """``() -> (epoch, batches finished in it, epoch finished)`` from ``owner.trainer``.

    ``owner`` is a LightningDataModule. "Finished" is Lightning's own end-of-data flag, so an
    epoch that yields fewer batches than its bound (a P x K sampler's can) is still recognised.
    """

    def progress() -> tuple[int, int, bool]:
        trainer = owner.trainer
        if trainer is None:
            return 0, 0, False
        batches = trainer.fit_loop.epoch_loop.batch_progress
        return trainer.current_epoch, batches.current.processed, bool(batches.is_last_batch)

    return progress


def resumable_loader(owner, dataset, *, batch_sampler=None, sampler=None, batch_size: int = 1,
                     drop_last: bool = False, **kwargs) -> ResumableDataLoader:
    """A training loader over ``batch_sampler`` (or ``sampler`` batched by ``batch_size``).

    ``owner`` is the LightningDataModule (its ``trainer`` gives the progress to save).
    """
    if batch_sampler is None:
        if sampler is None:
            raise ValueError("resumable_loader needs a batch_sampler or a sampler")
        batch_sampler = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
    return ResumableDataLoader(dataset, SkippingBatchSampler(batch_sampler), trainer_progress(owner), **kwargs)
