"""Distributed: samplers shard whole identities without duplicates; 2-process DDP evaluation
(gloo, CPU) gives the same metrics as 1 process on the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_reid_overrides
from ftclip.data.samplers import PKBatchSampler, ShardSampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = "recipes/demo/reid_synthetic.yaml"


@pytest.mark.parametrize("world", [2, 3])
def test_pk_sampler_ranks_get_whole_identities_and_no_shared_image(world):
    pids = [i // 6 for i in range(6 * 20)] + [20, 21, 21]  # 20 ids x 6 images, one with 1, one with 2
    for epoch in range(3):
        per_rank, steps = [], []
        for rank in range(world):
            sampler = PKBatchSampler(pids, batch_size=8, num_instances=4, seed=1, rank=rank, world_size=world)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert 0 < len(batches) <= sampler.max_batches()
            steps.append(len(batches))
            indices = []
            for batch in batches:
                idx = [i for i, _ in batch]
                groups = [idx[k:k + 4] for k in range(0, 8, 4)]
                for group in groups:  # K images of one identity, together on one rank
                    assert len({pids[i] for i in group}) == 1
                assert len({pids[g[0]] for g in groups}) == 2  # P distinct identities
                indices += idx
            per_rank.append(indices)
        assert len(set(steps)) == 1  # every rank takes the same number of steps in the epoch
        for a in range(world):
            for b in range(a + 1, world):
                shared = set(per_rank[a]) & set(per_rank[b])
                # an identity with fewer than K images is repeated within its one chunk, never across ranks
                assert not shared, (epoch, a, b, shared)


def test_eval_shards_cover_every_sample_once():
    n, world = 23, 3
    seen = [i for rank in range(world)
            for i, _ in ShardSampler(n, shuffle=False, rank=rank, world_size=world, pad=False)]
    assert sorted(seen) == list(range(n))


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(tiny_reid_root, tmp_path):
    from ftclip.engine import evaluate, prepare
    from ftclip.runs import load_module_from_run
    from ftclip.runs import RunDir

    run_dir = tmp_path / "ddp"
    args = tiny_reid_overrides(tiny_reid_root, run_dir, **{
        "stages.prompts.epochs": 1, "stages.image.epochs": 1, "trainer.strategy": "ddp",
        "trainer.devices": 2, "trainer.accelerator": "cpu", "data.check_images": "false"})
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    env.pop("FTCLIP_RUN_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "ftclip", "fit", RECIPE, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("run directory:", "[initial] mAP=", "stage 'image': training", "[image] epoch 1/1  loss",
                 "[image] mAP=", "done:"):
        assert proc.stdout.count(line) == 1, (line, proc.stdout[-3000:])  # printed once, by rank 0
    ddp_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(ddp_metrics) == {"initial", "prompts", "image"}

    # the same final weights, evaluated in this (single) process
    run = RunDir(run_dir)
    module, cfg = load_module_from_run(run)
    cfg.trainer.strategy, cfg.trainer.devices = "auto", 1
    _, datamodule = prepare(cfg)
    single = evaluate(cfg, module, datamodule)
    for key in ("mAP", "rank1", "rank5", "rank10"):
        assert single[key] == pytest.approx(ddp_metrics["image"][key], abs=1e-6), key
