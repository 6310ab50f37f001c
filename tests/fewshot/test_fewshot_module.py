"""The few-shot module against its references on identical inputs: CLIP-LoRA's adapter placement and scaling,
CoOp's prompt layout through the text tower, the classifiers' logits (torch and the model card's numpy), the
logit scale, and the seeded build WiSE-FT relies on."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ftclip.backbone import Backbone
from ftclip.config import ModelConfig
from ftclip.recipe import load_recipe
from ftclip.strategies.lora import apply_lora, merge_lora
from ftclip.tasks.fewshot.classifier import classifier_logits, numpy_logits_lines
from ftclip.tasks.fewshot.heads import tip_adapter_logits
from ftclip.tasks.fewshot.methods import CLIP_LORA, COOP
from ftclip.tasks.fewshot.module import FewshotModule

INFO = {"classnames": ["red circle", "blue square", "green triangle"], "templates": ["a photo of a {}."],
        "dataset": "folder", "shots": 2, "num_train": 6}


def _cfg(*overrides):
    return load_recipe("demo/fewshot_synthetic", ["data.root=/nowhere", *overrides])


def test_clip_lora_places_one_adapter_on_each_of_q_k_v_in_every_block_of_both_towers():
    logging.disable(logging.WARNING)
    try:
        backbone = Backbone.from_config(OmegaConf.structured(ModelConfig(name="ftclip-tiny-vit", image_size=[64, 64])))
    finally:
        logging.disable(logging.NOTSET)
    lora = load_recipe("fewshot_clip_lora", ["data.root=/d"]).strategies.lora
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    summary = apply_lora(backbone, lora)
    expected = [f"{tower}.{i}.attn.{p}" for tower in ("transformer.resblocks", "visual.transformer.resblocks")
                for i in range(2) for p in ("q_proj", "k_proj", "v_proj")]
    assert sorted(summary.targets) == sorted(expected)  # 3 per block, 2 blocks per tower, no out_proj, no MLP
    layer = backbone.model.visual.transformer.resblocks[0].attn.q_proj
    assert layer.scaling["default"] == pytest.approx(CLIP_LORA.alpha / math.sqrt(CLIP_LORA.r))  # rsLoRA
    assert layer.lora_A["default"].weight.shape == (CLIP_LORA.r, 64)
    assert layer.lora_dropout["default"].p == CLIP_LORA.dropout
    q, k = (backbone.model.visual.transformer.resblocks[0].attn.__getattr__(n) for n in ("q_proj", "k_proj"))
    assert q.lora_dropout["default"] is not k.lora_dropout["default"]  # separate masks per projection
    merge_lora(backbone)  # B = 0: merging gives back the stock open_clip weights
    after = backbone.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_coop_initialised_from_a_phrase_is_that_phrase_through_the_text_tower():
    """[SOS] ctx_1..ctx_M <name> . [EOS] with ctx = the phrase's token embeddings is the tokenised text itself."""
    module = FewshotModule(_cfg("stages.clip_lora.kind=coop", "stages.clip_lora.train=[prompts]",
                                "strategies.lora.enabled=false", "strategies.coop.init=a photo of a"), INFO)
    assert tuple(module.context.ctx.shape) == (4, module.backbone.text_width)  # M = 4 tokens
    module.state["context"] = True
    with torch.no_grad():
        learned = module.class_text()
        module.state["context"] = False
        plain = module.class_text()  # "a photo of a {}." through the tower
    assert torch.allclose(learned, plain, atol=1e-5)
    random = FewshotModule(_cfg("stages.clip_lora.kind=coop", "stages.clip_lora.train=[prompts]",
                                "strategies.lora.enabled=false"), INFO).context.ctx
    assert tuple(random.shape) == (COOP.n_ctx, 64) and float(random.detach().std()) == pytest.approx(COOP.init_std, rel=0.1)


def test_the_module_is_built_under_the_run_seed():
    """Its random init (and LoRA's A) is a function of the config: WiSE-FT rebuilds the zero-shot weights from it."""
    a, b = FewshotModule(_cfg(), INFO), FewshotModule(_cfg(), INFO)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    rebuilt = {f"backbone.model.{k}": v for k, v in a.zero_shot_backbone().model.state_dict().items()}
    assert all(torch.equal(rebuilt[k], v) for k, v in a.state_dict().items() if k.startswith("backbone."))
    c = FewshotModule(_cfg("seed=1"), INFO)
    assert not torch.equal(a.backbone.model.visual.conv1.weight, c.backbone.model.visual.conv1.weight)


def test_logit_scale_is_fixed_or_the_models():
    module = FewshotModule(_cfg(), INFO)
    assert module.logit_scale() == 100.0
    own = FewshotModule(_cfg("strategies.zeroshot.logit_scale=null"), INFO)
    assert own.logit_scale() == pytest.approx(1 / 0.07)  # open_clip initialises logit_scale to log(1 / 0.07)


def _tensors(seed: int = 0, n: int = 7, c: int = 4, d: int = 8, cache: int = 5):
    g = torch.Generator().manual_seed(seed)
    return {"text_features": {"weights": F.normalize(torch.randn(c, d, generator=g), dim=-1),
                              "logit_scale": torch.tensor(100.0)},
            "heads": {"weight": torch.randn(c, d, generator=g), "bias": torch.randn(c, generator=g),
                      "cache_keys": F.normalize(torch.randn(cache, d, generator=g), dim=-1),
                      "cache_values": F.one_hot(torch.arange(cache) % c, c).float(),
                      "alpha": torch.tensor(1.7), "beta": torch.tensor(5.5)}}, torch.randn(n, d, generator=g) * 3


@pytest.mark.parametrize("meta", [{"classifier": "text"}, {"classifier": "linear", "normalize": True},
                                  {"classifier": "linear", "normalize": False}, {"classifier": "tip"}])
def test_classifier_logits_and_the_model_cards_numpy_lines_agree_with_the_formulas(meta):
    tensors, f = _tensors()
    t, h = tensors["text_features"], tensors["heads"]
    u = F.normalize(f, dim=-1)
    reference = {
        "text": 100.0 * u @ t["weights"].T,
        "linear": (u if meta.get("normalize") else f) @ h["weight"].T + h["bias"],
        "tip": 100.0 * u @ t["weights"].T + 1.7 * torch.exp(-5.5 * (1 - u @ h["cache_keys"].T)) @ h["cache_values"],
    }[meta["classifier"]]
    logits = classifier_logits(f, tensors, meta)
    assert torch.allclose(logits, reference, atol=1e-4)
    if meta["classifier"] == "tip":
        assert torch.allclose(logits, tip_adapter_logits(f, t["weights"], h["cache_keys"], h["cache_values"], 1.7, 5.5))
    files = {"text_features.safetensors": {k: v.numpy() for k, v in t.items()},
             "heads.safetensors": {k: v.numpy() for k, v in h.items()}}
    scope = {"np": np, "f": f.numpy().copy(), "folder": "X", "load_file": lambda path: files[path.split("/")[-1]]}
    exec("\n".join(numpy_logits_lines(meta)), scope)
    assert np.allclose(scope["logits"], logits.numpy(), atol=1e-3)
