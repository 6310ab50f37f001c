"""Tiny SigLIP- and MobileCLIP-B-shaped test models: timm ViT trunks under ``model.visual.trunk``.

ftclip registers ``ftclip-tiny-mobileclip`` (FastViT trunk) itself; the two timm-ViT shapes below are
only for tests, so they are registered here (as a user registers a custom config: a JSON file and
``open_clip.add_model_config``, plus a timm entry point for the trunk):

* ``ftclip-test-sigmoid``: SigLIP's structure: a timm ViT without class token, attention-pool (``map``)
  head, no projection (``timm_proj: none``); a bidirectional text tower pooled at the *last* position
  with a biased projection; a sigmoid ``logit_bias``. (CLIP's BPE tokenizer, so it builds offline; no
  "siglip" in the name, which would make open_clip pick SigLIP's Hugging Face tokenizer.)
* ``ftclip-test-mcib``: MobileCLIP-B's: a timm ViT with a class token (``token`` pooling) and the
  trunk's classifier as the projection (``timm_proj: null``); a causal text tower.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, _create_vision_transformer

default_cfgs = generate_default_cfgs({
    "ftclip_test_vit_map": {"url": "", "num_classes": 0, "input_size": (3, 64, 64)},
    "ftclip_test_vit_token": {"url": "", "num_classes": 0, "input_size": (3, 64, 64)},
})


@register_model
def ftclip_test_vit_map(pretrained: bool = False, **kwargs) -> VisionTransformer:
    args = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, class_token=False,
                global_pool="map", fc_norm=False)
    return _create_vision_transformer("ftclip_test_vit_map", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def ftclip_test_vit_token(pretrained: bool = False, **kwargs) -> VisionTransformer:
    args = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, no_embed_class=True)
    return _create_vision_transformer("ftclip_test_vit_token", pretrained=pretrained, **dict(args, **kwargs))


CONFIGS = {
    "ftclip-test-sigmoid": {
        "embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": 64, "timm_model_name": "ftclip_test_vit_map", "timm_model_pretrained": False,
                       "timm_pool": "map", "timm_proj": "none"},
        "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                     "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
    },
    "ftclip-test-mcib": {
        "embed_dim": 48, "custom_text": True,
        "vision_cfg": {"image_size": 64, "timm_model_name": "ftclip_test_vit_token", "timm_model_pretrained": False,
                       "timm_pool": "token", "timm_proj": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}

_folder = Path(tempfile.mkdtemp(prefix="ftclip-test-models-"))
for _name, _cfg in CONFIGS.items():
    (_folder / f"{_name}.json").write_text(json.dumps(_cfg), encoding="utf-8")
open_clip.add_model_config(_folder)
