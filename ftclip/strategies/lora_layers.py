"""Attention modules whose projections are ``nn.Linear`` layers that are really called, for LoRA.

Two open_clip modules read their projection weights directly instead of calling the layers, so a
LoRA adapter wrapped around those layers would never run:

* ``nn.MultiheadAttention`` (every open_clip transformer block): fused ``in_proj_weight``, and
  ``out_proj``'s forward is never called. :class:`SplitProjectionAttention` is the same computation
  with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` as real layers (peft 0.21's own MHA support
  adds the out-projection update twice, moves frozen weights by rounding and swaps parameter
  objects on every forward; see ftclip/strategies/lora.py).
* ``AttentionPool2d`` (the ResNet image tower's pool) calls ``F.multi_head_attention_forward`` with
  ``q_proj.weight`` etc. :class:`LinearAttentionPool2d` computes the same output (the mean token's
  attention over the grid) through the four layers' forwards, with the same parameter names, so
  its state dict is the stock one.

Both convert back losslessly (``to_mha`` / ``to_pool``) once the adapters are merged.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import AttentionPool2d
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ftclip.errors import FtclipError


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


class LinearAttentionPool2d(nn.Module):
    """open_clip's ``AttentionPool2d`` computed through its ``q_proj``/``k_proj``/``v_proj``/``c_proj`` forwards.

    Same parameters (names and shapes) and the same output as the stock pool: the grid ``[N, C, H, W]``
    becomes ``H*W`` tokens plus their mean in front, plus the positional embedding; the mean token
    attends over all of them (multi-head, scaled dot product) and ``c_proj`` projects its output. Only
    the mean token's query is computed (the stock pool computes every token's and keeps the first).
    """

    def __init__(self, pool: AttentionPool2d):
        super().__init__()
        self.positional_embedding = pool.positional_embedding
        self.k_proj, self.q_proj, self.v_proj, self.c_proj = pool.k_proj, pool.q_proj, pool.v_proj, pool.c_proj
        self.num_heads = pool.num_heads
        self.train(pool.training)

    def to_pool(self) -> AttentionPool2d:
        projections = (self.q_proj, self.k_proj, self.v_proj, self.c_proj)
        if any(isinstance(p, BaseTunerLayer) for p in projections):
            raise FtclipError("merge the LoRA adapters (merge_lora) before converting back to AttentionPool2d")
        pool = AttentionPool2d.__new__(AttentionPool2d)
        nn.Module.__init__(pool)
        pool.positional_embedding = self.positional_embedding
        pool.k_proj, pool.q_proj, pool.v_proj, pool.c_proj = self.k_proj, self.q_proj, self.v_proj, self.c_proj
        pool.num_heads = self.num_heads
        pool.train(self.training)
        return pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, width = x.shape[0], x.shape[1]
        x = x.reshape(batch, width, -1).permute(0, 2, 1)  # [N, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        heads, dim = self.num_heads, width // self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, t.shape[1], heads, dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x[:, :1])), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)  # [N, heads, 1, dim]
        return self.c_proj(out.transpose(1, 2).reshape(batch, width))
