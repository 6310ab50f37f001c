"""LoRA adapters on the encoders of an open_clip CLIP model (peft), and merging them back.

:func:`apply_lora` injects peft LoRA adapters in place into ``backbone.model``, per tower kind
(ftclip/towers.py); ``blocks`` selects among the tower's blocks, listed below:

========================  ====================================  ==============================================
tower                     ``attn`` (``qkv``: without the        ``mlp``
                          output projection)
========================  ====================================  ==============================================
open_clip ViT / text      q, k, v, out projections of each      ``mlp.c_fc``, ``mlp.c_proj`` (``nn.Linear``)
(CLIP, MobileCLIP,        block's ``nn.MultiheadAttention``
SigLIP text)              (split into four Linears)
ResNet (ModifiedResNet)   the attention pool's q, k, v, c_proj  refused (a ResNet has no MLP blocks)
                          (one block; made to call them)
timm trunk (FastViT,      the fused ``qkv`` and ``proj`` of     ``mlp.fc1``, ``mlp.fc2``: ``nn.Linear`` (ViT)
timm ViT)                 blocks with attention (FastViT: the   or 1x1 ``nn.Conv2d`` (FastViT's ConvMlp,
                          last stage's)                         peft's Conv2d LoRA)
========================  ====================================  ==============================================

``qkv`` is CLIP-LoRA's placement (q, k and v; no output projection). Each projection gets its own
adapter; the scaling is ``alpha / r``, or ``alpha / sqrt(r)`` with ``rslora: true`` (rsLoRA, peft's
``use_rslora``; CLIP-LoRA's ``loralib/layers.py``).

Two open_clip modules read their projection weights directly, so an adapter on their layers
would be silently ignored; each selected one is first swapped for an equivalent module whose
projections are called (ftclip/strategies/lora_layers.py): ``nn.MultiheadAttention`` ->
:class:`SplitProjectionAttention` (peft 0.21.2's own ``MultiheadAttention`` LoRA adds the
``out_proj`` delta twice, moves the frozen base weights by rounding on every forward and swaps the
base ``nn.Parameter`` objects on every forward), and the ResNet ``AttentionPool2d`` ->
:class:`LinearAttentionPool2d`. peft then adapts plain ``Linear``/``Conv2d`` layers (an additive
``B A x`` path; base weights are never written).

:func:`merge_lora` folds the adapters into the base weights and turns the swapped modules back
into open_clip's, so the model's state dict is stock open_clip again (what export writes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import peft
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ftclip.backbone import Backbone
from ftclip.config import LORA_ENCODERS as ENCODERS
from ftclip.config import LORA_TARGETS as TARGETS
from ftclip.config import LoraConfig
from ftclip.errors import ConfigError, FtclipError
from ftclip.strategies.lora_layers import LinearAttentionPool2d, SplitProjectionAttention
from ftclip.towers import image_kind, text_module

__all__ = ["LinearAttentionPool2d", "LoraSummary", "SplitProjectionAttention", "apply_lora", "has_lora",
           "merge_lora"]

ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
QKV_PROJECTIONS = ATTN_PROJECTIONS[:3]
MLP_LAYERS = ("c_fc", "c_proj")
POOL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "c_proj")  # ResNet attention pool
TIMM_ATTN = ("qkv", "proj")
TIMM_MLP = ("fc1", "fc2")
KEY = "strategies.lora"


@dataclass
class LoraSummary:
    """What :func:`apply_lora` adapted: module names relative to ``backbone.model``, LoRA parameter count."""

    targets: list[str] = field(default_factory=list)
    num_params: int = 0


# ---------------------------------------------------------------------------------------- config checks
def _as_list(value: Any) -> Any:
    """OmegaConf ListConfig / tuple -> list; anything else unchanged."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return value
    return list(value)


def _check_choice_list(values: Any, key: str, allowed: tuple[str, ...]) -> list[str]:
    values = _as_list(values)
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{KEY}.{key} must be a non-empty list, a subset of {list(allowed)}; got {values!r}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"{KEY}.{key}: unknown value(s) {unknown}; allowed: {list(allowed)}")
    return [v for v in allowed if v in values]  # canonical order, no duplicates


