"""The learning-rate schedules of the few-shot references, as closed forms of the step index.

* :func:`dassl_cosine_lr` -- CoOp (Dassl ``build_lr_scheduler`` with ``LR_SCHEDULER: cosine``,
  ``WARMUP_TYPE: constant``, ``WARMUP_RECOUNT: True``), stepped once per *epoch*: the warm-up
  epochs run at the constant ``warmup_lr``, then the cosine starts from the full lr and counts
  its own epochs with ``T_max = max_epoch``, so it ends short of 0 --
  ``lr(e) = base * (1 + cos(pi * (e - W) / max_epoch)) / 2`` for ``e >= W``.
* :func:`cosine_annealing_lr` -- torch ``CosineAnnealingLR`` stepped once per *iteration*:
  CLIP-LoRA (``T_max = 500 * shots``, ``eta_min = 1e-6``) and Tip-Adapter-F
  (``T_max = epochs * batches per epoch``, ``eta_min = 0``); no warm-up.
* :func:`flyp_lr` -- FLYP / WiSE-FT ``cosine_lr`` per iteration: linear warm-up
  ``base * (step + 1) / warmup`` then ``base * (1 + cos(pi * e / (total - warmup))) / 2 + min_lr``.

:func:`lr_factor` turns any of them into the multiplier a ``torch.optim.lr_scheduler.LambdaLR``
wants (it multiplies the optimizer's initial lr).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ftclip.errors import ConfigError

__all__ = ["dassl_cosine_lr", "cosine_annealing_lr", "flyp_lr", "lr_factor"]


def dassl_cosine_lr(
    epoch: int, base_lr: float, max_epoch: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5
) -> float:
    """CoOp's lr for a 0-based ``epoch`` (module docstring)."""
    if max_epoch < 1:
        raise ConfigError(f"the cosine schedule needs max_epoch >= 1, got {max_epoch}")
    if epoch < warmup_epochs:
        return warmup_lr
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / max_epoch))


def cosine_annealing_lr(step: int, base_lr: float, total_steps: int, eta_min: float = 0.0) -> float:
    """torch ``CosineAnnealingLR``'s lr at a 0-based ``step`` (the reference steps it every iteration)."""
    if total_steps < 1:
        raise ConfigError(f"the cosine schedule needs total_steps >= 1, got {total_steps}")
    return eta_min + 0.5 * (base_lr - eta_min) * (1.0 + math.cos(math.pi * step / total_steps))


def flyp_lr(step: int, base_lr: float, total_steps: int, warmup_steps: int = 500, min_lr: float = 0.0) -> float:
    """FLYP's lr at a 0-based iteration ``step`` (module docstring)."""
    if total_steps <= warmup_steps:
        raise ConfigError(f"FLYP's schedule needs more steps ({total_steps}) than warm-up steps ({warmup_steps})")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    e, es = step - warmup_steps, total_steps - warmup_steps
    return 0.5 * (1.0 + math.cos(math.pi * e / es)) * base_lr + min_lr


def lr_factor(schedule: Callable[..., float], base_lr: float, **kwargs) -> Callable[[int], float]:
    """``lambda step: schedule(step, base_lr, **kwargs) / base_lr`` for ``LambdaLR``."""
    if base_lr <= 0:
        raise ConfigError(f"the base learning rate must be > 0, got {base_lr}")
    return lambda step: schedule(step, base_lr, **kwargs) / base_lr
