"""A run directory built without training (for export / embed tests): the demo re-ID recipe shrunk,
its module built from the config, every parameter nudged by seeded noise (so nothing is at its
initial value, LoRA B included), saved as the final checkpoint of both stages."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import tiny_reid_overrides

DEMO = "recipes/demo/reid_synthetic.yaml"
INFO = {"num_ids": 8, "num_cameras": 2, "vehicle": False}


def make_cheap_run(root: Path, run_dir: Path, lora: bool = False, **extra):
    from ftclip.io import sha256_file
    from ftclip.recipe import load_recipe
    from ftclip.runs import RunDir
    from ftclip.tasks import get_task

    values = {"eval.before": "false"}
    if lora:
        values.update({"strategies.lora.enabled": "true", "stages.image.train": "[image.lora,head]"})
    values.update(extra)
    cfg = load_recipe(DEMO, tiny_reid_overrides(root, run_dir, **values))
    run = RunDir.create(cfg)
    module = get_task("reid").build_module(cfg, INFO)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.02)
    state = {"state_dict": module.state_dict(),
             "ftclip": {"stage": "image", "backbone": module.backbone.metadata(), "info": module.info}}
    ckpt = run.checkpoint_dir("image") / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(state, ckpt)
    run.record_hash(ckpt, sha256_file(ckpt))  # as Lightning's checkpoint I/O does in a real run
    for stage in ("prompts", "image"):
        run.mark_completed(stage)
    run.record_metrics("image", {"mAP": 0.5, "rank1": 0.75})
    return run, cfg
