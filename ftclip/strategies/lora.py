"""LoRA adapters on the encoders of an open_clip CLIP model (peft), and merging them back.

:func:`apply_lora` injects peft LoRA adapters in place into ``backbone.model``:

* ``attn``: the q, k, v and output projections of each selected block's self-attention;
* ``qkv``: the q, k and v projections only (CLIP-LoRA's placement: no output projection);
* ``mlp``: the block's ``mlp.c_fc`` and ``mlp.c_proj`` (plain ``nn.Linear``).

Each projection gets its own adapter; the scaling is ``alpha / r``, or ``alpha / sqrt(r)`` with
``rslora: true`` (rsLoRA, peft's ``use_rslora``; CLIP-LoRA's ``loralib/layers.py``).

open_clip's blocks use ``nn.MultiheadAttention``, whose fused ``in_proj_weight`` is not a
layer with a forward and whose ``out_proj`` forward is never called. peft 0.21's own
``MultiheadAttention`` LoRA layer works around that by adding the LoRA delta to the base
weights before every forward and subtracting it afterwards. Checked on peft 0.21.2, that
(1) applies the ``out_proj`` delta twice, (2) moves the frozen base weights by rounding on
every forward (``(W + d) - d != W``) and (3) swaps the base ``nn.Parameter`` objects on every
forward and every ``named_modules()`` call (so optimizers and parameter groups hold stale
objects). So instead each selected ``nn.MultiheadAttention`` is replaced by
:class:`SplitProjectionAttention` -- the same computation with ``q_proj``/``k_proj``/
``v_proj``/``out_proj`` as real ``nn.Linear`` layers -- and peft adapts those with its plain
``Linear`` LoRA layer (an additive ``B A x`` path; base weights are never written).

:func:`merge_lora` folds the adapters into the base weights and turns every
:class:`SplitProjectionAttention` back into an ``nn.MultiheadAttention``, so the model's
state dict is stock open_clip again (what export writes).

ResNet image towers (open_clip ``ModifiedResNet``) are refused: their attention pool calls
``F.multi_head_attention_forward`` with the projection weights directly, so an adapter there
would be silently ignored. Their text tower is a normal transformer and is supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

import peft
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ftclip.backbone import Backbone
from ftclip.config import LORA_ENCODERS as ENCODERS
from ftclip.config import LORA_TARGETS as TARGETS
from ftclip.config import LoraConfig
from ftclip.errors import ConfigError, FtclipError

ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
QKV_PROJECTIONS = ATTN_PROJECTIONS[:3]
MLP_LAYERS = ("c_fc", "c_proj")
KEY = "strategies.lora"


@dataclass
class LoraSummary:
    """What :func:`apply_lora` adapted: module names relative to ``backbone.model``, LoRA parameter count."""

    targets: list[str] = field(default_factory=list)
    num_params: int = 0


class SplitProjectionAttention(nn.Module):
    """``nn.MultiheadAttention`` with q/k/v/out as ``nn.Linear`` layers whose forward is called.

    Same call signature and result as ``nn.MultiheadAttention(..., need_weights=False)``
    (up to float rounding: three GEMMs instead of one fused one), so open_clip's blocks run
    it unchanged. :meth:`from_mha` / :meth:`to_mha` convert losslessly (concatenating or
    splitting the fused ``in_proj_weight``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        batch_first: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **kw)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> "SplitProjectionAttention":
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("only nn.MultiheadAttention with kdim == vdim == embed_dim, no bias_k/v, no zero attn")
        weight = mha.in_proj_weight
        has_bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, has_bias, mha.batch_first, weight.device, weight.dtype)
        with torch.no_grad():
            for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                rows = slice(i * mha.embed_dim, (i + 1) * mha.embed_dim)
                proj.weight.copy_(weight[rows])
                proj.weight.requires_grad_(weight.requires_grad)
                if has_bias:
                    proj.bias.copy_(mha.in_proj_bias[rows])
                    proj.bias.requires_grad_(mha.in_proj_bias.requires_grad)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            new.out_proj.weight.requires_grad_(mha.out_proj.weight.requires_grad)
            if has_bias:
                new.out_proj.bias.copy_(mha.out_proj.bias)
                new.out_proj.bias.requires_grad_(mha.out_proj.bias.requires_grad)
        new.train(mha.training)
        return new

    def to_mha(self) -> nn.MultiheadAttention:
        projections = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        if any(isinstance(p, BaseTunerLayer) for p in projections):
            raise FtclipError("merge the LoRA adapters (merge_lora) before converting back to nn.MultiheadAttention")
        weight = self.q_proj.weight
        has_bias = self.q_proj.bias is not None
        mha = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, dropout=self.dropout, bias=has_bias, batch_first=self.batch_first,
            device=weight.device, dtype=weight.dtype,
        )
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
            mha.in_proj_weight.requires_grad_(weight.requires_grad)
            mha.out_proj.weight.copy_(self.out_proj.weight)
            mha.out_proj.weight.requires_grad_(self.out_proj.weight.requires_grad)
            if has_bias:
                mha.in_proj_bias.copy_(torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))
                mha.in_proj_bias.requires_grad_(self.q_proj.bias.requires_grad)
                mha.out_proj.bias.copy_(self.out_proj.bias)
                mha.out_proj.bias.requires_grad_(self.out_proj.bias.requires_grad)
        mha.train(self.training)
        return mha

    def forward(
        self,
        query: torch.Tensor,
        key: Optional[torch.Tensor] = None,
        value: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        need_weights: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise ValueError("SplitProjectionAttention (LoRA) does not return attention weights; call it with "
                             "need_weights=False as open_clip's blocks do")
        key = query if key is None else key
        value = key if value is None else value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        batch, length, _ = query.shape
        source = key.shape[1]

        def heads(x: torch.Tensor, n: int) -> torch.Tensor:
            return x.view(batch, n, self.num_heads, self.head_dim).transpose(1, 2)

        q = heads(self.q_proj(query), length)
        k = heads(self.k_proj(key), source)
        v = heads(self.v_proj(value), source)
        mask = self._additive_mask(attn_mask, key_padding_mask, batch, length, source, q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=bool(is_causal and mask is None),
        )
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None

    def _additive_mask(
        self,
        attn_mask: Optional[torch.Tensor],
        key_padding_mask: Optional[torch.Tensor],
        batch: int,
        length: int,
        source: int,
        dtype: torch.dtype,
    ) -> Optional[torch.Tensor]:
        """nn.MultiheadAttention's masks (bool True = blocked, or additive float) as one additive mask."""

        def additive(m: torch.Tensor) -> torch.Tensor:
            if m.dtype == torch.bool:
                return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
            return m.to(dtype)

        mask = None
        if attn_mask is not None:
            mask = additive(attn_mask)
            if mask.dim() == 3:  # [batch * heads, L, S]
                mask = mask.view(batch, self.num_heads, length, source)
        if key_padding_mask is not None:
            padding = additive(key_padding_mask).view(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


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
def _tower_blocks(backbone: Backbone, encoder: str) -> tuple[str, nn.ModuleList]:
    """(prefix of the tower's blocks inside backbone.model, the blocks) for a supported tower."""
    model = backbone.model
    if encoder == "image":
        visual = model.visual
        if isinstance(visual, ModifiedResNet):
            raise ConfigError(
                f"{KEY}.encoders: 'image' is not supported for {backbone.name}: its image tower is an open_clip "
                "ModifiedResNet, whose attention pool calls F.multi_head_attention_forward with the projection "
                "weights directly, so LoRA there would be silently ignored. LoRA supports ViT image towers (e.g. "
                "ViT-B-16) and transformer text towers: use encoders=[text], or train the ResNet fully (train: [image])"
            )
        resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        prefix = "visual.transformer.resblocks"
    else:
        text = getattr(model, "text", None)  # CustomTextCLIP keeps the text tower under model.text
        if text is not None:
            resblocks = getattr(getattr(text, "transformer", None), "resblocks", None)
            prefix = "text.transformer.resblocks"
        else:
            resblocks = getattr(getattr(model, "transformer", None), "resblocks", None)
            prefix = "transformer.resblocks"
    if not isinstance(resblocks, nn.ModuleList) or not len(resblocks):
        tower = type(model.visual if encoder == "image" else getattr(model, "text", model)).__name__
        raise ConfigError(
            f"{KEY}.encoders: '{encoder}' tower of {backbone.name} ({tower}) has no open_clip transformer blocks "
            f"LoRA knows; supported: open_clip VisionTransformer / TextTransformer towers"
        )
    return prefix, resblocks


def _block_targets(block: nn.Module, name: str, targets: list[str], model_name: str) -> list[str]:
    names = []
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
    plan: list[tuple[str, nn.Module]] = []  # (block name, block)
    names: list[str] = []
    for encoder in encoders:
        prefix, resblocks = _tower_blocks(backbone, encoder)
        for index in _select_blocks(cfg.blocks, len(resblocks), encoder):
            block_name = f"{prefix}.{index}"
            names += _block_targets(resblocks[index], block_name, targets, backbone.name)
            plan.append((block_name, resblocks[index]))

    if "attn" in targets or "qkv" in targets:
        for _, block in plan:
            if isinstance(block.attn, nn.MultiheadAttention):
                block.attn = SplitProjectionAttention.from_mha(block.attn)

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
    attention blocks are ``nn.MultiheadAttention`` again) and no ``image.lora``/``text.lora``
    group is left. A backbone without adapters is left as it is.
    """
    model = backbone.model
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, module in wrapped:
        module.merge(safe_merge=True)  # raises if the merged weight is not finite
        _replace(model, name, module.get_base_layer())
    split = [(n, m) for n, m in model.named_modules() if isinstance(m, SplitProjectionAttention)]
    for name, module in split:
        _replace(model, name, module.to_mha())
    if wrapped and "peft_config" in vars(model):  # set by inject_adapter_in_model; stale once merged
        del model.peft_config


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
