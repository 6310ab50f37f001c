"""LoRA strategy: injection, training isolation, merge/export, block selection, config errors."""

from __future__ import annotations

import copy
import logging

import open_clip
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ftclip.backbone import Backbone, Preprocess
from ftclip.config import LoraConfig, ModelConfig
from ftclip.tasks.reid.features import reid_features
from ftclip.errors import ConfigError
from ftclip.stages import describe_trainable, freeze_for_stage
from ftclip.strategies.lora import SplitProjectionAttention, apply_lora, merge_lora

WIDTH, R = 64, 16  # ftclip-tiny-vit: width 64 in both towers, 2 blocks each, mlp 256


_PRISTINE: dict[tuple[str, tuple[int, int]], Backbone] = {}


def tiny(name: str = "ftclip-tiny-vit", size: tuple[int, int] = (128, 64)) -> Backbone:
    """A fresh random-init backbone (built once per model, then copied: building costs ~0.3 s)."""
    key = (name, size)
    if key not in _PRISTINE:
        torch.manual_seed(0)
        logging.disable(logging.WARNING)  # open_clip: "no pretrained weights" (random init on purpose)
        try:
            _PRISTINE[key] = Backbone.from_config(OmegaConf.structured(ModelConfig(name=name, image_size=list(size))))
        finally:
            logging.disable(logging.NOTSET)
    base = _PRISTINE[key]
    return Backbone(copy.deepcopy(base.model), base.tokenizer, base.name, base.preprocess, base.quick_gelu)


def lora_cfg(**kw):
    return OmegaConf.structured(LoraConfig(enabled=True, **kw))


def stock(name: str = "ftclip-tiny-vit", size: tuple[int, int] = (128, 64), **kw) -> nn.Module:
    logging.disable(logging.WARNING)
    try:
        return open_clip.create_model(name, force_image_size=size, **kw)
    finally:
        logging.disable(logging.NOTSET)


