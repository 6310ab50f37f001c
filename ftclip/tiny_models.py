"""ftclip's tiny random-init models (tests and CPU demos), registered with open_clip and timm on import.

* ``ftclip-tiny-vit``: open_clip ViT image tower (2 blocks, width 64, patch 16), CLIP text tower.
* ``ftclip-tiny-rn``: open_clip ModifiedResNet image tower (one bottleneck per stage, width 16).
* ``ftclip-tiny-mobileclip``: a MobileCLIP-S-style model (``custom_text``): a FastViT-MCi image
  trunk (timm ``ftclip_tiny_fastvit_mci``: RepMixer stages, attention and a conditional positional
  encoding in the last stage, MobileOne stem and final conv, BatchNorm throughout) under
  ``model.visual.trunk``, and a bidirectional (no causal mask) text transformer with CLIP's BPE
  vocabulary under ``model.text``, as open_clip's MobileCLIP-S1/S2 configs. Its preprocessing is
  MobileCLIP's: mean 0, std 1, bilinear (:data:`PREPROCESS`).

The JSON configs live in ``ftclip/model_configs/``; the timm trunk is registered here because a
model config can only name a timm model, not describe one.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import open_clip
from timm.models import generate_default_cfgs, register_model
from timm.models.fastvit import RepConditionalPosEnc, _create_fastvit

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

#: Preprocessing of the tiny models that open_clip's pretrained registry does not describe (no tags).
PREPROCESS = {
    "ftclip-tiny-mobileclip": {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear"},
}

# timm's register_model reads ``default_cfgs`` of the defining module (no weights: url "").
default_cfgs = generate_default_cfgs({
    "ftclip_tiny_fastvit_mci": {"url": "", "num_classes": 0, "input_size": (3, 256, 256), "pool_size": (8, 8),
                                "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear",
                                "first_conv": "stem.0.conv_kxk.0.conv", "classifier": "head.fc"},
})


@register_model
def ftclip_tiny_fastvit_mci(pretrained: bool = False, **kwargs):
    """FastViT-MCi in miniature (one block per stage, widths 16-128): the block types of MobileCLIP-S0..S2."""
    args = dict(
        layers=(1, 1, 1, 1),
        embed_dims=(16, 32, 64, 128),  # each a multiple of the previous (grouped downsampling convs)
        mlp_ratios=(3, 3, 3, 3),
        se_downsamples=(False, False, True, True),
        pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(7, 7))),
        token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
        lkc_use_act=True,
    )
    return _create_fastvit("ftclip_tiny_fastvit_mci", pretrained=pretrained, **dict(args, **kwargs))
