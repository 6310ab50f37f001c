"""Speed options keep training correct: ``data.device_cache``, ``trainer.compile``, CPU thread count.

* ``data.device_cache=true``: stage 2 trains from the decoded uint8 cache with batched augmentation
  (ftclip/tasks/reid/gpu_augment.py); same checkpoint keys as the JPEG path, the PK sampler still decides
  the batches, and a batch is the augmentation of exactly the sampled images.
* ``trainer.compile=true``: both stages run compiled and checkpoints keep their keys (nothing
  replaced or wrapped in the module tree).
* On the CPU the engine leaves DataLoader workers their cores.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_reid_overrides
from ftclip.cli import main
from ftclip.recipe import load_recipe

RECIPE = "recipes/demo/reid_synthetic.yaml"


def _fit(root, run_dir, **extra) -> dict:
    values = {"eval.before": "false", "stages.prompts.epochs": "1", "stages.image.epochs": "1"}
    values.update(extra)
    assert main(["fit", RECIPE, *tiny_reid_overrides(root, run_dir, **values)]) == 0
    return torch.load(run_dir / "checkpoints" / "image" / "last.ckpt", map_location="cpu", weights_only=False)


def test_device_cache_trains_stage_two_with_the_same_checkpoint_layout(tiny_reid_root, tmp_path):
    from ftclip.engine import prepare

    cached = _fit(tiny_reid_root, tmp_path / "cached", **{"data.device_cache": "true"})
    fresh, _ = prepare(load_recipe(RECIPE, tiny_reid_overrides(tiny_reid_root, tmp_path / "x")))
    assert list(cached["state_dict"]) == list(fresh.state_dict())  # nothing of the cache is saved
    assert cached["global_step"] > 0
    # stage 2 moved the image tower away from stage 1's weights
    stage1 = torch.load(tmp_path / "cached" / "checkpoints" / "prompts" / "last.ckpt", map_location="cpu",
                        weights_only=False)
    key = "backbone.model.visual.conv1.weight"
    assert not torch.equal(cached["state_dict"][key], stage1["state_dict"][key])
    assert all(torch.isfinite(v).all() for v in cached["state_dict"].values() if v.is_floating_point())


def test_device_cache_batch_is_the_augmented_sampled_images(tiny_reid_root, tmp_path):
    from ftclip.engine import prepare

    cfg = load_recipe(RECIPE, tiny_reid_overrides(tiny_reid_root, tmp_path / "run", **{"data.device_cache": "true"}))
    module, dm = prepare(cfg)
    module.set_stage("image", cfg.stages.image)
    dm.set_stage("image", cfg.stages.image.batch_size)
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert "image" not in batch and batch["index"].shape == (8,)
    ds = dm.load()
    assert batch["pid"].tolist() == [ds.train[i].pid for i in batch["index"].tolist()]
    module._attach_image_cache(dm)
    out = {"image": module.cached_batch_images(batch)}
    # the seed is read before the batch goes to the device (an int there: no host sync per step), same images
    moved = module.on_before_batch_transfer(dict(batch), 0)
    assert isinstance(moved["seed"], int) and torch.is_tensor(batch["seed"])
    torch.testing.assert_close(module.cached_batch_images(moved), out["image"])
    assert out["image"].shape == (8, 3, *cfg.model.image_size) and out["image"].dtype == torch.float32
    # with no augmentation at all, the batch is the normalised cached images of the sampled indices
    dm.cfg.data.flip_p, dm.cfg.data.pad, dm.cfg.data.erasing_p = 0.0, 0, 0.0
    module._augment = dm.device_augment()
    plain = module.cached_batch_images(batch)
    cache = dm.train_image_cache()[batch["index"]].float() / 255.0
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    torch.testing.assert_close(plain, (cache - mean) / std)
    module.on_fit_end()
    with pytest.raises(RuntimeError, match="not attached"):  # cache released
        module.cached_batch_images(batch)


def test_cpu_threads_leave_loader_workers_their_cores(monkeypatch):
    from ftclip import engine

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    cfg = load_recipe(RECIPE, ["data.num_workers=64", "trainer.accelerator=cpu"])
    try:
        assert engine.set_cpu_threads(cfg) == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert engine.set_cpu_threads(cfg) is None  # the user's setting wins
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_compile_runs_both_stages_and_keeps_checkpoint_keys(tiny_reid_root, tmp_path):
    plain = _fit(tiny_reid_root, tmp_path / "plain")
    compiled = _fit(tiny_reid_root, tmp_path / "compiled", **{"trainer.compile": "true"})
    assert list(compiled["state_dict"]) == list(plain["state_dict"])
    assert compiled["global_step"] == plain["global_step"] > 0
    for stage in ("prompts", "image"):
        state = torch.load(tmp_path / "compiled" / "checkpoints" / stage / "last.ckpt", map_location="cpu",
                           weights_only=False)["state_dict"]
        assert not any("_orig_mod" in key for key in state)


def test_compile_shadows_methods_without_touching_the_module_tree(tiny_reid_root, tmp_path):
    from ftclip.engine import prepare

    cfg = load_recipe(RECIPE, tiny_reid_overrides(tiny_reid_root, tmp_path / "run"))
    module, _ = prepare(cfg)
    keys = list(module.state_dict())
    names = [n for n, _ in module.named_modules()]
    module.compile_towers()
    module.compile_towers()  # idempotent
    assert "_reid_features" in vars(module) and "encode_text_embeddings" in vars(module.backbone)
    assert list(module.state_dict()) == keys and [n for n, _ in module.named_modules()] == names


def test_vit_attention_runs_through_pytorch_sdpa(tiny_reid_root, tmp_path, monkeypatch):
    """open_clip 3.3's blocks call nn.MultiheadAttention(need_weights=False), which runs
    F.scaled_dot_product_attention (flash / memory-efficient kernels on CUDA): one call per block."""
    import torch.nn.functional as F

    from ftclip.engine import prepare

    cfg = load_recipe(RECIPE, tiny_reid_overrides(tiny_reid_root, tmp_path / "run"))
    module, _ = prepare(cfg)
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    module.train()
    feats = module.features(torch.randn(2, 3, *cfg.model.image_size), None)
    (feats.proj.sum() + feats.last.sum()).backward()
    assert len(calls) == len(module.backbone.visual.transformer.resblocks)
    text = module.prompts.text_features(module.backbone, torch.tensor([0, 1]))
    vision, text_blocks = module.backbone.visual.transformer.resblocks, module.backbone.model.transformer.resblocks
    assert text.shape[0] == 2 and len(calls) == len(vision) + len(text_blocks)