def randomize_b(model: nn.Module, std: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


@pytest.fixture
def inputs():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(2, 3, 128, 64, generator=gen)


def encode(bb: Backbone, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return bb.encode_image(images), bb.encode_text(tokens)


def test_identity_at_init_then_outputs_change(inputs):
    bb = tiny().eval()
    tokens = bb.tokenize(["a photo of a person", "a bad photo"])
    image0, text0 = encode(bb, inputs, tokens)
    summary = apply_lora(bb, lora_cfg(encoders=["image", "text"], targets=["attn", "mlp"]))
    assert all(not p.any() for n, p in bb.model.named_parameters() if "lora_B" in n)
    image1, text1 = encode(bb, inputs, tokens)  # lora_B starts at zero: same function
    assert (image1 - image0).abs().max() < 1e-5 and (text1 - text0).abs().max() < 1e-5
    randomize_b(bb.model)
    image2, text2 = encode(bb, inputs, tokens)
    assert (image2 - image0).abs().max() > 1e-2 and (text2 - text0).abs().max() > 1e-2

    # per block: attn 4 x (64x64) -> 4 * 2 * 16 * 64; mlp c_fc 64->256 and c_proj 256->64 -> 2 * 16 * (64 + 256)
    per_block = 4 * 2 * R * WIDTH + 2 * R * (WIDTH + 4 * WIDTH)
    assert summary.num_params == 2 * 2 * per_block
    groups = bb.parameter_groups()
    assert sum(p.numel() for _, p in groups["image.lora"] + groups["text.lora"]) == summary.num_params
    assert all("lora_" in n for n, _ in groups["image.lora"] + groups["text.lora"])
    assert all("lora_" not in n for g in ("image", "text", "logit_scale") for n, _ in groups[g])
    assert "model.visual.transformer.resblocks.0.attn.q_proj.base_layer.weight" in dict(groups["image"])
    assert "model.transformer.resblocks.1.mlp.c_fc.base_layer.weight" in dict(groups["text"])


def test_disabled_is_a_no_op():
    bb = tiny()
    keys = list(bb.model.state_dict())
    summary = apply_lora(bb, OmegaConf.structured(LoraConfig()))
    assert summary.targets == [] and summary.num_params == 0 and list(bb.model.state_dict()) == keys


def test_only_lora_trains_and_base_stays_bit_identical(inputs):
    bb = tiny()
    apply_lora(bb, lora_cfg(encoders=["image", "text"], targets=["attn", "mlp"], dropout=0.1))
    groups = bb.parameter_groups()
    trainable = freeze_for_stage(groups, ["image.lora"], "s2")
    train_ids = {id(p) for _, p in trainable}
    before = {n: p.detach().clone() for n, p in bb.model.named_parameters()}
    ids_before = {n: id(p) for n, p in bb.model.named_parameters()}
    optimizer = torch.optim.Adam([p for _, p in trainable], lr=1e-2)
    bb.train()
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        bb.encode_image(inputs).pow(2).mean().backward()
        got_grad = {id(p) for p in bb.model.parameters() if p.grad is not None}
        assert got_grad == train_ids
        optimizer.step()
    # same Parameter objects as before (peft's own MultiheadAttention layer swaps them every forward)
    assert {n: id(p) for n, p in bb.model.named_parameters()} == ids_before
    for name, param in bb.model.named_parameters():
        if id(param) in train_ids:
            continue
        assert torch.equal(param, before[name]), name
    changed = [n for n, p in bb.model.named_parameters() if id(p) in train_ids and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)


def test_reid_features_with_grad_checkpointing_train_lora(inputs):
    bb = tiny()
    apply_lora(bb, lora_cfg(targets=["attn", "mlp"]))
    freeze_for_stage(bb.parameter_groups(), ["image.lora"], "s2")
    bb.model.set_grad_checkpointing(True)
    bb.train()
    randomize_b(bb.model)
    reid_features(bb, inputs).proj.pow(2).mean().backward()
    grads = {n: p.grad for n, p in bb.model.named_parameters() if p.grad is not None}
    assert {f"model.{n}" for n in grads} == {n for n, _ in bb.parameter_groups()["image.lora"]}
    assert all(g.abs().sum() > 0 for g in grads.values())


def test_lora_dropout_follows_train_eval(inputs):
    bb = tiny().eval()
    apply_lora(bb, lora_cfg(dropout=0.5))
    randomize_b(bb.model)
    with torch.no_grad():
        assert torch.equal(bb.encode_image(inputs), bb.encode_image(inputs))  # eval: dropout off
        bb.train()
        assert not torch.equal(bb.encode_image(inputs), bb.encode_image(inputs))


@pytest.mark.parametrize("encoders", [["image"], ["image", "text"]])
def test_merge_is_exact_and_gives_stock_open_clip(inputs, encoders, tmp_path):
    bb = tiny().eval()
    tokens = bb.tokenize(["a photo of a person", "a bad photo"])
    apply_lora(bb, lora_cfg(encoders=encoders, targets=["attn", "mlp"], blocks=1))
    randomize_b(bb.model)
    image_lora, text_lora = encode(bb, inputs, tokens)
    merge_lora(bb)
    image_merged, text_merged = encode(bb, inputs, tokens)
    assert (image_merged - image_lora).abs().max() < 1e-5
    assert (text_merged - text_lora).abs().max() < 1e-5
    assert set(bb.parameter_groups()) == {"image", "text", "logit_scale"}
    assert not any(isinstance(m, SplitProjectionAttention) for m in bb.model.modules())

    reference = stock()
    merged_state = bb.model.state_dict()
    assert list(merged_state) == list(reference.state_dict())
    assert {k: v.shape for k, v in merged_state.items()} == {k: v.shape for k, v in reference.state_dict().items()}
    reference.load_state_dict(merged_state, strict=True)

    path = tmp_path / "merged.pt"  # the export path: a plain open_clip state dict file
    torch.save(merged_state, path)
    loaded = stock(pretrained=str(path)).eval()
    with torch.no_grad():
        assert (loaded.encode_image(inputs) - image_lora).abs().max() < 1e-5
        assert (loaded.encode_text(tokens) - text_lora).abs().max() < 1e-5
    merge_lora(bb)  # nothing left to merge: a no-op
    assert list(bb.model.state_dict()) == list(merged_state)
    assert apply_lora(bb, lora_cfg()).num_params == 16_384  # a merged model can take new adapters


@pytest.mark.parametrize(
    ("blocks", "expected"), [("all", [0, 1]), (1, [1]), (2, [0, 1]), ([0], [0]), ([1, 0], [0, 1])]
)
def test_blocks_selection(blocks, expected):
    bb = tiny()
    summary = apply_lora(bb, lora_cfg(encoders=["image", "text"], targets=["attn", "mlp"], blocks=blocks))
    want = [
        f"{prefix}.{i}.{layer}"
        for prefix in ("visual.transformer.resblocks", "transformer.resblocks")
        for i in expected
        for layer in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert summary.targets == want
    adapted = {n.rsplit(".lora_", 1)[0] for n, _ in bb.model.named_parameters() if "lora_" in n}
    assert adapted == set(want)
    for tower in (bb.model.visual.transformer, bb.model.transformer):
        for i, block in enumerate(tower.resblocks):
            wanted = i in expected
            assert isinstance(block.attn, SplitProjectionAttention) is wanted
            assert isinstance(block.attn, nn.MultiheadAttention) is not wanted


def test_mlp_only_keeps_multihead_attention():
    bb = tiny()
    summary = apply_lora(bb, lora_cfg(targets=["mlp"]))
    assert summary.targets == [f"visual.transformer.resblocks.{i}.mlp.{n}" for i in (0, 1) for n in ("c_fc", "c_proj")]
    assert all(isinstance(b.attn, nn.MultiheadAttention) for b in bb.model.visual.transformer.resblocks)


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        ({"targets": ["ffn"]}, "strategies.lora.targets", "'attn', 'qkv', 'mlp'"),
        ({"targets": []}, "strategies.lora.targets", "'attn', 'qkv', 'mlp'"),
        ({"encoders": ["audio"]}, "strategies.lora.encoders", "'image', 'text'"),
        ({"r": 0}, "strategies.lora.r", ">= 1"),
        ({"alpha": 0.0}, "strategies.lora.alpha", "> 0"),
        ({"dropout": 1.0}, "strategies.lora.dropout", "[0, 1)"),
        ({"blocks": [2]}, "strategies.lora.blocks", "0..1"),
        ({"blocks": 3}, "strategies.lora.blocks", "1..2"),
        ({"blocks": 0}, "strategies.lora.blocks", "selects no block"),
        ({"blocks": []}, "strategies.lora.blocks", "selects no block"),
        ({"blocks": "last"}, "strategies.lora.blocks", '"all"'),
    ],
)
def test_bad_config_is_one_clear_error_and_touches_nothing(overrides, key, hint):
    bb = tiny()
    keys = list(bb.model.state_dict())
    with pytest.raises(ConfigError) as info:
        apply_lora(bb, lora_cfg(**overrides))
    assert key in str(info.value) and hint in str(info.value)
    assert list(bb.model.state_dict()) == keys


def test_resnet_text_tower_supported():
    bb = tiny("ftclip-tiny-rn", (64, 64)).eval()
    tokens = bb.tokenize(["a photo"])
    before = bb.encode_text(tokens).detach()
    summary = apply_lora(bb, lora_cfg(encoders=["text"]))
    assert summary.targets[0] == "transformer.resblocks.0.attn.q_proj"
    randomize_b(bb.model)
    assert (bb.encode_text(tokens).detach() - before).abs().max() > 1e-2


def test_why_the_resnet_pool_is_swapped_attention_pool_ignores_adapters():
    """The premise of LinearAttentionPool2d: peft LoRA on the stock attention pool's projections changes
    nothing (it calls F.multi_head_attention_forward with their weights; tests/test_lora_towers.py)."""
    import peft

    model = tiny("ftclip-tiny-rn", (64, 64)).model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model.encode_image(images)
    peft.inject_adapter_in_model(peft.LoraConfig(target_modules=["q_proj", "k_proj", "v_proj"], r=4), model.visual)
    randomize_b(model, std=1.0)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images), before)


