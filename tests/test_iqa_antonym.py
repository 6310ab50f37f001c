"""Antonym prompts: the quality score formula and frozen, rebuilt text features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ftclip.backbone import Backbone
from ftclip.config import ModelConfig
from ftclip.errors import ConfigError
from ftclip.tasks.iqa.antonym import AntonymPrompts

PAIRS = [["Good photo.", "Bad photo."], ["Sharp image.", "Blurry image."]]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return Backbone.from_config(ModelConfig(name="ftclip-tiny-vit", image_size=[64, 64]))


def test_score_is_mean_over_pairs_of_positive_softmax_probability(backbone):
    antonym = AntonymPrompts(backbone, PAIRS, logit_scale=100.0)
    feats = torch.randn(5, backbone.embed_dim)
    pos, neg = antonym.text_features()
    got = antonym.score(feats)
    for b in range(5):
        probs = []
        for p in range(len(PAIRS)):
            cp = F.cosine_similarity(feats[b], pos[p], dim=0).item()
            cn = F.cosine_similarity(feats[b], neg[p], dim=0).item()
            probs.append(math.exp(100 * cp) / (math.exp(100 * cp) + math.exp(100 * cn)))
        assert got[b].item() == pytest.approx(sum(probs) / len(probs), abs=1e-5)
    assert ((got >= 0) & (got <= 1)).all()


def test_zero_shot_features_are_the_plain_prompts_through_the_text_tower(backbone):
    antonym = AntonymPrompts(backbone, PAIRS)
    for param in backbone.parameters():  # as in a stage that does not train the text tower
        param.requires_grad_(False)
    with torch.no_grad():
        expected = backbone.encode_text(backbone.tokenize(["Good photo.", "Sharp image.", "Bad photo.", "Blurry image."]))
    pos, neg = antonym.text_features()
    torch.testing.assert_close(pos, expected[:2].float())
    torch.testing.assert_close(neg, expected[2:].float())
    assert list(antonym.parameters()) == []  # nothing to learn without context tokens
    assert not pos.requires_grad


def test_frozen_features_are_rebuilt_from_the_weights_not_loaded_from_a_checkpoint(tmp_path):
    from omegaconf import OmegaConf

    from ftclip.tasks.iqa import TASK

    cfg = OmegaConf.merge(OmegaConf.structured(TASK.schema), {
        "name": "t", "model": {"name": "ftclip-tiny-vit", "image_size": [64, 64]},
        "stages": {"q": {"kind": "qualiclip", "train": ["image"]}}})
    module = TASK.build_module(cfg, {})
    state = module.state_dict()
    assert not any(k.startswith("antonym.") for k in state), "frozen features must not be stored in checkpoints"
    before = module.antonym.positive.clone()
    # change the text tower: the features must follow the loaded weights
    state["backbone.model.text_projection"] = state["backbone.model.text_projection"] * 2 + 0.1
    module.load_state_dict(state)
    assert not torch.allclose(module.antonym.positive, before)
    with torch.no_grad():
        expected = module.backbone.encode_text(module.backbone.tokenize(["Good photo."])).float()
    torch.testing.assert_close(module.antonym.positive, expected)


def test_learned_context_is_the_prompts_group(backbone):
    antonym = AntonymPrompts(backbone, PAIRS, context_tokens=4)
    assert [n for n, _ in antonym.named_parameters()] == ["context.ctx"]
    pos, _ = antonym.text_features()
    assert pos.requires_grad  # features depend on the learned context: computed live


@pytest.mark.parametrize("pairs", [[], [["Good photo."]], [["Good photo.", ""]]])
def test_bad_pairs_are_one_clear_error(backbone, pairs):
    with pytest.raises(ConfigError, match="strategies.antonym.pairs"):
        AntonymPrompts(backbone, pairs)