def _check_hyper(cfg: LoraConfig) -> tuple[int, float, float]:
    r, alpha, dropout = cfg.r, cfg.alpha, cfg.dropout
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"{KEY}.r must be an integer >= 1 (the adapter rank, e.g. 16); got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ConfigError(f"{KEY}.alpha must be a number > 0 (scaling = alpha / r, e.g. alpha = r); got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{KEY}.dropout must be a number in [0, 1), e.g. 0.1; got {dropout!r}")
    return r, float(alpha), float(dropout)


def _select_blocks(blocks: Any, num_blocks: int, encoder: str) -> list[int]:
    """``"all"``, an int N (the last N blocks) or a list of 0-based block indices."""
    blocks = _as_list(blocks)
    allowed = f'"all", an integer N in 1..{num_blocks} (the last N blocks) or a list of indices in 0..{num_blocks - 1}'
    if blocks == "all":
        return list(range(num_blocks))
    if isinstance(blocks, int) and not isinstance(blocks, bool):
        if blocks < 1:
            raise ConfigError(f"{KEY}.blocks={blocks} selects no block; allowed: {allowed}")
        if blocks > num_blocks:
            raise ConfigError(f"{KEY}.blocks={blocks}: the {encoder} tower has only {num_blocks} blocks; "
                              f"allowed: {allowed}")
        return list(range(num_blocks - blocks, num_blocks))
    if isinstance(blocks, list):
        if not blocks:
            raise ConfigError(f"{KEY}.blocks=[] selects no block; allowed: {allowed}")
        bad = [b for b in blocks if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < num_blocks]
        if bad:
            raise ConfigError(f"{KEY}.blocks: index(es) {bad} out of range for the {encoder} tower "
                              f"({num_blocks} blocks); allowed: {allowed}")
        return sorted(set(blocks))
    raise ConfigError(f"{KEY}.blocks={blocks!r} is not understood; allowed: {allowed}")


# ---------------------------------------------------------------------------------------- towers
def _tower_blocks(backbone: Backbone, encoder: str) -> tuple[str, list[tuple[str, nn.Module]]]:
    """(kind of blocks, [(block name inside backbone.model, block)]) of a tower LoRA supports."""
    model = backbone.model
    if encoder == "image":
        visual = model.visual
        kind = image_kind(visual)
        if kind == "vit":
            return "transformer", _numbered("visual.transformer.resblocks", visual.transformer.resblocks)
        if kind == "resnet":
            return "resnet", [("visual.attnpool", visual.attnpool)]
        if kind == "timm":
            blocks = _timm_blocks(visual.trunk)
            if blocks:
                return "timm", blocks
        raise ConfigError(
            f"{KEY}.encoders: the image tower of {backbone.name} ({type(visual).__name__}"
            f"{' ' + type(visual.trunk).__name__ if kind == 'timm' else ''}) has no blocks LoRA knows; supported: "
            "open_clip ViT and ResNet towers, timm trunks with blocks (FastViT, ViT)"
        )
    text = text_module(model, backbone.name)
    prefix = "text.transformer.resblocks" if text is not model else "transformer.resblocks"
    resblocks = getattr(getattr(text, "transformer", None), "resblocks", None)
    if not isinstance(resblocks, nn.ModuleList) or not len(resblocks):
        raise ConfigError(f"{KEY}.encoders: the text tower of {backbone.name} has no open_clip transformer blocks")
    return "transformer", _numbered(prefix, resblocks)


def _numbered(prefix: str, blocks) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}.{i}", block) for i, block in enumerate(blocks)]


def _timm_blocks(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """A timm trunk's blocks in order: ``blocks`` (ViT) or every stage's ``blocks`` (FastViT, ConvNeXt, ...)."""
    if isinstance(getattr(trunk, "blocks", None), (nn.Sequential, nn.ModuleList)):
        return _numbered("visual.trunk.blocks", trunk.blocks)
    out = []
    for s, stage in enumerate(getattr(trunk, "stages", []) or []):
        blocks = getattr(stage, "blocks", None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)):
            out += _numbered(f"visual.trunk.stages.{s}.blocks", blocks)
    return out


