"""Stage plumbing: which parameters train, with which optimizer and schedule.

A stage names parameter groups (``train: [image, head]``); :func:`freeze_for_stage` sets
``requires_grad`` so that exactly those train and everything else is frozen (and put in
eval mode where it has BatchNorm/Dropout state, so frozen really means frozen).

Schedules are per-epoch factors on the base lr, as in the CLIP-ReID reference:

* ``cosine`` (stage 1): linear warm-up from ``warmup_lr`` over ``warmup_epochs``, then
  ``min_lr + (lr - min_lr) * (1 + cos(pi * epoch / epochs)) / 2`` (timm's CosineLRScheduler
  with ``warmup_prefix=False``, ``t_initial=epochs``);
* ``warmup_multistep`` (stage 2): factor ``warmup_factor * (1 - a) + a`` with
  ``a = epoch / warmup_epochs`` during warm-up, then ``gamma ** (number of milestones <= epoch)``;
* ``constant``.
"""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from ftclip.errors import ConfigError

ParamGroups = dict[str, list[tuple[str, nn.Parameter]]]


def check_groups(groups: ParamGroups, train: list[str], stage: str) -> None:
    """Every group a stage trains exists in this model and has parameters."""
    unknown = [g for g in train if g not in groups]
    if unknown:
        raise ConfigError(
            f"stages.{stage}.train names unknown parameter group(s) {unknown}; this model has: "
            f"{', '.join(sorted(k for k, v in groups.items() if v))}"
            + (" (image.lora / text.lora exist only with strategies.lora.enabled=true)" if any("lora" in g for g in unknown) else "")
        )
    empty = [g for g in train if not groups[g]]
    if empty:
        raise ConfigError(f"stages.{stage}.train: group(s) {empty} have no parameters in this model")


def check_stage_losses(stages, settings: dict[str, tuple[str, ...]], weighted: dict[str, tuple[str, ...]],
                       defaults: tuple[str, ...] = ()) -> None:
    """``stages.<name>.losses`` names only settings its stage kind reads (``settings[kind]``), and
    gives a positive weight to at least one of ``weighted[kind]`` -- unless the stage sets none of
    them and its kind is in ``defaults`` (the task then uses its default weights)."""
    for name, stage in stages.items():
        kind = str(stage.kind)
        if kind not in settings:
            continue
        allowed = settings[kind]
        losses = dict(stage.losses or {})
        unknown = [k for k in losses if k not in allowed]
        if unknown:
            raise ConfigError(
                f"stages.{name}.losses.{unknown[0]} is not a setting of a '{kind}' stage; "
                + (f"it takes: {', '.join(allowed)}" if allowed else "it takes no loss settings")
            )
        terms = weighted.get(kind, ())
        if not terms or (kind in defaults and not any(k in losses for k in terms)):
            continue
        if not any(float(losses.get(k, 0.0)) > 0 for k in terms):
            raise ConfigError(
                f"stages.{name}.losses gives no positive weight to any of {', '.join(terms)}: "
                f"the stage would train nothing, e.g. stages.{name}.losses.{terms[0]}=1.0"
            )


def freeze_for_stage(groups: ParamGroups, train: list[str], stage: str) -> list[tuple[str, nn.Parameter]]:
    """Freeze every parameter, unfreeze the named groups; return the trainable (name, param) list.

    (Modules left without a trainable parameter are put in eval mode by ``StagedModule.train``.)
    """
    check_groups(groups, train, stage)
    for params in groups.values():
        for _, param in params:
            param.requires_grad_(False)
    trainable = []
    for group in train:
        for name, param in groups[group]:
            if getattr(param, _ALWAYS_FROZEN, False):
                continue
            param.requires_grad_(True)
            trainable.append((name, param))
    return trainable


_ALWAYS_FROZEN = "_ftclip_always_frozen"


def keep_frozen(param: nn.Parameter) -> nn.Parameter:
    """Mark ``param`` as never trained, whichever stage trains its group (e.g. CLIP-ReID's BNNeck bias)."""
    param.requires_grad_(False)
    setattr(param, _ALWAYS_FROZEN, True)
    return param


def count_parameters(groups: ParamGroups) -> tuple[int, int]:
    seen: set[int] = set()
    total = trainable = 0
    for params in groups.values():
        for _, p in params:
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def describe_trainable(groups: ParamGroups, stage: str) -> str:
    trainable, total = count_parameters(groups)
    share = 100.0 * trainable / max(total, 1)
    return f"stage '{stage}': training {_human(trainable)} / {_human(total)} parameters ({share:.2f}%)"


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def build_optimizer(named_params: list[tuple[str, nn.Parameter]], cfg) -> torch.optim.Optimizer:
    """Adam/AdamW/SGD over the trainable params; biases get ``lr * bias_lr_factor``."""
    if not named_params:
        raise ConfigError("the stage has no trainable parameters")
    base, bias = [], []
    for name, param in named_params:
        (bias if name.endswith(".bias") else base).append(param)
    groups = [{"params": base, "lr": cfg.lr}]
    if bias:
        groups.append({"params": bias, "lr": cfg.lr * cfg.bias_lr_factor})
    groups = [g for g in groups if g["params"]]
    on_cuda = named_params[0][1].is_cuda
    fused = on_cuda if cfg.fused is None else bool(cfg.fused)
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name '{cfg.name}' is not one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.name](groups, cfg, fused)


#: Optimizer name -> builder(param groups, OptimizerConfig, fused) (the one table of names).
OPTIMIZERS = {
    "adam": lambda groups, cfg, fused: torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                        fused=fused or None),
    "adamw": lambda groups, cfg, fused: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                          fused=fused or None),
    "sgd": lambda groups, cfg, fused: torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                      momentum=cfg.momentum),
}


def _constant(cfg, base_lr: float, epochs: int, epoch: int) -> float:
    return 1.0


def _cosine(cfg, base_lr: float, epochs: int, epoch: int) -> float:
    if epoch < cfg.warmup_epochs:
        lr = cfg.warmup_lr + epoch * (base_lr - cfg.warmup_lr) / cfg.warmup_epochs
    else:
        lr = cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * epoch / epochs))
    return lr / base_lr


def _warmup_multistep(cfg, base_lr: float, epochs: int, epoch: int) -> float:
    warm = 1.0
    if epoch < cfg.warmup_epochs:
        alpha = epoch / cfg.warmup_epochs
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    return warm * cfg.gamma ** bisect.bisect_right(list(cfg.milestones), epoch)


#: Schedule name -> factor(ScheduleConfig, base lr, epochs, epoch) (the one table of names).
SCHEDULES = {"constant": _constant, "cosine": _cosine, "warmup_multistep": _warmup_multistep}


def lr_factor(cfg, base_lr: float, epochs: int, epoch: int) -> float:
    """The schedule's multiplier on ``base_lr`` for a (0-based) epoch."""
    if cfg.name not in SCHEDULES:
        raise ConfigError(f"schedule.name '{cfg.name}' is not one of {', '.join(SCHEDULES)}")
    return SCHEDULES[cfg.name](cfg, base_lr, epochs, epoch)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, base_lr: float, epochs: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(cfg, base_lr, epochs, epoch))
