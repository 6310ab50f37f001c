"""Antonym prompt pairs: the CLIP-IQA / QualiCLIP quality score.

A quality model is a set of prompt pairs (default ``("Good photo.", "Bad photo.")``). For an
image feature ``x`` and each pair ``p``::

    q_p   = softmax(s * cos(x, t+_p), s * cos(x, t-_p))[0]     (probability of the positive prompt)
    score = mean_p q_p                                          in [0, 1], higher is better

with a fixed logit scale ``s = 100`` (CLIP-IQA, and QualiCLIP's own released code; pyiqa's port
of QualiCLIP uses 50) or, with ``logit_scale: null``, the model's own ``exp(logit_scale)`` (100
for OpenAI's CLIP, 14.3 for a random-init open_clip model). Zero-shot CLIP-IQA is exactly this
with nothing trained. :meth:`AntonymPrompts.logit` is the score's log-odds (float64, never
saturated), which rank metrics use.

Two ways to get the prompt text features:

* ``context_tokens = 0`` (default): the plain prompts through the frozen text tower. The
  features are computed once into a non-persistent buffer: they are rebuilt from the backbone
  (after loading weights, at every fit / validation start) and never trusted from a checkpoint.
  If a stage trains the text tower (``text`` / ``text.lora``), they are computed live instead.
* ``context_tokens = N > 0``: CLIP-IQA+ / CoOp -- N learnable context vectors around every prompt
  (:class:`~ftclip.strategies.prompts.SharedPrompts`, parameter group ``prompts``). Defaults as
  pyiqa's CLIP-IQA+: one context per prompt, split N/2 before and N/2 after the prompt's tokens,
  started from the "X" token's embedding (``context_per_prompt``, ``context_layout``,
  ``context_init``; CoOp's one shared context in front, N(0, 0.02): ``false``, ``front``,
  ``normal``). Features are computed live (they depend on the learned context).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ftclip.backbone import Backbone
from ftclip.errors import ConfigError
from ftclip.strategies.prompts import SharedPrompts
from ftclip.tasks.iqa.losses import quality_logit, quality_score

DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("Good photo.", "Bad photo."),)

#: The 7 pairs of QualiCLIP's released inference model (see docs/methods/qualiclip.md).
QUALICLIP_PAIRS: tuple[tuple[str, str], ...] = (
    ("Good photo.", "Bad photo."),
    ("Sharp image.", "Blurry image."),
    ("Sharp edges.", "Blurry edges."),
    ("High-resolution image.", "Low-resolution image."),
    ("Noise-free image.", "Noisy image."),
    ("High-quality image.", "Low-quality image."),
    ("Good picture.", "Bad picture."),
)


def check_pairs(pairs) -> list[tuple[str, str]]:
    """``[[positive, negative], ...]`` -> list of string pairs; ConfigError naming the bad entry."""
    out: list[tuple[str, str]] = []
    if pairs is None or len(pairs) == 0:
        raise ConfigError("strategies.antonym.pairs is empty: give at least one [positive, negative] prompt pair, "
                          "e.g. [[\"Good photo.\", \"Bad photo.\"]]")
    for i, pair in enumerate(pairs):
        items = list(pair) if not isinstance(pair, str) else [pair]
        if len(items) != 2 or not all(isinstance(t, str) and t.strip() for t in items):
            raise ConfigError(
                f"strategies.antonym.pairs[{i}] = {items!r} is not a [positive, negative] pair of non-empty prompts"
            )
        out.append((items[0].strip(), items[1].strip()))
    return out


class AntonymPrompts(nn.Module):
    """Prompt pairs -> positive / negative text features -> quality score."""

    def __init__(self, backbone: Backbone, pairs: Sequence[Sequence[str]] = DEFAULT_PAIRS,
                 logit_scale: float | None = 100.0, context_tokens: int = 0, init_std: float = 0.02, *,
                 context_per_prompt: bool = True, context_layout: str = "middle", context_init: str = "token"):
        super().__init__()
        self.pairs = check_pairs(pairs)
        if logit_scale is not None and not float(logit_scale) > 0:
            raise ConfigError(f"strategies.antonym.logit_scale must be > 0 (or null for the model's own), "
                              f"got {logit_scale}")
        if context_tokens < 0:
            raise ConfigError(f"strategies.antonym.context_tokens must be >= 0, got {context_tokens}")
        self.fixed_logit_scale = None if logit_scale is None else float(logit_scale)
        self.texts = [p for p, _ in self.pairs] + [n for _, n in self.pairs]
        self.context = None
        if context_tokens:
            self.context = SharedPrompts(backbone, self.texts, context_tokens, init_std, per_prompt=context_per_prompt,
                                         layout=context_layout, init=context_init)
        # frozen features: rebuilt from the backbone, never loaded from a checkpoint
        self.register_buffer("positive", torch.empty(0), persistent=False)
        self.register_buffer("negative", torch.empty(0), persistent=False)
        self._backbone = [backbone]  # not a submodule: the owner registers it
        self.refresh()

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    @property
    def learned(self) -> bool:
        return self.context is not None

    def _text_trains(self) -> bool:
        backbone = self._backbone[0]
        groups = backbone.parameter_groups()
        return any(p.requires_grad for g in ("text", "text.lora") for _, p in groups.get(g, []))

    def _compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = self._backbone[0]
        if self.context is not None:
            feats = self.context.text_features(backbone)
        else:
            feats = backbone.encode_text(backbone.tokenize(self.texts))
        feats = feats.float()
        return feats[: self.num_pairs], feats[self.num_pairs:]

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the cached (frozen) features from the backbone's current weights."""
        pos, neg = self._compute()
        self.positive, self.negative = pos.detach(), neg.detach()

    def text_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positive [P, D], negative [P, D])``: live (with grad) when anything text-side trains."""
        if self.learned or (torch.is_grad_enabled() and self._text_trains()):
            return self._compute()
        if self.positive.numel() == 0 or self.positive.device != self._backbone[0].text.token_embedding.weight.device:
            self.refresh()
        return self.positive, self.negative

    def logit_scale(self) -> float:
        if self.fixed_logit_scale is not None:
            return self.fixed_logit_scale
        return float(self._backbone[0].model.logit_scale.exp().item())

    def similarities(self, image_feats: torch.Tensor, pos: torch.Tensor | None = None,
                     neg: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine similarities ``[..., P]`` of image features ``[..., D]`` to the positive / negative prompts."""
        if pos is None or neg is None:
            pos, neg = self.text_features()
        x = F.normalize(image_feats.float(), dim=-1)
        return x @ F.normalize(pos, dim=-1).t(), x @ F.normalize(neg, dim=-1).t()

    def score(self, image_feats: torch.Tensor, pos: torch.Tensor | None = None,
              neg: torch.Tensor | None = None) -> torch.Tensor:
        """Quality score ``[B]`` in [0, 1] (mean over pairs of the positive prompt's softmax probability), float64."""
        if pos is None or neg is None:
            pos, neg = self.text_features()
        return quality_score(image_feats.float(), pos, neg, logit_scale=self.logit_scale())

    def logit(self, image_feats: torch.Tensor) -> torch.Tensor:
        """The score's log-odds ``[B]`` (float64; :func:`~ftclip.tasks.iqa.losses.quality_logit`)."""
        pos, neg = self.text_features()
        return quality_logit(image_feats.float(), pos, neg, logit_scale=self.logit_scale())

    @torch.no_grad()
    def export_features(self) -> dict[str, torch.Tensor]:
        """What an export stores (``text_features.safetensors``): ``positive``, ``negative``, ``logit_scale``."""
        pos, neg = self._compute()
        return {"positive": pos.detach().float().cpu().contiguous(), "negative": neg.detach().float().cpu().contiguous(),
                "logit_scale": torch.tensor(self.logit_scale(), dtype=torch.float32)}