def _timm_attention(block: nn.Module) -> str | None:
    """The attribute of a timm block's attention with Linear ``qkv``/``proj`` that its forward calls."""
    for attr in ("attn", "token_mixer"):
        attn = getattr(block, attr, None)
        if all(isinstance(getattr(attn, n, None), nn.Linear) for n in TIMM_ATTN):
            return attr
    return None


def _pointwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) == (1, 1)
                                            and layer.groups == 1)


def _block_targets(kind: str, block: nn.Module, name: str, targets: list[str], model_name: str) -> list[str]:
    names = []
    if kind == "resnet":
        if "mlp" in targets:
            raise ConfigError(f"{KEY}.targets: 'mlp': a ResNet image tower ({model_name}) has no MLP blocks; use "
                              "targets=[attn] (its attention pool), or train the ResNet fully (train: [image])")
        return [f"{name}.{p}" for p in (POOL_PROJECTIONS if "attn" in targets else POOL_PROJECTIONS[:3])]
    if kind == "timm":
        attn = _timm_attention(block)
        if attn is not None and ("attn" in targets or "qkv" in targets):
            names += [f"{name}.{attn}.{p}" for p in (TIMM_ATTN if "attn" in targets else TIMM_ATTN[:1])]
        if "mlp" in targets:
            mlp = getattr(block, "mlp", None)
            if not all(_pointwise(getattr(mlp, n, None)) for n in TIMM_MLP):
                raise ConfigError(f"{KEY}.targets: 'mlp' needs mlp.fc1 and mlp.fc2 (Linear or 1x1 Conv2d), but "
                                  f"{model_name} block {name} has {type(mlp).__name__}; use targets=[attn]")
            names += [f"{name}.mlp.{n}" for n in TIMM_MLP]
        return names
    if "attn" in targets or "qkv" in targets:
        attn = getattr(block, "attn", None)
        if isinstance(attn, nn.MultiheadAttention):
            if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
                raise ConfigError(
                    f"{KEY}.targets: 'attn' in {model_name} block {name}: this nn.MultiheadAttention (separate "
                    "kdim/vdim, bias_k/v or zero attention) is not supported; use targets=[mlp]"
                )
        elif not isinstance(attn, SplitProjectionAttention):
            raise ConfigError(
                f"{KEY}.targets: 'attn' needs nn.MultiheadAttention blocks, but {model_name} block {name} uses "
                f"{type(attn).__name__} (open_clip's custom attention, which reads its weights directly); "
                "use targets=[mlp] for this model"
            )
        projections = ATTN_PROJECTIONS if "attn" in targets else QKV_PROJECTIONS
        names += [f"{name}.attn.{p}" for p in projections]
    if "mlp" in targets:
        mlp = getattr(block, "mlp", None)
        missing = [n for n in MLP_LAYERS if not isinstance(getattr(mlp, n, None), nn.Linear)]
        if missing:
            raise ConfigError(f"{KEY}.targets: 'mlp' needs nn.Linear mlp.c_fc and mlp.c_proj, but {model_name} "
                              f"block {name} has no Linear {missing}; use targets=[attn]")
        names += [f"{name}.mlp.{n}" for n in MLP_LAYERS]
    return names


