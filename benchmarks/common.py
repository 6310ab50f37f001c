"""Helpers every benchmark script shares (run as ``python benchmarks/<script>.py``)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


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
