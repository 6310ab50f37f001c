"""Stage plumbing: which parameters train, with which optimizer and schedule.

A stage names parameter groups (``train: [image, head]``); :func:`freeze_for_stage` sets
``requires_grad`` so that exactly those train and everything else is frozen (and put in
eval mode where it has BatchNorm/Dropout state, so frozen really means frozen).

Schedules are per-epoch factors on each parameter group's base lr, evaluated at the 1-based
epoch number ``t = epoch + 1`` as the CLIP-ReID reference steps them (stage 1:
``scheduler.step(epoch)`` with ``epoch = 1..E`` before each epoch; stage 2: the warm-up
multistep scheduler's constructor steps it to 0, then ``step()`` at each epoch start):

* ``cosine`` (stage 1): ``warmup_lr + t * (lr - warmup_lr) / warmup_epochs`` while
  ``t < warmup_epochs``, then ``min_lr + (lr - min_lr) * (1 + cos(pi * t / epochs)) / 2``, and
  ``min_lr`` from ``t = epochs`` on (timm's CosineLRScheduler, ``t_initial=epochs``,
  ``warmup_prefix=False``, ``cycle_limit=1``). So the first epoch already runs at the first
  warm-up step above ``warmup_lr`` (7.8e-5 with the reference's 1e-5 -> 3.5e-4 over 5 epochs),
  ``warmup_lr`` itself is never used, and the last epoch runs at ``min_lr``;
* ``warmup_multistep`` (stage 2): factor ``warmup_factor * (1 - a) + a`` with
  ``a = t / warmup_epochs`` while ``t < warmup_epochs``, times ``gamma ** (number of milestones
  <= t)``: with milestones 30/50 of 60, epochs 1-29 run at the full rate (after warm-up),
  30-49 at x0.1, 50-60 at x0.01 (1-based);
* ``constant``;
* ``dassl_cosine`` (CoOp; Dassl ``build_lr_scheduler`` with a constant warm-up and
  ``WARMUP_RECOUNT``): ``warmup_lr`` while ``t < warmup_epochs``, then the cosine restarts its
  count, ``min_lr + (lr - min_lr) * (1 + cos(pi * (t - warmup_epochs) / epochs)) / 2``;
* ``warmup_cosine`` (FLYP / WiSE-FT ``cosine_lr``): ``lr * (t + 1) / warmup_epochs`` while
  ``t < warmup_epochs``, then ``lr * (1 + cos(pi * (t - W) / (T - W))) / 2 + min_lr``.

The two written for torch-style references (``dassl_cosine``, ``warmup_cosine``) count from
``t = 0``: their recipes set ``first_epoch: 0``. With ``schedule.interval: step`` a factor counts
optimizer steps instead of epochs (``epochs`` is then the stage's total number of steps and
``warmup_epochs`` a number of steps): ``cosine`` without warm-up and ``first_epoch: 0`` is torch's
``CosineAnnealingLR`` stepped per iteration (CLIP-LoRA, Tip-Adapter-F).

``first_epoch: 0`` evaluates the same formulas at ``t = epoch`` instead (0-based): torch's own
schedulers stepped at each epoch end, as pyiqa steps its ``CosineAnnealingLR`` (epoch 1 at the
full lr, then ``min_lr + (lr - min_lr) (1 + cos(pi t / epochs)) / 2``).
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


def is_bias(name: str) -> bool:
    """Whether a parameter gets ``bias_lr_factor``: ``"bias" in name`` (CLIP-ReID's
    ``make_optimizer_2stage``), so ``attn.in_proj_bias`` counts as well as ``*.bias``."""
    return "bias" in name


#: the param-group key saying whether a group holds biases (its lr is ``lr * bias_lr_factor``)
GROUP_ROLE = "ftclip_role"


def build_optimizer(named_params: list[tuple[str, nn.Parameter]], cfg) -> torch.optim.Optimizer:
    """Adam/AdamW/SGD over the trainable params; biases get ``lr * bias_lr_factor``.

    A bias is every parameter whose name contains ``bias`` (:func:`is_bias`), as the CLIP-ReID
    reference matches them: that includes the attentions' fused ``in_proj_bias``.
    """
    if not named_params:
        raise ConfigError("the stage has no trainable parameters")
    base, bias = [], []
    for name, param in named_params:
        (bias if is_bias(name) else base).append(param)
    groups = [{"params": base, "lr": cfg.lr, GROUP_ROLE: "base"}]
    if bias:
        groups.append({"params": bias, "lr": cfg.lr * cfg.bias_lr_factor, GROUP_ROLE: "bias"})
    groups = [g for g in groups if g["params"]]
    on_cuda = named_params[0][1].is_cuda
    fused = on_cuda if cfg.fused is None else bool(cfg.fused)
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name '{cfg.name}' is not one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.name](groups, cfg, fused)


#: Optimizer name -> builder(param groups, OptimizerConfig, fused) (the one table of names).
OPTIMIZERS = {
    "adam": lambda groups, cfg, fused: torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                        eps=cfg.eps, fused=fused or None),
    "adamw": lambda groups, cfg, fused: torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                          eps=cfg.eps, fused=fused or None),
    "sgd": lambda groups, cfg, fused: torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                      momentum=cfg.momentum),
}


def _constant(cfg, base_lr: float, epochs: int, t: int) -> float:
    return 1.0


def _cosine(cfg, base_lr: float, epochs: int, t: int) -> float:
    if t < cfg.warmup_epochs:
        lr = cfg.warmup_lr + t * (base_lr - cfg.warmup_lr) / cfg.warmup_epochs
    elif t >= epochs:
        lr = cfg.min_lr
    else:
        lr = cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * t / epochs))
    return lr / base_lr


def _warmup_multistep(cfg, base_lr: float, epochs: int, t: int) -> float:
    warm = 1.0
    if t < cfg.warmup_epochs:
        alpha = t / cfg.warmup_epochs
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    return warm * cfg.gamma ** bisect.bisect_right(list(cfg.milestones), t)


def _dassl_cosine(cfg, base_lr: float, epochs: int, t: int) -> float:
    if t < cfg.warmup_epochs:
        return cfg.warmup_lr / base_lr
    done = t - cfg.warmup_epochs
    return (cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * done / epochs))) / base_lr


def _warmup_cosine(cfg, base_lr: float, epochs: int, t: int) -> float:
    warm = int(cfg.warmup_epochs)
    if epochs <= warm:
        raise ConfigError(f"schedule warmup_cosine needs more steps/epochs ({epochs}) than warm-up ({warm}): "
                          "shorten schedule.warmup_epochs or train longer")
    if t < warm:
        return (t + 1) / warm
    lr = 0.5 * (1 + math.cos(math.pi * (t - warm) / (epochs - warm))) * base_lr + cfg.min_lr
    return lr / base_lr


#: Schedule name -> factor(ScheduleConfig, base lr, epochs, t) at the epoch (or step) number t (the one table of names).
SCHEDULES = {"constant": _constant, "cosine": _cosine, "warmup_multistep": _warmup_multistep,
             "dassl_cosine": _dassl_cosine, "warmup_cosine": _warmup_cosine}
SCHEDULE_INTERVALS = ("epoch", "step")


def lr_factor(cfg, base_lr: float, epochs: int, epoch: int) -> float:
    """The schedule's multiplier on ``base_lr`` for the 0-based training ``epoch``.

    Evaluated at the epoch number ``t = epoch + first_epoch``: 1-based by default, as the CLIP-ReID
    reference steps its schedulers; ``first_epoch: 0`` as torch's schedulers stepped after each
    epoch (pyiqa's ``CosineAnnealingLR``) -- see the module docstring.
    """
    if cfg.name not in SCHEDULES:
        raise ConfigError(f"schedule.name '{cfg.name}' is not one of {', '.join(SCHEDULES)}")
    return SCHEDULES[cfg.name](cfg, base_lr, epochs, epoch + int(cfg.first_epoch))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, epochs: int):
    """A per-epoch ``LambdaLR``, one factor per parameter group on that group's own base lr
    (so a cosine warm-up starts every group at ``warmup_lr`` and ends it at ``min_lr``, as the
    reference does per group). Lightning steps it at each epoch end: epoch ``e`` runs at
    ``lr_factor(.., e)``."""
    lambdas = [lambda epoch, base=float(group["lr"]): lr_factor(cfg, base, epochs, epoch)
               for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def group_base_lr(group: dict, index: int, cfg) -> float:
    """The base lr of an optimizer param group built by :func:`build_optimizer` (before any schedule)."""
    role = group.get(GROUP_ROLE, "bias" if index == 1 else "base")  # checkpoints without the key: [base, bias]
    return cfg.lr * cfg.bias_lr_factor if role == "bias" else cfg.lr


def retune(optimizer: torch.optim.Optimizer, scheduler, opt_cfg) -> list[str]:
    """Put a stage's optimizer settings back onto a *restored* optimizer and LambdaLR scheduler.

    ``configure_optimizers`` builds both from the config; Lightning then restores the checkpoint's
    param-group hyper-parameters (``lr``, ``initial_lr``, ``weight_decay``, ...) and the scheduler's
    ``base_lrs`` over them, so a changed lr would be ignored. The schedule's factors stay the ones
    just built from the config (LambdaLR saves no plain function, so they are never restored);
    this sets the base lrs and hyper-parameters from the config again and each group's lr to
    ``base_lr * factor(last_epoch)`` -- the expression LambdaLR itself evaluates -- at the
    scheduler's position. With an unchanged config every value is bit-identical to the restored
    one. The optimizer's moment estimates (its ``state``) are kept. Returns one ``key old -> new``
    entry per changed value.
    """
    if opt_cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name '{opt_cfg.name}' is not one of {', '.join(OPTIMIZERS)}")
    changes: list[str] = []

    def put(group: dict, key: str, value, label: str) -> None:
        old = group.get(key)
        if old is not None and old != value:
            changes.append(f"{label} {old:g} -> {value:g}")
        group[key] = value

    groups = optimizer.param_groups
    bases = [group_base_lr(group, index, opt_cfg) for index, group in enumerate(groups)]
    for index, (group, base, factor) in enumerate(zip(groups, bases, scheduler.lr_lambdas)):
        name = f"group {index} " if len(groups) > 1 else ""
        put(group, "initial_lr", base, f"{name}base lr")
        put(group, "lr", base * factor(scheduler.last_epoch), f"{name}lr at epoch {scheduler.last_epoch}")
        for key in ("weight_decay", "momentum", "eps"):
            if key in group:
                put(group, key, getattr(opt_cfg, key), f"{name}{key}")
    scheduler.base_lrs = bases
    scheduler._last_lr = [group["lr"] for group in groups]
    return changes
def schedule_warnings(stages) -> list[str]:
    """Warm-ups as long as their stage (printed as warnings before training): with ``warmup_epochs >=
    epochs`` the stage ends inside its warm-up (the peak lr is never reached) or leaves it only for
    its last epoch (epoch numbers ``t = epoch + first_epoch``, as :func:`lr_factor`)."""
    warnings = []
    for name, stage in stages.items():
        schedule, epochs, lr = stage.schedule, int(stage.epochs), float(stage.optimizer.lr)
        warmup = int(schedule.warmup_epochs)
        if schedule.name == "constant" or warmup <= 0 or warmup < epochs:
            continue
        what = f"stages.{name}.schedule.warmup_epochs={warmup} >= stages.{name}.epochs={epochs}"
        if epochs - 1 + int(schedule.first_epoch) < warmup:
            warnings.append(f"{what}: the stage ends during its warm-up, so the peak lr {lr:g} is never reached")
        else:
            last = lr * lr_factor(schedule, lr, epochs, epochs - 1)
            warnings.append(f"{what}: the warm-up fills the stage; only its last epoch runs after it (at lr {last:g})")
    return warnings