def has_lora(module: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


# ---------------------------------------------------------------------------------------- API
def apply_lora(backbone: Backbone, cfg: LoraConfig) -> LoraSummary:
    """Inject LoRA adapters into ``backbone.model`` in place, as ``cfg`` (a ``LoraConfig``) says.

    ``cfg`` is the ``strategies.lora`` node (a structured ``DictConfig`` or the dataclass itself).
    Does nothing (empty summary) when ``cfg.enabled`` is false. The new ``lora_A``/``lora_B``
    parameters are trainable and show up in ``backbone.parameter_groups()`` as ``image.lora``
    / ``text.lora``; every other parameter keeps its value and ``requires_grad``. lora_B
    starts at zero, so the model's outputs are unchanged until the adapters train.
    """
    if not cfg.enabled:
        return LoraSummary()
    encoders = _check_choice_list(cfg.encoders, "encoders", ENCODERS)
    targets = _check_choice_list(cfg.targets, "targets", TARGETS)
    r, alpha, dropout = _check_hyper(cfg)
    model = backbone.model
    if has_lora(model):
        raise FtclipError(f"{KEY}: the backbone already has LoRA adapters; apply_lora must be called once")

    # Validate everything before touching the model.
    plan: list[tuple[str, str, nn.Module]] = []  # (kind, block name, block)
    names: list[str] = []
    for encoder in encoders:
        kind, blocks = _tower_blocks(backbone, encoder)
        found = []
        for index in _select_blocks(cfg.blocks, len(blocks), encoder):
            block_name, block = blocks[index]
            found += _block_targets(kind, block, block_name, targets, backbone.name)
            plan.append((kind, block_name, block))
        if kind == "timm" and ("attn" in targets or "qkv" in targets) and not any(n.endswith(".qkv") for n in found):
            with_attn = [i for i, (_, b) in enumerate(blocks) if _timm_attention(b)]
            asked = "'attn'" if "attn" in targets else "'qkv'"
            raise ConfigError(f"{KEY}.targets: {asked}: the selected blocks of {backbone.name}'s image tower have no "
                              f"attention (blocks with attention: {with_attn or 'none'}); choose {KEY}.blocks "
                              "among them or targets=[mlp]")
        names += found

    if "attn" in targets or "qkv" in targets:
        for kind, block_name, block in plan:
            if kind == "transformer" and isinstance(block.attn, nn.MultiheadAttention):
                block.attn = SplitProjectionAttention.from_mha(block.attn)
            elif kind == "resnet" and not isinstance(block, LinearAttentionPool2d):
                _replace(model, block_name, LinearAttentionPool2d(block))

    requires_grad = {id(p): p.requires_grad for p in model.parameters()}
    config = peft.LoraConfig(
        target_modules="|".join(re.escape(n) for n in names),  # a string is re.fullmatch-ed: exact names only
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        use_rslora=bool(cfg.rslora),
        bias="none",
        init_lora_weights=True,  # A: Kaiming-uniform, B: zeros
    )
    peft.inject_adapter_in_model(config, model)
    # peft marks every non-adapter parameter frozen; restore what the caller had (stages decide).
    for param in model.parameters():
        if id(param) in requires_grad:
            param.requires_grad_(requires_grad[id(param)])

    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    for module in wrappers.values():  # peft's new lora_dropout starts in train mode: follow the wrapped layer
        module.train(module.get_base_layer().training)
    adapted = sorted(wrappers)
    if adapted != sorted(names):
        raise FtclipError(f"{KEY}: peft adapted {len(adapted)} modules, expected {len(names)}; "
                          f"unexpected: {sorted(set(adapted) ^ set(names))[:4]}")
    lora_params = [p for n, p in model.named_parameters() if "lora_" in n]
    for param in lora_params:
        param.requires_grad_(True)
    return LoraSummary(targets=names, num_params=sum(p.numel() for p in lora_params))


def merge_lora(backbone: Backbone) -> None:
    """Fold every LoRA adapter into its base weight and restore stock open_clip modules, in place.

    Afterwards ``backbone.model.state_dict()`` has exactly open_clip's keys and shapes (the
    attention blocks are ``nn.MultiheadAttention`` again, a ResNet's pool its ``AttentionPool2d``)
    and no ``image.lora``/``text.lora``
    group is left. A backbone without adapters is left as it is.
    """
    model = backbone.model
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in wrapped:
        module.merge(safe_merge=True)  # raises if the merged weight is not finite
        _replace(model, name, module.get_base_layer())
    swapped = [(n, m) for n, m in model.named_modules() if isinstance(m, (SplitProjectionAttention, LinearAttentionPool2d))]
    for name, module in swapped:
        _replace(model, name, module.to_mha() if isinstance(module, SplitProjectionAttention) else module.to_pool())
    if wrapped and "peft_config" in vars(model):  # set by inject_adapter_in_model; stale once merged
        del model.peft_config


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
