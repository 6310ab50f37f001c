"""A tiny synthetic few-shot set and recipe for the end-to-end tests (seconds on the CPU)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from ftclip.tasks.fewshot.synthetic import write_synthetic_fewshot

TINY = dict(num_classes=6, train_per_class=6, test_per_class=3, size=(32, 32))


def tiny_set(root: Path) -> Path:
    """6 classes x (6 train + 3 test) images of 32 x 32."""
    return write_synthetic_fewshot(root, **TINY)


def image(path: Path, value: int = 0) -> Path:
    """A 4 x 4 PNG of one grey ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)
    return path


def image_tree(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """layout: {split folder ('' = root): {class folder: image count}}; image i of a class has grey value i."""
    for split, classes in layout.items():
        for cls, n in classes.items():
            for i in range(n):
                image(root / split / cls / f"{cls}_{i}.png", i)
    return root


def write_recipe(path: Path, data_root: Path, stages: dict, **sections) -> Path:
    """A recipe for ``ftclip-tiny-vit`` at 32 x 32 on the CPU with ``stages``; ``sections`` are merged on top."""
    recipe = {
        "task": "fewshot", "name": "tiny", "seed": 0,
        "model": {"name": "ftclip-tiny-vit", "image_size": [32, 32]},
        "data": {"format": "folder", "root": str(data_root), "shots": 2, "batch_size": 6, "num_workers": 0},
        "trainer": {"accelerator": "cpu", "precision": "32-true", "enable_progress_bar": False, "log_every_n_steps": 1},
        "eval": {"batch_size": 64, "plots": False},
        "stages": stages,
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@contextmanager
def one_thread():
    """Run with one intra-op thread (``OMP_NUM_THREADS=1``, which the engine honours): on a shared 2-core
    machine the tiny tensors of these tests otherwise spend most of their time at OpenMP barriers (6x slower)."""
    saved_env, saved = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
        if saved_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved_env
