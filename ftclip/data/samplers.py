"""Samplers that are deterministic per (seed, epoch) and split work across DDP ranks.

Each yields ``(index, aug_seed)`` pairs: the augmentation seed travels with the index so a
sample's augmentation does not depend on which worker loads it. ``set_epoch`` is called by
Lightning at every epoch start.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from torch.utils.data import Sampler

from ftclip.errors import ConfigError, DataError


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def max_pk_batches(chunks: list[int], p: int) -> int:
    """The most batches of ``p`` distinct identities that identities with ``chunks[i]`` K-image
    chunks can form: the largest ``B`` with ``sum_i min(chunks_i, B) >= p * B`` (each identity
    joins a batch at most once, so it gives at most ``min(chunks_i, B)`` chunks to ``B`` batches;
    the condition is also sufficient). ``sum_i min(c_i, B) - p B`` is concave and 0 at ``B = 0``,
    so the ``B`` that satisfy it form an interval: bisect it."""
    lo, hi = 0, sum(chunks) // p
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(c, mid) for c in chunks) >= p * mid:
            lo = mid
        else:
            hi = mid - 1
    return lo


class PKBatchSampler(Sampler[list[tuple[int, int]]]):
    """P identities x K images per batch (CLIP-ReID's RandomIdentitySampler), rank-aware.

    Per epoch: each identity's images are shuffled and cut into chunks of K (an identity
    with fewer than K images is sampled with replacement up to K); batches are formed by
    repeatedly drawing P identities that still have chunks. Batch ``b`` goes to rank
    ``b % world_size``, trailing batches are dropped so every rank gets the same number:
    every rank sees whole identity groups and no image is sent to two ranks in one epoch.

    How many batches an epoch yields depends on its draws (the last identities left may be
    fewer than P while chunks remain), as in the reference, whose epochs vary in length too. So
    the sampler has no ``len()``: Lightning then ends an epoch when the loader is exhausted and,
    knowing the last batch by fetching one ahead, still steps the epoch's lr schedule and runs
    its validation there. (With a ``len()`` Lightning does neither in an epoch that ends before
    it: a schedule would stop at the first short epoch.) :meth:`max_batches` is an upper bound,
    the same every epoch, that no epoch exceeds: the most batches of P distinct identities the
    chunk counts allow at all (the largest ``B`` with ``sum_i min(chunks_i, B) >= P * B``),
    divided among the ranks.
    """

    def __init__(self, pids: list[int], batch_size: int, num_instances: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if num_instances < 1 or batch_size % num_instances:
            raise ConfigError(
                f"data.batch_size={batch_size} is not divisible by data.num_instances={num_instances} (K): "
                f"use a multiple, e.g. data.batch_size={max(1, batch_size // max(num_instances, 1)) * num_instances}"
            )
        self.by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            self.by_pid[int(pid)].append(index)
        self.num_ids_per_batch = batch_size // num_instances
        if len(self.by_pid) < self.num_ids_per_batch:
            raise DataError(
                f"the training split has {len(self.by_pid)} identities but a batch needs "
                f"{self.num_ids_per_batch} (data.batch_size / data.num_instances); lower data.batch_size"
            )
        self.num_instances = num_instances
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        chunks = [max(len(idxs), num_instances) // num_instances for idxs in self.by_pid.values()]
        self._num_batches = max_pk_batches(chunks, self.num_ids_per_batch) // world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[tuple[int, int]]]:
        rng = _rng(self.seed, self.epoch)
        chunks: dict[int, list[list[int]]] = {}
        for pid in sorted(self.by_pid):
            idxs = self.by_pid[pid]
            if len(idxs) < self.num_instances:
                idxs = rng.choice(idxs, size=self.num_instances, replace=True).tolist()
            else:
                idxs = rng.permutation(idxs).tolist()
            usable = len(idxs) - len(idxs) % self.num_instances
            chunks[pid] = [idxs[i:i + self.num_instances] for i in range(0, usable, self.num_instances)]
        available = [pid for pid in sorted(chunks) if chunks[pid]]
        batches = []
        while len(available) >= self.num_ids_per_batch:
            picked = rng.choice(available, size=self.num_ids_per_batch, replace=False).tolist()
            batch = []
            for pid in picked:
                batch.extend(chunks[pid].pop(0))
                if not chunks[pid]:
                    available.remove(pid)
            seeds = rng.integers(0, 2**31 - 1, size=len(batch)).tolist()
            batches.append(list(zip(batch, seeds)))
        return batches

    def __iter__(self):
        batches = self._batches()
        usable = len(batches) - len(batches) % self.world_size
        yield from batches[self.rank:usable:self.world_size]

    def max_batches(self) -> int:
        """The most batches any epoch yields on this rank (an epoch may yield fewer; see the class docstring)."""
        return self._num_batches


class ShardSampler(Sampler[tuple[int, int]]):
    """Indices ``0..n-1`` (shuffled per epoch if asked), strided over ranks.

    With ``pad=True`` (training) every rank gets the same count by repeating the first
    indices; evaluation uses ``pad=False`` and gathers by index, so nothing is counted twice.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True):
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = _rng(self.seed, self.epoch)
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        seeds = rng.integers(0, 2**31 - 1, size=self.n)
        if self.pad and self.n % self.world_size:
            extra = self.world_size - self.n % self.world_size
            order = np.concatenate([order, order[:extra]])
        for i in order[self.rank::self.world_size].tolist():
            yield (int(i), int(seeds[i]))

    def __len__(self) -> int:
        if self.pad:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))
