"""Re-ID details where ftclip must match CLIP-ReID: the stage-1 cache has no SIE; P x K epoch lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_reid_overrides
from ftclip.recipe import load_recipe
from ftclip.data.samplers import PKBatchSampler, max_pk_batches
from ftclip.engine import prepare

DEMO = "recipes/demo/reid_synthetic.yaml"


def test_stage1_cache_is_encoded_without_camera_embeddings(tiny_reid_root, tmp_path):
    cfg = load_recipe(DEMO, tiny_reid_overrides(tiny_reid_root, tmp_path / "run", **{"strategies.head.sie": "true"}))
    module, dm = prepare(cfg)
    module.eval()
    assert module.head.sie is not None
    with torch.no_grad():
        module.head.sie.weight.normal_(0.0, 1.0)  # make any camera offset visible in the features
    loader = dm.cache_dataloader()
    module.build_image_cache(loader)
    batches = list(loader)
    images = torch.cat([b["image"] for b in batches])
    camids = torch.cat([b["camid"] for b in batches])
    with torch.no_grad():
        plain = module.features(images, None).proj.float()
        with_sie = module.features(images, camids).proj.float()
    torch.testing.assert_close(module.image_cache, plain)
    assert (with_sie - plain).abs().max() > 1e-3  # SIE would have moved them
    assert module.label_cache.tolist() == [s.pid for s in dm.load().train]


def _pids(rng: np.random.Generator, num_ids: int) -> list[int]:
    """A toy training split with very uneven identity sizes (1 to 13 images)."""
    return [pid for pid in range(num_ids) for _ in range(int(rng.integers(1, 14)))]


def test_pk_sampler_max_batches_bounds_every_epoch_and_it_has_no_len():
    pids = _pids(np.random.default_rng(0), 12)
    sampler = PKBatchSampler(pids, batch_size=16, num_instances=4, seed=3)
    counts = []
    for epoch in range(2000):
        sampler.set_epoch(epoch)
        counts.append(sum(1 for _ in sampler))
    assert max(counts) <= sampler.max_batches()
    assert min(counts) < max(counts)  # epochs really differ: no len() can be exact for all of them
    assert max(counts) == sampler.max_batches()  # and the bound is reached on this set
    with pytest.raises(TypeError):  # so Lightning ends each epoch when the sampler is exhausted
        len(sampler)
    for world in (2, 3):  # DDP: every rank's share stays within its bound too
        for rank in range(world):
            shard = PKBatchSampler(pids, batch_size=16, num_instances=4, seed=3, rank=rank, world_size=world)
            assert shard.max_batches() == sampler.max_batches() // world
            for epoch in range(200):
                shard.set_epoch(epoch)
                assert sum(1 for _ in shard) <= shard.max_batches()


def test_max_pk_batches_is_the_largest_feasible_count():
    """Against brute force: B batches of p distinct identities exist iff a greedy fill by columns succeeds."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        chunks = rng.integers(0, 7, size=int(rng.integers(1, 9))).tolist()
        p = int(rng.integers(1, 5))

        def feasible(b: int) -> bool:  # fill b batches, most-chunked identities first, each id at most once per batch
            left = sorted(chunks, reverse=True)
            for _ in range(b):
                order = sorted(range(len(left)), key=lambda i: -left[i])[:p]
                if len(order) < p or any(left[i] == 0 for i in order):
                    return False
                for i in order:
                    left[i] -= 1
            return True

        best = max(b for b in range(sum(chunks) // p + 1) if feasible(b))
        assert max_pk_batches(chunks, p) == best, (chunks, p)


def test_short_p_x_k_epochs_still_step_the_schedule_and_validate(tiny_reid_root, tmp_path):
    """P x K epochs vary in length (the reference's too): every epoch steps the lr schedule and runs the
    stage's evaluation, as the reference's loop does, whether it reached the sampler's bound or not."""
    import csv

    from ftclip.cli import main
    from ftclip.stages import lr_factor

    run = tmp_path / "run"
    overrides = tiny_reid_overrides(tiny_reid_root, run, **{
        "stages.prompts.epochs": 1, "stages.image.epochs": 6, "stages.image.eval_every": 1, "eval.before": "false",
        "stages.image.schedule.name": "warmup_multistep", "stages.image.schedule.warmup_epochs": 1,
        "stages.image.schedule.milestones": "[3,5]", "trainer.enable_progress_bar": "false"})
    assert main(["fit", DEMO, *overrides]) == 0
    with open(run / "logs" / "image" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ends = [r for r in rows if r.get("lr")]
    steps = [int(r["step"]) for r in ends]
    per_epoch = [b - a for a, b in zip([0] + steps, steps)]
    bound = max_pk_batches([2] * 8, 4)  # 8 identities x 4 images, K = 2, P = 4
    assert len(per_epoch) == 6 and max(per_epoch) <= bound and min(per_epoch) < bound  # short epochs happened
    cfg = load_recipe(run / "config.yaml")
    schedule, lr = cfg.stages.image.schedule, float(cfg.stages.image.optimizer.lr)
    assert [float(r["lr"]) for r in ends] == pytest.approx([lr * lr_factor(schedule, lr, 6, e) for e in range(6)])
    assert sorted({int(r["epoch"]) for r in rows if r.get("val/mAP")}) == list(range(6))  # validated every epoch
