"""LoRA on every image tower kind: ResNet attention pool, FastViT (1x1-conv MLPs, attention in the last
stage), timm ViT (fused qkv, proj, Linear MLP): identity at init, the adapted path really runs, only the
adapters train (frozen weights bit-identical), exact merge back to stock open_clip modules."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from open_clip.modified_resnet import AttentionPool2d

import tower_models  # noqa: F401  (registers ftclip-test-sigmoid / ftclip-test-mcib)
from ftclip.backbone import Backbone
from ftclip.config import LoraConfig, ModelConfig
from ftclip.errors import ConfigError
from ftclip.stages import freeze_for_stage
from ftclip.strategies.lora import LinearAttentionPool2d, apply_lora, merge_lora

CASES = {  # model -> (targets, adapted module names expected among the summary's)
    "ftclip-tiny-rn": (["attn"], ["visual.attnpool.q_proj", "visual.attnpool.k_proj", "visual.attnpool.v_proj",
                                  "visual.attnpool.c_proj"]),
    "ftclip-tiny-mobileclip": (["attn", "mlp"], ["visual.trunk.stages.3.blocks.0.token_mixer.qkv",
                                                 "visual.trunk.stages.3.blocks.0.token_mixer.proj",
                                                 "visual.trunk.stages.0.blocks.0.mlp.fc1",
                                                 "visual.trunk.stages.3.blocks.0.mlp.fc2"]),
    "ftclip-test-sigmoid": (["attn", "mlp"], ["visual.trunk.blocks.0.attn.qkv", "visual.trunk.blocks.1.attn.proj",
                                              "visual.trunk.blocks.1.mlp.fc1"]),
}


def build(name: str) -> Backbone:
    torch.manual_seed(0)
    cfg = OmegaConf.structured(ModelConfig(name=name, image_size=[128, 64], resnet_last_stride=1))
    b = Backbone.from_config(cfg).eval()
    with torch.no_grad():  # FastViT starts its layer scales at 1e-5: open them so the blocks matter
        for module in b.visual.modules():
            if type(module).__name__ == "LayerScale2d":
                module.gamma.fill_(1.0)
    return b


def randomize_b(model, std=0.2):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


@pytest.mark.parametrize("name", sorted(CASES))
def test_wiring_training_and_exact_merge(name):
    targets, expected = CASES[name]
    b = build(name)
    x = torch.randn(3, 3, 128, 64, generator=torch.Generator().manual_seed(2))
    keys = set(b.model.state_dict())
    with torch.no_grad():
        ref = b.encode_image(x)
    summary = apply_lora(b, OmegaConf.structured(LoraConfig(enabled=True, targets=targets)))
    assert set(expected) <= set(summary.targets)
    with torch.no_grad():
        assert (b.encode_image(x) - ref).abs().max() < 1e-5  # lora_B = 0: the same function

    trainable = freeze_for_stage(b.parameter_groups(), ["image.lora"], "s")
    ids = {id(p) for _, p in trainable}
    before = {n: p.detach().clone() for n, p in b.model.named_parameters()}
    optimizer = torch.optim.Adam([p for _, p in trainable], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        b.encode_image(x).pow(2).mean().backward()
        assert {id(p) for p in b.model.parameters() if p.grad is not None} == ids  # every adapter gets a gradient
        optimizer.step()
    for pname, param in b.model.named_parameters():
        if id(param) not in ids:
            assert torch.equal(param, before[pname]), pname  # frozen weights bit-identical
    randomize_b(b.model)
    with torch.no_grad():
        adapted = b.encode_image(x)
    assert (adapted - ref).abs().max() > 1e-3 * max(1.0, float(ref.abs().max()))  # the adapted path runs

    merge_lora(b)
    with torch.no_grad():
        merged = b.encode_image(x)
    assert (merged - adapted).abs().max() < 1e-5 * max(1.0, float(adapted.abs().max()))
    assert set(b.model.state_dict()) == keys  # stock open_clip keys again
    if name == "ftclip-tiny-rn":
        assert type(b.visual.attnpool) is AttentionPool2d


def test_linear_attention_pool_equals_open_clips():
    b = build("ftclip-tiny-rn")
    pool = b.visual.attnpool
    grid = torch.randn(2, pool.k_proj.in_features, 8, 4)
    with torch.no_grad():
        assert torch.allclose(LinearAttentionPool2d(pool)(grid), pool(grid), atol=1e-5)
        assert LinearAttentionPool2d(pool).to_pool()(grid).equal(pool(grid))


def test_mlp_on_resnet_and_attention_outside_fastvits_last_stage_are_clear_errors():
    with pytest.raises(ConfigError, match="ResNet image tower .* has no MLP blocks"):
        apply_lora(build("ftclip-tiny-rn"), OmegaConf.structured(LoraConfig(enabled=True, targets=["mlp"])))
    with pytest.raises(ConfigError, match=r"have no attention \(blocks with attention: \[3\]\)"):
        apply_lora(build("ftclip-tiny-mobileclip"),
                   OmegaConf.structured(LoraConfig(enabled=True, targets=["attn"], blocks=[0, 1])))
    b = build("ftclip-tiny-mobileclip")  # the text tower (model.text) of a CustomTextCLIP
    summary = apply_lora(b, OmegaConf.structured(LoraConfig(enabled=True, encoders=["text"], blocks=1)))
    assert summary.targets[0] == "text.transformer.resblocks.1.attn.q_proj"


@pytest.mark.parametrize("name, expected", [
    ("ftclip-tiny-rn", ["visual.attnpool.q_proj", "visual.attnpool.k_proj", "visual.attnpool.v_proj"]),
    ("ftclip-tiny-mobileclip", ["visual.trunk.stages.3.blocks.0.token_mixer.qkv"]),
    ("ftclip-test-sigmoid", ["visual.trunk.blocks.0.attn.qkv", "visual.trunk.blocks.1.attn.qkv"]),
])
def test_qkv_targets_leave_the_output_projection_unadapted_on_every_tower(name, expected):
    b = build(name)
    summary = apply_lora(b, OmegaConf.structured(LoraConfig(enabled=True, targets=["qkv"])))
    assert set(expected) <= set(summary.targets)
    assert not [t for t in summary.targets if t.endswith(("c_proj", ".proj", "out_proj", "fc1", "fc2"))]
    x = torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = b.encode_image(x)
        randomize_b(b.model)
        assert (b.encode_image(x) - ref).abs().max() > 1e-4  # the q/k/v adapters run
