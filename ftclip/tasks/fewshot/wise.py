"""WiSE-FT: weight-space ensembles of the zero-shot and the fine-tuned model (pure functions on state dicts).

Wortsman et al., CVPR 2022; mlfoundations/wise-ft ``src/wise_ft.py`` ``_merge`` (without Fisher
weighting): ``theta(alpha) = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned`` for every
key, the classification head included (it starts from the zero-shot head, so both models
have one). Here floating-point tensors are interpolated and any other tensor (integer buffers
such as BatchNorm's ``num_batches_tracked``) must be equal in both and is copied -- the
reference interpolates those too, which turns them into floats.

For LoRA the fine-tuned weights are ``W0 + s B A``, so interpolating the merged weights is
scaling the adapter delta: ``(1 - alpha) W0 + alpha (W0 + s B A) = W0 + s (alpha B) A``.
:func:`scale_lora_delta` does that on the adapter tensors (every ``lora_B`` tensor times alpha),
so the zero-shot weights need not be stored twice.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ftclip.errors import FtclipError

__all__ = ["WISE_ALPHAS", "check_alpha", "wise_interpolate", "scale_lora_delta"]

#: The sweep reported by default: 0 (zero-shot) to 1 (fine-tuned) in steps of 0.1.
WISE_ALPHAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))


def check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise FtclipError(f"WiSE-FT alpha must be a number in [0, 1] (0 = zero-shot, 1 = fine-tuned), got {alpha!r}")
    return float(alpha)


def wise_interpolate(theta_0: Mapping[str, Tensor], theta_1: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) * theta_0 + alpha * theta_1`` key by key (``theta_0`` zero-shot, ``theta_1`` fine-tuned)."""
    alpha = check_alpha(alpha)
    if set(theta_0) != set(theta_1):
        only0, only1 = sorted(set(theta_0) - set(theta_1)), sorted(set(theta_1) - set(theta_0))
        raise FtclipError(
            f"WiSE-FT needs two state dicts with the same keys; only in the zero-shot one: {only0[:3]}, "
            f"only in the fine-tuned one: {only1[:3]}"
        )
    out: dict[str, Tensor] = {}
    for key, a in theta_0.items():
        b = theta_1[key]
        if a.shape != b.shape:
            raise FtclipError(f"WiSE-FT: {key} has shape {tuple(a.shape)} and {tuple(b.shape)} in the two models")
        if a.is_floating_point() and b.is_floating_point():
            out[key] = (1.0 - alpha) * a + alpha * b.to(a.dtype)
        elif torch.equal(a, b):
            out[key] = a.clone()
        else:
            raise FtclipError(
                f"WiSE-FT: non-float tensor {key} differs between the two models and cannot be interpolated"
            )
    return out


def scale_lora_delta(lora_state: Mapping[str, Tensor], alpha: float, marker: str = "lora_B") -> dict[str, Tensor]:
    """The adapter tensors with every tensor whose key contains ``marker`` multiplied by ``alpha``."""
    alpha = check_alpha(alpha)
    scaled = {k: (v * alpha if marker in k else v.clone()) for k, v in lora_state.items()}
    if not any(marker in k for k in lora_state):
        raise FtclipError(f"no '{marker}' tensor among the {len(lora_state)} adapter tensors: is LoRA enabled?")
    return scaled
