"""ID-specific prompts (CLIP-ReID) and shared CoOp context."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ftclip.backbone import Backbone
from ftclip.config import ModelConfig
from ftclip.errors import ConfigError
from ftclip.strategies.prompts import IdPrompts, SharedPrompts


@pytest.fixture(scope="module")
def backbone():
    return Backbone.from_config(OmegaConf.structured(ModelConfig(name="ftclip-tiny-vit", image_size=[128, 64]))).eval()


def test_id_prompt_shapes_and_frozen_template(backbone):
    prompts = IdPrompts(backbone, num_ids=5)
    assert prompts.ctx.shape == (5, 4, backbone.text_width)
    assert 0.01 < prompts.ctx.std().item() < 0.03  # N(0, 0.02)
    emb, eot = prompts.embeddings(backbone, torch.tensor([0, 3, 3]))
    assert emb.shape == (3, 77, backbone.text_width)
    tokens = backbone.tokenize(["A photo of a X X X X person."])[0]
    assert int(eot[0]) == int(tokens.argmax())
    # prefix ("<start> a photo of a") and suffix ("person. <end> pad") are the template's token embeddings
    reference = backbone.embed_tokens(tokens[None])[0]
    assert torch.equal(emb[0, :5], reference[:5]) and torch.equal(emb[0, 9:], reference[9:])
    assert torch.equal(emb[1, 5:9], prompts.ctx[3])
    # no learnable state besides the context, and the template is not stored in checkpoints
    assert [n for n, _ in prompts.named_parameters()] == ["ctx"]
    assert list(prompts.state_dict()) == ["ctx"]


def test_template_follows_weights_loaded_after_construction(backbone):
    """Loading a checkpoint into the backbone after the prompts exist must change the template."""
    prompts = IdPrompts(backbone, num_ids=2)
    before = prompts.embeddings(backbone, torch.tensor([0]))[0].clone()
    original = backbone.model.token_embedding.weight.detach().clone()
    try:
        with torch.no_grad():
            backbone.model.token_embedding.weight.add_(1.0)
        after = prompts.embeddings(backbone, torch.tensor([0]))[0]
        assert torch.allclose(after[0, :5], before[0, :5] + 1.0)
        assert torch.equal(after[0, 5:9], before[0, 5:9])  # the learned context is untouched
    finally:
        with torch.no_grad():
            backbone.model.token_embedding.weight.copy_(original)


def test_id_prompt_features_depend_on_identity(backbone):
    prompts = IdPrompts(backbone, num_ids=3)
    feats = prompts.text_features(backbone, torch.tensor([0, 1, 0]))
    assert feats.shape == (3, backbone.embed_dim)
    assert torch.allclose(feats[0], feats[2]) and not torch.allclose(feats[0], feats[1])
    feats.sum().backward()
    assert prompts.ctx.grad is not None and prompts.ctx.grad[2].abs().sum() == 0


def test_vehicle_template_and_bad_template(backbone):
    assert IdPrompts(backbone, 2, "A photo of a X X X X vehicle.").num_tokens == 4
    with pytest.raises(ConfigError, match="placeholder"):
        IdPrompts(backbone, 2, "A photo of a person.")
    with pytest.raises(ConfigError, match="contiguous"):
        IdPrompts(backbone, 2, "A X photo of a X person.")


def test_shared_context_prompts(backbone):
    shared = SharedPrompts(backbone, ["Good photo.", "Bad photo."], num_tokens=16)
    feats = shared.text_features(backbone)
    assert feats.shape == (2, backbone.embed_dim)
    assert shared.ctx.shape == (16, backbone.text_width)


def test_clip_iqa_plus_context_layout_is_pyiqa_s(backbone):
    """Per prompt, from the "X" token, split 8 + the prompt's tokens + 8 (pyiqa's CLIP-IQA+ PromptLearner)."""
    from open_clip.tokenizer import SimpleTokenizer

    texts = ["Good photo..", "Bad photo.."]
    ctx = SharedPrompts(backbone, texts, num_tokens=16, per_prompt=True, layout="middle", init="token")
    assert ctx.ctx.shape == (2, 16, backbone.text_width)
    tokens = backbone.tokenize(["X " * 16 + t for t in texts])
    emb = backbone.embed_tokens(tokens).detach()
    assert torch.equal(ctx.ctx.detach(), emb[:, 1:17])  # started from the X tokens' embeddings
    with torch.no_grad():
        ctx.ctx.normal_()  # a trained context: every position must land where pyiqa puts it
    rows = []
    for i, text in enumerate(texts):
        name_len = len(SimpleTokenizer().encode(text))  # "good photo .." = 3 tokens
        prefix, suffix = emb[i:i + 1, :1], emb[i:i + 1, 17:]
        rows.append(torch.cat([prefix, ctx.ctx[i:i + 1, :8], suffix[:, :name_len], ctx.ctx[i:i + 1, 8:],
                               suffix[:, name_len:]], dim=1))
    want = backbone.encode_text_embeddings(torch.cat(rows), tokens.argmax(dim=-1))
    torch.testing.assert_close(ctx.text_features(backbone), want)
    front = SharedPrompts(backbone, texts, num_tokens=16)  # CoOp: one shared N(0, 0.02) context in front
    assert front.ctx.shape == (16, backbone.text_width) and 0.01 < front.ctx.std().item() < 0.03
    with pytest.raises(ConfigError, match="layout"):
        SharedPrompts(backbone, texts, layout="end")
