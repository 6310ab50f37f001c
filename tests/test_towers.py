"""Every tower kind: preprocessing from the model, features, CLIP-ReID's ResNet variant, text injection
(causal and bidirectional, end-of-text or last-position pooling), BatchNorm modes, FastViT folding."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import tower_models  # noqa: F401  (registers ftclip-test-sigmoid / ftclip-test-mcib)
from ftclip.backbone import Backbone, model_preprocess
from ftclip.config import ModelConfig
from ftclip.errors import ConfigError
from ftclip.tasks.reid.features import reid_features
from ftclip.towers import image_features, reparameterizable, reparameterized, resize_grid_embedding

TOWERS = ["ftclip-tiny-vit", "ftclip-tiny-rn", "ftclip-tiny-mobileclip", "ftclip-test-sigmoid", "ftclip-test-mcib"]


def make(name, size=(128, 64), **kw) -> Backbone:
    kw.setdefault("resnet_last_stride", 1)
    return Backbone.from_config(OmegaConf.structured(ModelConfig(name=name, image_size=list(size), **kw))).eval()


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return {name: make(name) for name in TOWERS}


def test_tiny_mobileclip_has_mobileclip_s_structure(built):
    b = built["ftclip-tiny-mobileclip"]
    assert type(b.model).__name__ == "CustomTextCLIP" and b.image_kind == "timm"
    trunk = b.visual.trunk
    assert type(trunk).__name__ == "FastVit"
    mixers = [type(block.token_mixer).__name__ for stage in trunk.stages for block in stage.blocks]
    assert mixers[:-1] == ["RepMixer"] * 3 and type(trunk.stages[-1].blocks[0]).__name__ == "AttentionBlock"
    assert b.model.text.attn_mask is None  # bidirectional, as MobileCLIP-S1/S2's text towers
    assert reparameterizable(b.visual) and not reparameterizable(built["ftclip-tiny-vit"].visual)


def test_preprocessing_comes_from_the_model_never_from_clip_defaults():
    def pre(name, **kw):
        return model_preprocess(OmegaConf.structured(ModelConfig(name=name, **kw)))

    mobile = pre("ftclip-tiny-mobileclip")
    assert (mobile.mean, mobile.std, mobile.interpolation) == ((0.0,) * 3, (1.0,) * 3, "bilinear")
    for name in ("MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP2-S0"):  # every tag of theirs agrees
        assert pre(name).mean == (0.0,) * 3 and pre(name).interpolation == "bilinear", name
    siglip = pre("ViT-B-16-SigLIP")
    assert siglip.mean == siglip.std == (0.5,) * 3
    assert pre("ViT-B-16").mean == open_clip.OPENAI_DATASET_MEAN  # CLIP's own
    mine = pre("ftclip-tiny-mobileclip", mean=[0.4, 0.4, 0.4], std=[0.2, 0.2, 0.2], interpolation="bicubic")
    assert (mine.mean, mine.std, mine.interpolation) == ((0.4,) * 3, (0.2,) * 3, "bicubic")  # the recipe wins


@pytest.mark.parametrize("name", TOWERS)
def test_pooled_features_and_reid_features_of_every_tower(built, name):
    b = built[name]
    x = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        proj, final = image_features(b.visual, x)
        feats = reid_features(b, x)
        ref = b.encode_image(x)
    assert torch.allclose(proj, ref, atol=1e-6) and torch.allclose(feats.proj, ref, atol=1e-6)
    assert torch.allclose(feats.final, final, atol=1e-6)
    assert final.shape == (3, b.vision_width) and proj.shape == (3, b.embed_dim)
    assert feats.last.shape[0] == 3 and not torch.allclose(feats.last[:, :4], feats.final[:, :4])


def test_clip_reid_resnet_variant_features_by_hand(built):
    """CLIP-ReID's RN50 features: GAP(layer3), GAP(layer4) with the last stage at stride 1, and the
    attention pool over that 8x4 grid of a 128x64 input (positional embedding resized to it)."""
    b = built["ftclip-tiny-rn"]
    v = b.visual
    assert b.tower_fit == {"image_size": [128, 64], "resnet_last_stride": 1}
    assert v.attnpool.positional_embedding.shape[0] == 1 + 8 * 4
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        x3 = v.layer3(v.layer2(v.layer1(v.stem(x))))
        x4 = v.layer4(x3)
        feats = reid_features(b, x)
    assert x3.shape[-2:] == (8, 4) and x4.shape[-2:] == (8, 4)  # stride 1: layer4 keeps layer3's grid
    assert torch.allclose(feats.last, F.adaptive_avg_pool2d(x3, 1).flatten(1), atol=1e-6)
    assert torch.allclose(feats.final, F.adaptive_avg_pool2d(x4, 1).flatten(1), atol=1e-6)
    plain = make("ftclip-tiny-rn", size=(64, 64), resnet_last_stride=2)  # open_clip's own tower: stride 2
    with torch.no_grad():
        assert plain.visual.layer4(plain.visual.layer3(plain.visual.layer2(plain.visual.layer1(
            plain.visual.stem(torch.randn(1, 3, 64, 64)))))).shape[-2:] == (2, 2)
    assert plain.tower_fit is None


def test_square_resnet_checkpoint_loads_into_the_stride_one_non_square_variant(tmp_path):
    stock = open_clip.create_model("ftclip-tiny-rn")  # 64x64 -> 2x2 attention-pool grid
    path = tmp_path / "rn.pt"
    torch.save(stock.state_dict(), path)
    b = make("ftclip-tiny-rn", size=(128, 64), pretrained=str(path))
    pos = stock.visual.attnpool.positional_embedding
    assert torch.equal(b.visual.attnpool.positional_embedding, resize_grid_embedding(pos, (8, 4)))
    assert torch.equal(b.visual.layer4[0].conv1.weight, stock.visual.layer4[0].conv1.weight)
    # a checkpoint of the fitted model itself (an ftclip export) loads as it is
    again = tmp_path / "fitted.pt"
    torch.save(b.model.state_dict(), again)
    c = make("ftclip-tiny-rn", size=(128, 64), pretrained=str(again))
    assert torch.equal(c.visual.attnpool.positional_embedding, b.visual.attnpool.positional_embedding)


def test_timm_vit_trunk_is_fitted_to_the_input_and_native_weights_resampled(tmp_path):
    stock = open_clip.create_model("ftclip-test-mcib")  # 64x64 -> 4x4 grid
    path = tmp_path / "w.pt"
    torch.save(stock.state_dict(), path)
    b = make("ftclip-test-mcib", size=(128, 64), pretrained=str(path))
    assert b.tower_fit == {"image_size": [128, 64]}
    assert tuple(b.visual.trunk.patch_embed.grid_size) == (8, 4)
    assert b.visual.trunk.pos_embed.shape[1] == 8 * 4  # no_embed_class: no class position
    assert torch.equal(b.visual.trunk.blocks[0].attn.qkv.weight, stock.visual.trunk.blocks[0].attn.qkv.weight)
    assert b.encode_image(torch.randn(1, 3, 128, 64)).shape == (1, 48)


def test_resnet_non_square_needs_the_clip_reid_variant_and_sizes_are_checked():
    with pytest.raises(ConfigError, match="resnet_last_stride=1"):
        make("ftclip-tiny-rn", size=(128, 64), resnet_last_stride=2)
    with pytest.raises(ConfigError, match="multiples of 16"):
        make("ftclip-tiny-rn", size=(120, 64))
    with pytest.raises(ConfigError, match="multiples of 32"):
        make("ftclip-tiny-mobileclip", size=(100, 64))


@pytest.mark.parametrize("name", ["ftclip-tiny-vit", "ftclip-tiny-mobileclip", "ftclip-test-sigmoid", "ftclip-test-mcib"])
def test_text_tower_on_injected_embeddings_equals_encode_text(built, name):
    """Causal (CLIP) and bidirectional (MobileCLIP-S, SigLIP) towers; end-of-text and last-position pooling."""
    b = built[name]
    tokens = b.tokenize(["a photo of a x x x x person.", "bad photo.", "a"])
    with torch.no_grad():
        out = b.encode_text_embeddings(b.embed_tokens(tokens), b.pool_index(tokens))
        assert torch.allclose(out, b.encode_text(tokens), atol=1e-5)
    pool = {"ftclip-test-sigmoid": tokens.shape[1] - 1}.get(name)
    if pool is not None:
        assert b.pool_index(tokens).tolist() == [pool] * 3


def test_prompt_learning_on_a_bidirectional_tower(built):
    from ftclip.strategies.prompts import IdPrompts, SharedPrompts

    for name in ("ftclip-tiny-mobileclip", "ftclip-test-sigmoid"):
        b = built[name]
        prompts = IdPrompts(b, num_ids=3)
        feats = prompts.text_features(b, torch.tensor([0, 1, 2]))
        feats.sum().backward()
        assert prompts.ctx.grad is not None and prompts.ctx.grad[1].abs().sum() > 0
        shared = SharedPrompts(b, ["Good photo.", "Bad photo."], num_tokens=4)
        with torch.no_grad():  # with the context set to the placeholder's embedding, it is the plain text
            shared.ctx.copy_(b.embed_tokens(b.tokenize(["X"]))[0, shared.start])
            assert torch.allclose(shared.text_features(b), b.encode_text(shared.tokens), atol=1e-5)


def test_logit_bias_is_its_own_group_and_loads(tmp_path, built):
    b = built["ftclip-test-sigmoid"]
    groups = b.parameter_groups()
    assert [n for n, _ in groups["logit_bias"]] == ["model.logit_bias"]
    state = b.model.state_dict()
    state["logit_bias"] = torch.tensor(-7.5)
    path = tmp_path / "sig.pt"
    torch.save(state, path)
    assert make("ftclip-test-sigmoid", pretrained=str(path)).model.logit_bias.item() == -7.5


def test_fastvit_folds_to_the_same_outputs_and_the_original_keeps_its_branches(built):
    b = built["ftclip-tiny-mobileclip"]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking BatchNorm statistics and layer scales, so every branch counts
        for module in b.visual.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            if type(module).__name__ in ("LayerScale2d",):
                module.gamma.fill_(0.5)
    keys = set(b.model.state_dict())
    folded = reparameterized(b.model)
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        ref, got = b.encode_image(x), folded.encode_image(x)
    assert (got - ref).abs().max() < 1e-5 * max(1.0, float(ref.abs().max()))
    assert ref.abs().max() > 1e-2  # not a trivially small output
    assert set(b.model.state_dict()) == keys  # the trained model is untouched
    assert any("reparam_conv" in k for k in folded.state_dict()) and len(folded.state_dict()) < len(keys)


def test_batchnorm_follows_frozen_and_small_batch_stages(tiny_reid_root, tmp_path):
    from conftest import tiny_reid_overrides

    from ftclip.recipe import load_recipe
    from ftclip.tasks import get_task

    cfg = load_recipe("recipes/demo/reid_synthetic.yaml",
                      tiny_reid_overrides(tiny_reid_root, tmp_path / "r", **{"model.name": "ftclip-tiny-mobileclip"}))
    module = get_task("reid").build_module(cfg, {"num_ids": 8, "num_cameras": 2, "vehicle": False})
    bns = [m for m in module.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns
    image = cfg.stages.image  # data.batch_size 8 (>= model.batchnorm_min_batch 8): statistics train
    module.set_stage("image", image)
    module.train()
    assert all(m.training for m in bns) and module.head.neck.bn.training
    module.set_stage("prompts", cfg.stages.prompts)  # image tower frozen: statistics frozen
    module.train()
    assert not any(m.training for m in bns)
    small = OmegaConf.merge(image, {"batch_size": 4})
    line = module.set_stage("image", small)
    module.train()
    assert not any(m.training for m in bns) and module.head.neck.bn.training  # the head's BNNeck still trains
    assert "BatchNorm keeps its running statistics (4 images per step < model.batchnorm_min_batch=8)" in line


def test_reid_rn50_recipe_builds_clip_reids_resnet():
    """recipes/reid_rn50.yaml: RN50 (random init here) with a 16x8 attention-pool grid at 256x128."""
    from ftclip.recipe import load_recipe
    from ftclip.tasks import get_task

    cfg = load_recipe("recipes/reid_rn50.yaml", ["data.root=/data/market", "model.pretrained=null"])
    get_task("reid").check_config(cfg)
    assert cfg.model.resnet_last_stride == 1 and list(cfg.model.mean) == [0.485, 0.456, 0.406]
    image = cfg.stages.image
    assert image.optimizer.lr == 3.5e-4 and image.losses["id"] == 1.0 and image.epochs == 120
    b = Backbone.from_config(cfg.model)
    assert b.visual.attnpool.positional_embedding.shape == (1 + 16 * 8, 2048)
    assert b.vision_width == 2048 and b.embed_dim == 1024 and b.quick_gelu is False  # no tag: the config's GELU
    with pytest.raises(ConfigError, match="strategies.head.sie=true needs an open_clip ViT"):
        get_task("reid").check_config(load_recipe("recipes/reid_rn50.yaml",
                                                  ["data.root=/data/market", "strategies.head.sie=true"]))
