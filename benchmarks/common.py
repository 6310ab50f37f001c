"""Helpers every benchmark script shares (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import re
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import torch
from torch.overrides import TorchFunctionMode


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU model with the cores and torch threads available."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({cores} cores available, {torch.get_num_threads()} torch threads)"


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- time-budgeted measuring
def warm_up(step: Callable[[], None], steps: int, device: torch.device | str) -> float:
    """Run ``steps`` untimed steps (compilation, autotuning, first allocations); return their seconds."""
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - start


def measure_for(step: Callable[[], None], seconds: float, device: torch.device | str, min_steps: int = 3) -> dict:
    """Steps until ``seconds`` have passed (at least ``min_steps``): a time budget, not a step count.

    The GPU is synchronised only between chunks of steps, each chunk sized from the step time
    measured so far to end near the budget, so the queue stays full while it is measured.
    Returns ``{"steps", "seconds", "step_s"}``.
    """
    done, chunk, start = 0, 1, time.perf_counter()
    while True:
        for _ in range(chunk):
            step()
        done += chunk
        sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and done >= min_steps:
            return {"steps": done, "seconds": elapsed, "step_s": elapsed / done}
        if elapsed >= seconds:
            chunk = min_steps - done
        else:  # the steps that fit in the time left, growing at most 4x per chunk
            chunk = max(1, min(4 * chunk, int((seconds - elapsed) * done / elapsed)))


# --------------------------------------------------------------------------- host synchronisation
_HOST_READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy"}


class HostReads(TorchFunctionMode):
    """Counts the host reads of tensor values made through torch's Python API, and the steps that had one.

    A host read (``item``, ``bool``/``int``/``float``, ``tolist``, ``numpy``, a copy to the CPU)
    of a GPU tensor makes the CPU wait until the GPU has finished everything queued before it.
    On CUDA only reads of non-CPU tensors count, and ``torch.cuda.set_sync_debug_mode("warn")``
    also reports every synchronising CUDA call, those made inside C++ included (``nonzero``,
    boolean masks), counted as ``cuda_syncs``. On the CPU, where nothing waits, every read counts:
    what would wait on a GPU, plus reads of tensors that stay on the CPU there too.

    ``start()`` opens the first step, ``mark_step()`` closes one and opens the next, ``stop()``
    closes the last: ``synced_steps`` of ``steps`` had at least one read or sync.
    """

    def __init__(self, device: torch.device | str):
        super().__init__()
        self.device = torch.device(device)
        self.reads: dict[str, int] = {}
        self.cuda_syncs = 0 if self.device.type == "cuda" else None
        self.steps = self.synced_steps = 0
        self._caught: list | None = None
        self._catcher = None
        self._seen = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if (name in _HOST_READS or name in ("cpu", "to")) and args and isinstance(args[0], torch.Tensor):
            on_device = args[0].device.type != "cpu"
            if (name in _HOST_READS and (on_device or self.device.type == "cpu")) or (
                    name in ("cpu", "to") and on_device and _to_cpu(name, args, kwargs)):
                self.reads[name] = self.reads.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.reads.values())

    def _events(self) -> int:
        if self._caught is not None:
            self.cuda_syncs = sum("synchroniz" in str(w.message) for w in self._caught)
        return self.total + (self.cuda_syncs or 0)

    def start(self) -> "HostReads":
        if self.device.type == "cuda":
            self._catcher = warnings.catch_warnings(record=True)
            self._caught = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        self.__enter__()
        self._seen = self._events()
        return self

    def mark_step(self) -> None:
        events = self._events()
        self.steps += 1
        self.synced_steps += events > self._seen
        self._seen = events

    def stop(self) -> None:
        self.mark_step()
        self.__exit__(None, None, None)
        if self._catcher is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._events()
            self._catcher.__exit__(None, None, None)
            self._catcher = self._caught = None

    def summary(self) -> dict:
        steps = max(1, self.steps)
        return {"steps": self.steps, "synced_steps": self.synced_steps,
                "synced_fraction": round(self.synced_steps / steps, 4),
                "host_reads_per_step": round(self.total / steps, 4), "host_reads": dict(self.reads),
                "cuda_syncs_per_step": None if self.cuda_syncs is None else round(self.cuda_syncs / steps, 4)}


def _to_cpu(name: str, args, kwargs) -> bool:
    if name == "cpu":
        return True
    target = (kwargs or {}).get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu"


def count_host_reads(step: Callable[[], None], steps: int, device: torch.device | str) -> dict:
    """:meth:`HostReads.summary` over ``steps`` calls of ``step``."""
    counter = HostReads(device).start()
    try:
        for i in range(steps):
            step()
            if i < steps - 1:
                counter.mark_step()
    finally:
        counter.stop()
    return counter.summary()


# --------------------------------------------------------------------------- a Market-size synthetic set
_MARKET_NAME = re.compile(r"^(-1|\d{4})(_c\d+s\d+_\d{6}_\d{2}\.jpg)$")


def _write_part(folder: str, num_ids: int, num_query_ids: int, size: tuple[int, int], seed: int) -> str:
    from ftclip.tasks.reid.synthetic import write_synthetic_reid

    write_synthetic_reid(folder, num_ids=num_ids, num_query_ids=num_query_ids, images_per_id_cam=4, num_cameras=6,
                         size=size, num_junk=1, num_distractors=1, seed=seed, overwrite=True)
    return folder


def market_size_reid_set(root: Path, num_ids: int, size: tuple[int, int], workers: int) -> tuple[Path, float]:
    """ftclip's synthetic re-ID set with ``num_ids`` training identities (751: Market-1501's ~12k
    training images; 6 cameras, 2-6 per identity, 4 images each), a small test split; returns
    (folder, seconds spent writing it; 0 when it was already there).

    Written by up to ``workers`` processes, each running :func:`ftclip.data.synthetic.write_synthetic_reid`
    for a share of the identities with its own seed; the parts are then merged into one
    Market-1501 layout with the identity numbers offset so that they stay unique. ``done.json``
    marks a complete set (reused by later runs).
    """
    folder = Path(root) / f"market_{num_ids}ids_{size[0]}x{size[1]}"
    marker = folder / "done.json"
    if marker.is_file():
        return folder, 0.0
    start = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    parts = max(1, min(workers, num_ids // 50))  # a process pays for itself from ~50 identities (~800 images)
    shares = [num_ids // parts + (1 if i < num_ids % parts else 0) for i in range(parts)]
    tmp = Path(root) / f".parts_{folder.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = [(str(tmp / f"part{i}"), n, 2, tuple(size), i) for i, n in enumerate(shares)]
    if parts > 1:
        with ProcessPoolExecutor(parts, mp_context=multiprocessing.get_context("spawn")) as pool:
            written = list(pool.map(_write_part, *zip(*jobs)))
    else:
        written = [_write_part(*jobs[0])]
    stride = max(shares) + 3  # ids of one part: 1 .. share + 2 query identities
    counts: dict[str, int] = {}
    for i, part in enumerate(written):
        for split in ("bounding_box_train", "query", "bounding_box_test"):
            (folder / split).mkdir(parents=True, exist_ok=True)
            for path in sorted(Path(part, split).iterdir()):
                match = _MARKET_NAME.match(path.name)
                if match is None:
                    continue
                pid = int(match.group(1))
                if pid <= 0 and i > 0:  # junk and distractor images from the first part only (names would clash)
                    continue
                name = path.name if pid <= 0 else f"{pid + i * stride:04d}{match.group(2)}"
                path.rename(folder / split / name)
                counts[split] = counts.get(split, 0) + 1
    shutil.rmtree(tmp, ignore_errors=True)
    marker.write_text(json.dumps({"num_ids": num_ids, "size": list(size), "images": counts}) + "\n")
    return folder, time.perf_counter() - start
