"""Argument checks shared by the loss functions of every task."""

from __future__ import annotations

import torch

from ftclip.errors import ConfigError


def check_margin(name: str, value: float) -> None:
    """A margin from a recipe must be a number >= 0 (NaN is refused too)."""
    if not value >= 0.0:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")


def check_label_smoothing(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {value!r}")


def require_dim(name: str, tensor: torch.Tensor, dim: int) -> None:
    """A tensor argument has ``dim`` dimensions (a programming error otherwise)."""
    if tensor.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-D tensor, got shape {tuple(tensor.shape)}")
