"""Shared fixtures: a tiny synthetic Market-1501-layout set and a tiny re-ID recipe."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_reid_root(tmp_path_factory):
    """8 train + 8 test identities, 2 cameras, 2 images per camera (deterministic)."""
    from ftclip.tasks.reid.synthetic import write_synthetic_reid

    root = tmp_path_factory.mktemp("reid") / "market"
    write_synthetic_reid(root, num_ids=8, num_cameras=2, images_per_id_cam=2, num_junk=1, num_distractors=1, seed=0)
    return root


def tiny_reid_overrides(root, run_dir, **extra) -> list[str]:
    """Overrides that shrink the demo recipe to a few seconds on CPU."""
    values = {
        "data.root": str(root),
        "data.synthetic": "false",
        "data.num_workers": "0",
        "data.batch_size": "8",
        "data.num_instances": "2",
        "run.dir": str(run_dir),
        "stages.prompts.epochs": "2",
        "stages.prompts.batch_size": "8",
        "stages.image.epochs": "2",
        "eval.batch_size": "16",
    }
    values.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


TRAINED_RUN_EXTRA = {
    # P = 8 identities x K = 2: every batch holds all 8 training identities, so each epoch has exactly
    # len() = 2 batches (Lightning validates during a stage only at an epoch's len(), see ftclip/logs.py)
    "data.batch_size": 16,
    "stages.prompts.epochs": 1,
    "stages.image.epochs": 3,
    "stages.image.eval_every": 1,
    "stages.image.monitor": "mAP",
    # min_delta 10: no evaluation after the first is an improvement, so the stage stops after epoch 2
    "stages.image.early_stopping.patience": 1,
    "stages.image.early_stopping.min_delta": 10,
    "trainer.logger": "[csv,tensorboard]",
    "run.export": "[open_clip]",
}


@pytest.fixture(scope="session")
def tiny_trained_run(tiny_reid_root, tmp_path_factory):
    """A finished tiny re-ID run, trained once per session through the Python API (``ftclip.fit``):
    stage ``image`` evaluates every epoch, keeps ``best.ckpt`` by mAP, stops early after epoch 2,
    logs to TensorBoard too, and is exported at the end. Returns ``(ftclip.api.Run, overrides)``."""
    import ftclip

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    overrides = tiny_reid_overrides(tiny_reid_root, run_dir, **TRAINED_RUN_EXTRA)
    run = ftclip.fit("recipes/demo/reid_synthetic.yaml", overrides)
    return run, overrides
