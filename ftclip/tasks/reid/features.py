"""CLIP-ReID's image features for every image tower kind (see docs/methods/clip_reid.md, docs/reid.md).

Three features per image, chosen by the tower (``backbone.image_kind``):

* ViT (CLIP-ReID): ``last`` = class token after the second-to-last block (no final LayerNorm);
  ``final`` = class token after the last block and ``ln_post``; ``proj`` = ``final`` @ projection.
* ResNet (CLIP-ReID's RN50 variant): ``last`` = global average pool of ``layer3``; ``final`` = global
  average pool of ``layer4``; ``proj`` = the attention-pool output (``encode_image``).
* timm trunk (MobileCLIP, SigLIP, ...; ftclip's extension of the same idea): ``last`` = the output of the
  second-to-last block (ViT trunks: its class token where there is one, else the token average) or
  stage (FastViT: its global average pool); ``final`` = timm's pooled pre-logits feature; ``proj`` =
  ``encode_image``.

``last`` enters only the triplet loss; ``final`` and ``proj`` feed the BNNecks, the classifiers, the
image-to-text loss (``proj``) and the test feature. For ResNets the last stage has stride 1 and the
attention pool's positional embedding is resized to the input's grid (``model.resnet_last_stride=1``,
the re-ID default; ftclip/towers.py). SIE (camera embeddings) needs an open_clip ViT's class token.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from ftclip.errors import ConfigError
from ftclip.towers import resnet_stages, timm_pre_logits


@dataclass(frozen=True)
class ReidFeatures:
    """CLIP-ReID's three features (see the module docstring for what each is per tower)."""

    last: torch.Tensor  # second-to-last block / stage, pooled (triplet loss only)
    final: torch.Tensor  # pooled feature before the projection
    proj: torch.Tensor  # ``encode_image`` (the CLIP embedding)


def check_reid_tower(backbone, sie: bool = False) -> None:
    """One clear ConfigError, before training, for a tower the re-ID features cannot use."""
    visual, kind = backbone.visual, backbone.image_kind
    if kind == "vit" and (visual.attn_pool is not None or visual.pool_type != "tok"):
        raise ConfigError(
            f"model.name {backbone.name}: re-identification features need class-token pooling in an open_clip "
            "ViT (e.g. ViT-B-16, ViT-L-14); this one pools with "
            f"{'an attention pool' if visual.attn_pool is not None else repr(visual.pool_type)}"
        )
    if kind == "timm" and not hasattr(visual.trunk, "forward_intermediates"):
        raise ConfigError(f"model.name {backbone.name}: its timm trunk {type(visual.trunk).__name__} has no "
                          "forward_intermediates (timm >= 1.0 models have it); re-ID needs its second-to-last stage")
    if kind not in ("vit", "resnet", "timm"):
        raise ConfigError(f"model.name {backbone.name}: re-identification does not support the image tower {kind}")
    if sie and kind != "vit":
        raise ConfigError(f"strategies.head.sie=true needs an open_clip ViT image tower (its class token); "
                          f"{backbone.name} has a {kind} tower: set strategies.head.sie=false")


def reid_features(backbone, images: torch.Tensor, class_offset: torch.Tensor | None = None) -> ReidFeatures:
    """CLIP-ReID features of ``images``; ``class_offset`` ([B, width], e.g. SIE) is added to a ViT's class token."""
    kind = backbone.image_kind
    if kind == "vit":
        return _vit_features(backbone, images, class_offset)
    check_reid_tower(backbone, sie=class_offset is not None)
    if kind == "resnet":
        x3, x4 = resnet_stages(backbone.visual, images)
        return ReidFeatures(last=x3.mean(dim=(2, 3)), final=x4.mean(dim=(2, 3)), proj=backbone.visual.attnpool(x4))
    return _timm_features(backbone.visual, images)


def _vit_features(backbone, images: torch.Tensor, class_offset: torch.Tensor | None) -> ReidFeatures:
    visual = backbone.visual
    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.pool_type != "tok":
        check_reid_tower(backbone)
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls_tok = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    if class_offset is not None:
        cls_tok = cls_tok + class_offset.to(x.dtype).unsqueeze(1)
    x = torch.cat([cls_tok, x], dim=1) + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = _run_block(visual.transformer, block, x)
    last = x[:, 0]
    x = _run_block(visual.transformer, blocks[-1], x)
    final = visual.ln_post(x[:, 0])
    proj = final @ visual.proj if visual.proj is not None else final
    return ReidFeatures(last=last, final=final, proj=proj)


def _timm_features(visual: nn.Module, images: torch.Tensor) -> ReidFeatures:
    trunk = visual.trunk
    tokens = "return_prefix_tokens" in inspect.signature(trunk.forward_intermediates).parameters
    kwargs = {"return_prefix_tokens": True, "output_fmt": "NLC"} if tokens else {}
    features, taps = trunk.forward_intermediates(images, indices=2, **kwargs)
    second = taps[0]  # the output of the second-to-last block (ViT) or stage (FastViT, ConvNeXt, ...)
    if isinstance(second, tuple):  # (spatial tokens, prefix tokens)
        spatial, prefix = second
        has_cls = getattr(trunk, "cls_token", None) is not None
        last = prefix[:, 0] if has_cls and prefix.shape[1] else spatial.mean(dim=1)
    elif second.ndim == 4:
        last = second.mean(dim=(2, 3))
    else:
        last = second.mean(dim=1)
    final, proj = timm_pre_logits(visual, features)
    return ReidFeatures(last=last, final=final, proj=proj)


def _run_block(transformer: nn.Module, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if getattr(transformer, "grad_checkpointing", False) and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(block, x, use_reentrant=False)
    return block(x)
