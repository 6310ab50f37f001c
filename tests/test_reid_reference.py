"""Re-ID details where ftclip must match CLIP-ReID: the stage-1 cache has no SIE; P x K epoch lengths."""

from __future__ import annotations

import numpy as np
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


def test_pk_sampler_len_bounds_every_epoch():
    pids = _pids(np.random.default_rng(0), 12)
    sampler = PKBatchSampler(pids, batch_size=16, num_instances=4, seed=3)
    counts = []
    for epoch in range(2000):
        sampler.set_epoch(epoch)
        counts.append(sum(1 for _ in sampler))
    assert max(counts) <= len(sampler)
    assert min(counts) < max(counts)  # epochs really differ: len() cannot be exact for all of them
    assert max(counts) == len(sampler)  # and the bound is reached on this set
    for world in (2, 3):  # DDP: every rank's share stays within its len() too
        for rank in range(world):
            shard = PKBatchSampler(pids, batch_size=16, num_instances=4, seed=3, rank=rank, world_size=world)
            assert len(shard) == len(sampler) // world
            for epoch in range(200):
                shard.set_epoch(epoch)
                assert sum(1 for _ in shard) <= len(shard)


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
