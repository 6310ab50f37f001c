"""What differs between open_clip's towers, named in one place.

Image towers (``model.visual``) come in three kinds (:func:`image_kind`):

* ``vit``: open_clip ``VisionTransformer`` (class token, ``ln_post``, ``proj``);
* ``resnet``: open_clip ``ModifiedResNet`` (RN50, ...): four stages, then an attention pool;
* ``timm``: open_clip ``TimmModel``, a timm trunk under ``visual.trunk`` (FastViT-MCi for MobileCLIP,
  timm ViTs for SigLIP/SigLIP2/ViT-SO400M/MobileCLIP-B) plus ``visual.head`` (projection, may be empty).

Text towers are either open_clip ``CLIP``'s (parts on the model itself, causal mask) or a
``TextTransformer`` under ``model.text`` (``CustomTextCLIP``: MobileCLIP, SigLIP; often
bidirectional, pooled at the end-of-text token, the last position or the first); :func:`text_module`
returns the module that holds ``token_embedding``, ``positional_embedding``, ``transformer``,
``ln_final``, ``text_projection`` and ``attn_mask`` in both cases.

Also here: the pooled image features every kind has (:func:`image_features`), CLIP-ReID's ResNet
variant (:func:`set_resnet_variant`: last stage stride 1, attention-pool grid resized to a
non-square input) and FastViT/MobileOne re-parameterisation for deployment (:func:`reparameterized`).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ftclip.errors import ConfigError, FtclipError

IMAGE_KINDS = ("vit", "resnet", "timm")
RESNET_STRIDES = (1, 2)  # the last stage's stride: 2 is open_clip's, 1 is CLIP-ReID's


def image_kind(visual: nn.Module) -> str:
    """``vit``, ``resnet`` or ``timm`` (see the module docstring); the class name for anything else."""
    if isinstance(visual, VisionTransformer):
        return "vit"
    if isinstance(visual, ModifiedResNet):
        return "resnet"
    if isinstance(visual, TimmModel):
        return "timm"
    return type(visual).__name__


def resize_grid_embedding(pos: torch.Tensor, new_grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """Resize a positional embedding ``[prefix + h*w, C]`` (ViT grid or ResNet attention pool) to
    ``new_grid`` bilinearly (``align_corners=False``, as CLIP-ReID's ``resize_pos_embed``).

    The old grid is taken to be square (as every released CLIP checkpoint is) unless its
    token count equals ``new_grid``'s. Prefix (class / mean-token) positions are kept unchanged.
    """
    prefix, grid = pos[:num_prefix], pos[num_prefix:]
    if grid.shape[0] == new_grid[0] * new_grid[1]:
        return pos
    side = int(round(math.sqrt(grid.shape[0])))
    if side * side != grid.shape[0]:
        raise FtclipError(
            f"cannot resize a positional embedding of {grid.shape[0]} grid tokens (not a square grid) to {new_grid}"
        )
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([prefix, grid], dim=0)


# ---------------------------------------------------------------------------------------- text
def text_module(model: nn.Module, name: str = "") -> nn.Module:
    """The module holding the text tower's parts: ``model`` (open_clip ``CLIP``) or ``model.text``
    (``CustomTextCLIP``). A Hugging Face text tower (``HFTextEncoder``) has no such parts: ConfigError."""
    text = getattr(model, "text", None)
    if text is None:
        return model
    if not isinstance(text, TextTransformer):
        raise ConfigError(
            f"model.name {name or type(model).__name__}: its text tower is {type(text).__name__} (a Hugging Face "
            "model), not an open_clip text transformer; prompt learning and text LoRA need open_clip's own "
            "text towers (CLIP, MobileCLIP, SigLIP)"
        )
    return text


def text_pool(model: nn.Module) -> tuple[str, int | None]:
    """How the text tower pools its tokens: (``argmax`` | ``eos`` | ``last`` | ``first`` | ``none``, eos id)."""
    text = text_module(model)
    if text is model:
        return str(getattr(model, "text_pool_type", "argmax")), getattr(model, "text_eos_id", None)
    return str(text.pool_type), getattr(text, "eos_id", None)


def pool_index(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The position ``[B]`` whose output the text tower pools for each row of ``tokens``: the end-of-text
    token (``argmax``: the largest id, CLIP's BPE; ``eos``: the first eos id), the last or the first position."""
    pool, eos = text_pool(model)
    batch, length = tokens.shape
    if pool == "argmax":
        return tokens.argmax(dim=-1)
    if pool == "eos":
        return (tokens == eos).int().argmax(dim=-1)
    if pool in ("last", "first"):
        return torch.full((batch,), length - 1 if pool == "last" else 0, dtype=torch.long, device=tokens.device)
    raise ConfigError(f"the text tower pools '{pool}' (no single pooled token); prompt learning needs one")


def encode_text_embeddings(model: nn.Module, embeddings: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The text tower on token embeddings ``[B, L, width]``, pooled at ``index`` ([B], :func:`pool_index`).

    Exactly ``encode_text``'s steps after the token lookup, for causal and bidirectional towers:
    + positional embedding -> transformer (causal mask if the tower has one) -> ``ln_final`` ->
    pooled token -> projection (matrix or ``nn.Linear``, with its bias where SigLIP has one).
    """
    text = text_module(model)
    if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
        raise ConfigError("this text tower appends a class token or masks padding by token id (CoCa-style); "
                          "text-embedding injection supports CLIP, MobileCLIP and SigLIP text towers")
    cast = text.transformer.get_cast_dtype()
    length = embeddings.shape[1]
    x = embeddings.to(cast) + text.positional_embedding[:length].to(cast)
    mask = text.attn_mask[:length, :length] if text.attn_mask is not None else None
    x = text.transformer(x, attn_mask=mask)
    x = text.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), index]
    proj = text.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def text_projection_dim(model: nn.Module) -> int:
    """Width of the text feature (the shared embedding): the projection's output, else the tower width."""
    text = text_module(model)
    proj = text.text_projection
    if proj is None:
        return int(text.token_embedding.embedding_dim)
    return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])


