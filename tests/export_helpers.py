"""Run directories built without training (for export / embed tests): a recipe's module built from the
config, every parameter nudged by seeded noise (so nothing is at its initial value, LoRA B included),
saved as the final checkpoint of its stages. ``make_cheap_run``: the demo re-ID recipe shrunk."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import tiny_reid_overrides

DEMO = "recipes/demo/reid_synthetic.yaml"
INFO = {"num_ids": 8, "num_cameras": 2, "vehicle": False}


def save_cheap_run(cfg, info: dict, stage: str):
    """Build ``cfg``'s module, nudge every parameter with seeded noise, save it as the final checkpoint of
    every stage of ``cfg`` (the last one being ``stage``); return the RunDir."""
    from ftclip.io import sha256_file
    from ftclip.runs import RunDir
    from ftclip.tasks import get_task

    run = RunDir.create(cfg)
    module = get_task(str(cfg.task)).build_module(cfg, info)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.02)
    state = {"state_dict": module.state_dict(),
             "ftclip": {"stage": stage, "backbone": module.backbone.metadata(), "info": module.info}}
    ckpt = run.checkpoint_dir(stage) / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(state, ckpt)
    run.record_hash(ckpt, sha256_file(ckpt))  # as Lightning's checkpoint I/O does in a real run
    for name in cfg.stages:
        run.mark_completed(name)
    return run


def make_cheap_run(root: Path, run_dir: Path, lora: bool = False, **extra):
    from ftclip.recipe import load_recipe

    values = {"eval.before": "false"}
    if lora:
        values.update({"strategies.lora.enabled": "true", "stages.image.train": "[image.lora,head]"})
    values.update(extra)
    cfg = load_recipe(DEMO, tiny_reid_overrides(root, run_dir, **values))
    run = save_cheap_run(cfg, INFO, "image")
    run.record_metrics("image", {"mAP": 0.5, "rank1": 0.75})
    return run, cfg
