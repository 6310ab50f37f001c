"""CLIP-ReID's image features (see docs/methods/clip_reid.md).

A ViT with class-token pooling gives three features of the class token: after the second-to-last
block (no final LayerNorm), after the last block and ``ln_post``, and that times the projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from ftclip.errors import ConfigError


@dataclass(frozen=True)
class ReidFeatures:
    """CLIP-ReID's three class-token features of a ViT."""

    last: torch.Tensor  # class token after the second-to-last block, no final LayerNorm
    final: torch.Tensor  # class token after the last block and ln_post
    proj: torch.Tensor  # ``final`` times the projection (the CLIP embedding)


def reid_features(backbone, images: torch.Tensor, class_offset: torch.Tensor | None = None) -> ReidFeatures:
    """CLIP-ReID features of ``images``; ``class_offset`` ([B, width], e.g. SIE) is added to the class token only."""
    visual = backbone.visual
    if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None or visual.pool_type != "tok":
        raise ConfigError(
            f"model.name {backbone.name}: re-identification features need a ViT with class-token pooling "
            "(e.g. ViT-B-16, ViT-L-14); this tower is not one"
        )
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


def _run_block(transformer: nn.Module, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if getattr(transformer, "grad_checkpointing", False) and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(block, x, use_reentrant=False)
    return block(x)