def test_describe_trainable_counts():
    bb = tiny()
    stock_total = sum(p.numel() for p in bb.model.parameters())
    summary = apply_lora(bb, lora_cfg())  # image, attn, all blocks
    groups = bb.parameter_groups()
    freeze_for_stage(groups, ["image.lora"], "s2")
    assert summary.num_params == 2 * 4 * 2 * R * WIDTH == 16_384
    assert sum(p.numel() for p in bb.model.parameters()) == stock_total + 16_384 == 3_443_265
    # 16384 / 3443265 = 0.476 %
    assert describe_trainable(groups, "s2") == "stage 's2': training 16.38K / 3.44M parameters (0.48%)"


def test_describe_trainable_vit_b16():
    """ViT-B-16, r=16 on attn of all 12 image blocks: the '1.2M / 86M (1.4%)' of the design card."""
    logging.disable(logging.WARNING)
    try:  # on the meta device: shapes only, no memory, no init cost
        model = open_clip.create_model("ViT-B-16", force_image_size=(256, 128), device="meta")
    finally:
        logging.disable(logging.NOTSET)
    bb = Backbone(model, None, "ViT-B-16", Preprocess((256, 128), (0.0,) * 3, (1.0,) * 3), False)
    summary = apply_lora(bb, lora_cfg(r=16))
    assert summary.num_params == 12 * 4 * 2 * 16 * 768 == 1_179_648  # blocks x q,k,v,out x (A + B) x r x width
    groups = bb.parameter_groups()
    freeze_for_stage(groups, ["image.lora"], "s2")
    image_tower = {g: groups[g] for g in ("image", "image.lora")}  # 86.14M stock at 256x128 + 1.18M adapters
    assert describe_trainable(image_tower, "s2") == "stage 's2': training 1.18M / 87.32M parameters (1.35%)"
    assert describe_trainable(groups, "s2") == "stage 's2': training 1.18M / 150.75M parameters (0.78%)"


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_attention_matches_multihead_attention(batch_first):
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    split = SplitProjectionAttention.from_mha(mha)
    x = torch.randn(3, 5, 32) if batch_first else torch.randn(5, 3, 32)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    padding_float = torch.zeros(padding.shape).masked_fill(padding, float("-inf"))
    for kwargs in ({}, {"attn_mask": causal}, {"attn_mask": causal.isinf()}, {"key_padding_mask": padding},
                   {"attn_mask": causal, "key_padding_mask": padding_float},
                   {"attn_mask": causal.isinf(), "key_padding_mask": padding},
                   {"attn_mask": causal.repeat(3 * 4, 1, 1)}):
        with torch.no_grad():
            want = mha(x, x, x, need_weights=False, **kwargs)[0]
            got = split(x, x, x, need_weights=False, **kwargs)[0]
        assert (got - want).abs().max() < 1e-5, kwargs
    back = split.to_mha()
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), mha.state_dict().values()))
