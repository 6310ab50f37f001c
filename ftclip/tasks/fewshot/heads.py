"""Zero-shot and Tip-Adapter classifiers on CLIP features (pure tensor functions).

Zero-shot (CLIP's ImageNet notebook; CoOp ``ZeroshotCLIP2``; Tip-Adapter ``clip_classifier``):
each class's prompt features over the templates are L2-normalised, averaged and normalised
again; logits are ``logit_scale * cos(image, class)``.

Tip-Adapter (Zhang et al., ECCV 2022; gaopengcuhk/Tip-Adapter ``main.py``/``utils.py``): a cache of
the few-shot training features (keys: the mean over augmented passes of the *unnormalised*
image features, then normalised; values: one-hot labels) and

    logits = 100 * f W^T + alpha * exp(-beta * (1 - f K^T)) L

with ``f`` the normalised test features, ``W`` the zero-shot weights, ``K`` the keys and ``L`` the
values. :func:`tip_adapter_search` grid-searches (beta, alpha) as the reference's ``search_hp``
does -- ``beta_i = i * (scale - 0.1) / steps + 0.1`` for ``i < steps`` (the scale itself is never
tried), alpha likewise, beta in the outer loop, the first best kept -- but on the *val* split
only (the released ``main_imagenet.py`` searches on test, and Tip-Adapter-F's released code picks
its epoch on test). Tip-Adapter-F trains the cache keys of the same logits (the module's ``cache`` group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ftclip.errors import FtclipError

__all__ = [
    "zeroshot_weights",
    "cosine_logits",
    "tip_cache",
    "tip_adapter_logits",
    "tip_search_grid",
    "TipSearch",
    "tip_adapter_search",
]


def zeroshot_weights(text_features: Tensor) -> Tensor:
    """Zero-shot classifier ``[C, D]`` from prompt features ``[T, C, D]`` (template, class, dim):
    normalise each, average over the templates, normalise again."""
    if text_features.ndim != 3:
        raise FtclipError(f"text features must be [templates, classes, dim], got {tuple(text_features.shape)}")
    return F.normalize(F.normalize(text_features, dim=-1).mean(dim=0), dim=-1)


def cosine_logits(image_features: Tensor, weights: Tensor, logit_scale: float = 100.0) -> Tensor:
    """``logit_scale * normalise(image_features) @ weights^T`` (``weights`` already normalised)."""
    return logit_scale * F.normalize(image_features, dim=-1) @ weights.T


def tip_cache(pass_features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Cache ``(keys [N, D], values [N, C])`` from the training features of every augmented pass,
    ``pass_features [P, N, D]`` (the same N images in the same order in each pass)."""
    if pass_features.ndim != 3 or pass_features.shape[1] != labels.shape[0]:
        raise FtclipError(
            f"cache features must be [passes, N, dim] with N = {labels.shape[0]} labels, "
            f"got {tuple(pass_features.shape)}"
        )
    keys = F.normalize(pass_features.mean(dim=0), dim=-1)
    values = F.one_hot(labels.long(), num_classes).to(keys.dtype)
    return keys, values


def tip_adapter_logits(
    features: Tensor,
    zs_weights: Tensor,
    keys: Tensor,
    values: Tensor,
    alpha: float,
    beta: float,
    logit_scale: float = 100.0,
) -> Tensor:
    """Tip-Adapter logits (module docstring); ``features`` are normalised here."""
    f = F.normalize(features, dim=-1)
    affinity = f @ keys.T
    return logit_scale * f @ zs_weights.T + alpha * torch.exp(-beta * (1.0 - affinity)) @ values


def tip_search_grid(scale: float, steps: int) -> list[float]:
    """The reference's search values: ``i * (scale - 0.1) / steps + 0.1`` for ``i`` in ``range(steps)``."""
    if steps < 1 or scale <= 0.1:
        raise FtclipError(f"Tip-Adapter search needs steps >= 1 and scale > 0.1, got scale={scale}, steps={steps}")
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


@dataclass(frozen=True)
class TipSearch:
    beta: float
    alpha: float
    accuracy: float  # on the split searched (val)


def tip_adapter_search(
    features: Tensor,
    labels: Tensor,
    zs_weights: Tensor,
    keys: Tensor,
    values: Tensor,
    search_scale: tuple[float, float],
    search_step: tuple[int, int],
    logit_scale: float = 100.0,
) -> TipSearch:
    """Best (beta, alpha) by top-1 accuracy on ``features``/``labels`` (pass the val split).

    ``search_scale``/``search_step`` are (beta, alpha) pairs as in the reference configs; ties
    go to the first pair in beta-major order, as the reference's strict ``>`` does (which starts
    from accuracy 0 and so returns beta = alpha = 0 if every pair scores 0; here the first pair).
    """
    betas = tip_search_grid(search_scale[0], search_step[0])
    alpha_grid = tip_search_grid(search_scale[1], search_step[1])
    alphas = torch.tensor(alpha_grid, dtype=features.dtype, device=features.device)
    f = F.normalize(features, dim=-1)
    zs = logit_scale * f @ zs_weights.T
    affinity = f @ keys.T
    labels = labels.to(features.device)
    correct = torch.empty(len(betas), len(alphas), dtype=torch.long)
    for i, beta in enumerate(betas):
        cache = torch.exp(-beta * (1.0 - affinity)) @ values  # [N, C]
        pred = (zs.unsqueeze(0) + alphas.view(-1, 1, 1) * cache.unsqueeze(0)).argmax(dim=-1)  # [A, N]
        correct[i] = (pred == labels.unsqueeze(0)).sum(dim=1).cpu()
    best = int(torch.argmax(correct.flatten()))  # the first maximum
    bi, ai = divmod(best, len(alphas))
    return TipSearch(beta=betas[bi], alpha=float(alphas[ai]), accuracy=float(correct[bi, ai]) / labels.shape[0])