# ---------------------------------------------------------------------------------------- image features
def vision_width(visual: nn.Module, name: str = "") -> int:
    """Width of the pooled feature before the projection (``final`` of :func:`image_features`)."""
    kind = image_kind(visual)
    if kind == "vit":
        return int(visual.class_embedding.shape[0])
    if kind == "resnet":
        return int(visual.attnpool.c_proj.in_features)
    if kind == "timm":
        trunk = visual.trunk
        return int(getattr(trunk, "head_hidden_size", None) or trunk.num_features)
    raise ConfigError(f"model.name {name}: unsupported image tower {kind}; ftclip supports open_clip ViT, "
                      "ModifiedResNet and timm towers")


def resnet_stages(visual: ModifiedResNet, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(layer3 output, layer4 output) feature maps of an open_clip ResNet."""
    x = visual.layer2(visual.layer1(visual.stem(images)))
    x3 = visual.layer3(x)
    return x3, visual.layer4(x3)


def timm_pre_logits(visual: TimmModel, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled feature before the projection, ``encode_image`` output) from the trunk's final features.

    The pooled feature is timm's ``forward_head(pre_logits=True)`` (average pool for FastViT, the class
    token after the norm for ViTs with ``token`` pooling, the attention-pool output for SigLIP's ``map``);
    the projection is the trunk's classifier (MobileCLIP: ``timm_proj`` null) then open_clip's ``visual.head``.
    """
    trunk = visual.trunk
    pooled = trunk.forward_head(features, pre_logits=True)
    if pooled.ndim != 2:  # custom pooling in visual.head (abs_attn / rot_attn): the trunk does not pool
        return pooled.float().mean(dim=tuple(range(2, pooled.ndim))).to(pooled.dtype), visual.head(pooled)
    return pooled, visual.head(trunk.get_classifier()(pooled))


def image_features(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(proj, final)``: ``proj`` is exactly ``encode_image``; ``final`` the pooled feature before the
    projection (ViT: class token after ``ln_post``; ResNet: global average pool of the last stage, as
    CLIP-ReID; timm: :func:`timm_pre_logits`). Without a projection ``final`` equals ``proj``."""
    kind = image_kind(visual)
    if kind == "vit":
        pooled, _ = visual._pool(visual.transformer(visual._embeds(images)))  # VisionTransformer.forward's steps
        return (pooled @ visual.proj if visual.proj is not None else pooled), pooled
    if kind == "resnet":
        _, x4 = resnet_stages(visual, images)
        return visual.attnpool(x4), x4.mean(dim=(2, 3))
    if kind == "timm":
        final, proj = timm_pre_logits(visual, visual.trunk.forward_features(images))
        return proj, final
    raise ConfigError(f"unsupported image tower {kind}; ftclip supports open_clip ViT, ModifiedResNet and timm towers")


# ---------------------------------------------------------------------------------------- CLIP-ReID's ResNet
def resnet_grid(image_size: tuple[int, int], last_stride: int) -> tuple[int, int]:
    """The attention pool's grid for an input ``(height, width)``: /32 (open_clip) or /16 (last stride 1)."""
    reduction = 16 if last_stride == 1 else 32
    return int(image_size[0]) // reduction, int(image_size[1]) // reduction


def set_resnet_variant(visual: ModifiedResNet, image_size: tuple[int, int], last_stride: int) -> None:
    """In place: the last stage's first block strides by ``last_stride`` (CLIP-ReID: 1, so 256x128 gives a
    16x8 grid) and the attention pool's positional embedding is resized bilinearly to the input's grid.

    No weight changes shape except ``attnpool.positional_embedding`` (strides are pooling, not weights),
    so open_clip's state-dict keys stay as they are.
    """
    if last_stride not in RESNET_STRIDES:
        raise ConfigError(f"model.resnet_last_stride must be 1 (CLIP-ReID) or 2 (open_clip), got {last_stride}")
    block = visual.layer4[0]
    if last_stride == 1:
        block.avgpool = nn.Identity()
        if block.downsample is not None:
            block.downsample[0] = nn.Identity()  # its AvgPool2d(2); the 1x1 conv and BatchNorm stay
        block.stride = 1
    pool = visual.attnpool
    old = pool.positional_embedding
    new = resize_grid_embedding(old.detach(), resnet_grid(image_size, last_stride))
    if new.shape != old.shape:
        pool.positional_embedding = nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)
    visual.image_size = (int(image_size[0]), int(image_size[1]))


def resnet_last_stride(visual: ModifiedResNet) -> int:
    return 1 if isinstance(visual.layer4[0].avgpool, nn.Identity) and len(visual.layer4) else 2


# ---------------------------------------------------------------------------------------- BatchNorm, deployment
def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def reparameterizable(module: nn.Module) -> bool:
    """Whether ``module`` has train-time multi-branch blocks that fold for deployment (FastViT, MobileOne)."""
    return any(hasattr(m, "reparameterize") or hasattr(m, "switch_to_deploy") for m in module.modules()
               if m is not module)


def reparameterized(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every FastViT/MobileOne block folded into its single-branch
    inference form (``timm.utils.reparameterize_model``); ``model`` is left as it is."""
    from timm.utils import reparameterize_model

    was_training = model.training
    model.eval()
    try:
        return reparameterize_model(copy.deepcopy(model), inplace=True).eval()
    finally:
        model.train(was_training)
