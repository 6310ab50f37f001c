"""The one training path: config -> data -> module -> stages -> metrics -> run directory.

Training, and the evaluation it runs before and after each stage (:func:`evaluate`, which
``ftclip eval`` calls too, so its numbers are those of ``metrics.json``). Loading a run for export
or inference is :mod:`ftclip.runs`' job, and exporting after training is the ``fit`` command's
(``run.export``).

For each stage of the recipe, in order: freeze everything, unfreeze the groups it names,
build a fresh Lightning ``Trainer`` (a finished Trainer does nothing on a second ``fit``),
fit (resuming from the stage's ``last.ckpt`` if there is one), evaluate, record metrics,
mark the stage completed. A resumed run skips completed stages and starts the next one
from the previous stage's final weights.

Faults (docs/resilience.md): a signal ends the stage after the current step with that step's
checkpoint (:mod:`ftclip.interrupts`) and raises ``Interrupted``; non-finite weights are never
written (``StagedModule.check_before_save``); a full disk is one ``DiskFullError`` saying which
checkpoint resumes the run and how much room the next one needs. ``state.json`` records each
stage's status (running, interrupted, failed, finished) as it goes.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import numpy as np
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint

from ftclip.backbone import check_model_config
from ftclip.errors import ConfigError, DiskFullError, DivergedError, FtclipError, Interrupted
from ftclip.interrupts import StopAtStepEnd, handle_signals, set_children
from ftclip.io import AtomicCheckpointIO, disk_full_cause, free_bytes, human_bytes
from ftclip.logs import (HISTORY_FILE, StageHistory, build_loggers, check_loggers, format_seconds, is_metric_key,
                         is_number, read_history)
from ftclip.plots import plot_losses, plot_lr, plot_run_metrics
from ftclip.runs import RunDir, load_weights, verify_checkpoint
from ftclip.stages import check_groups, count_parameters, retune, schedule_warnings
from ftclip.tasks import get_task

log = logging.getLogger("ftclip")


def _precision(cfg) -> str:
    if cfg.trainer.precision:
        return str(cfg.trainer.precision)
    wants_cuda = cfg.trainer.accelerator in ("auto", "gpu", "cuda")
    if wants_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def set_cpu_threads(cfg) -> int | None:
    """Training on the CPU: intra-op threads = free cores - DataLoader workers (at least 1).

    More intra-op threads than free cores make every small op wait at OpenMP barriers for a
    descheduled thread: with 2 threads and 2 loader workers on 2 cores the demo's stage 2 ran
    6-10x slower than with 1 thread (benchmarks/RESULTS.md). ``OMP_NUM_THREADS``, if set, wins.
    Always set (never inherited from earlier work in the process): float reductions depend on
    the thread count, so a resumed or repeated run is bit-identical only with the same count.
    Returns the thread count set, or None where nothing was changed (CUDA, or the variable set).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    if cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = int(getattr(getattr(cfg, "data", None), "num_workers", 0) or 0)
    threads = max(1, cores - workers)
    torch.set_num_threads(threads)
    return threads


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # a resume
    warnings.filterwarnings("ignore", message=".*recommended to use `self.log.*sync_dist=True.*")  # gathered by index
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen towers, on purpose
    warnings.filterwarnings("ignore", message=".*returned `None`, this fit will run with no optimizer.*")  # closed form


class StepSeed(Callback):
    """Re-seed torch/numpy/python RNGs before every training step from (seed, stage, step, rank).

    The random numbers a step draws (dropout, LoRA dropout, anything in a loss) then depend
    only on the step, not on the history of the process, so a run resumed from a mid-epoch
    checkpoint draws exactly what the uninterrupted run drew. (Data order and augmentation
    are seeded per (seed, epoch) and per sample by ftclip's samplers.)
    """

    def __init__(self, seed: int, stage_index: int):
        self.seed, self.stage_index = seed, stage_index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        entropy = [self.seed, self.stage_index, int(trainer.global_step), int(trainer.global_rank)]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # also every CUDA device


class ApplyStageSettings(Callback):
    """On a resumed stage: the config's optimizer and schedule settings replace the restored ones.

    Lightning restores the checkpoint's optimizer hyper-parameters and scheduler ``base_lrs`` over
    what ``configure_optimizers`` built from the config, so a lower lr given on ``--resume`` (or
    edited in config.yaml) would be ignored. :func:`ftclip.stages.retune` puts them back at the
    stage's position (the schedule's factors are the freshly built ones); with an unchanged config
    it changes no value (the resume stays bit-identical).
    """

    def __init__(self, stage: str):
        self.stage = stage

    def on_train_start(self, trainer, pl_module) -> None:
        stage_cfg = pl_module.stage_cfg
        changes: list[str] = []
        for optimizer, config in zip(trainer.optimizers, trainer.lr_scheduler_configs):
            if not isinstance(config.scheduler, torch.optim.lr_scheduler.LambdaLR):
                continue  # not the schedule StagedModule.configure_optimizers builds: left as restored
            changes += retune(optimizer, config.scheduler, stage_cfg.optimizer)
        if changes and trainer.is_global_zero:
            print(f"stage '{self.stage}': the config replaces the restored optimizer settings: {'; '.join(changes)}",
                  flush=True)


@dataclass
class _Where:
    """Where the run stands, for the messages of an interruption or a full disk."""

    stage: str | None = None
    epoch: int | None = None  # of the last checkpoint written in this stage
    step: int | None = None
    checkpoint_bytes: int = 0  # estimated size of the stage's checkpoints

    def begin(self, stage: str) -> None:
        self.stage, self.epoch, self.step = stage, None, None

    def saved(self, checkpoint: dict, path: Path) -> None:
        self.epoch, self.step = int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0))


def is_main_process() -> bool:
    """Global rank 0 (Lightning sets the rank in DDP worker processes from their environment)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def say(line: str) -> None:
    """Print one line, once: on global rank 0 only (under DDP every rank runs the engine)."""
    if is_main_process():
        print(line, flush=True)


def eval_every(cfg, stage_cfg) -> int:
    """Epochs between evaluations during a stage (0: only after it)."""
    every = stage_cfg.eval_every if stage_cfg.eval_every is not None else cfg.eval.every
    return int(every) if every and every > 0 else 0


class MonitorCheck(Callback):
    """At each validation of a stage with ``monitor``: the metric was logged, else one clear error
    naming what was (before Lightning's checkpoint and early-stopping callbacks look for it)."""

    def __init__(self, stage: str, key: str):
        self.stage, self.key = stage, key

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.key in trainer.callback_metrics:
            return
        logged = sorted(k.split("/", 1)[1] for k in trainer.callback_metrics if k.startswith("val/"))
        raise ConfigError(f"stages.{self.stage}.monitor={self.key.split('/', 1)[1]} is not a metric this task "
                          f"logs; it logs: {', '.join(logged) or 'nothing'}")


def resolve_monitor(stage: str, name: str, known: list[str]) -> str:
    """``stages.<stage>.monitor`` as the metric the task logs: the name itself, or the one logged name
    ending in ``/<name>`` (``srcc`` -> ``synthetic/srcc`` with one IQA set). ``known`` are the metric
    names of an evaluation already recorded (empty: checked at the stage's first validation)."""
    if not known or name in known:
        return name
    matches = [k for k in known if k.endswith(f"/{name}")]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(f"stages.{stage}.monitor={name} is not a metric this task logs"
                      + (f" unambiguously (it matches {', '.join(matches)})" if matches else "")
                      + f"; it logs: {', '.join(known)}")


def build_trainer(cfg, run: RunDir | None, stage: str | None, stage_cfg=None, history: StageHistory | None = None,
                  monitor: str | None = None, on_saved=None) -> L.Trainer:
    """A Trainer for one stage (``stage_cfg`` given) or for evaluation only. ``on_saved(checkpoint, path)``
    is called after each checkpoint is in place."""
    _quiet_lightning()
    t = cfg.trainer
    kwargs = dict(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=_precision(cfg), deterministic=t.deterministic, enable_progress_bar=t.enable_progress_bar,
        use_distributed_sampler=False,  # ftclip's samplers shard by rank themselves (whole identities)
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    if stage_cfg is None:
        return L.Trainer(logger=False, enable_checkpointing=False, **kwargs)
    every = eval_every(cfg, stage_cfg)
    closed_form = str(stage_cfg.kind) in get_task(str(cfg.task)).closed_form_kinds  # fitted in on_fit_start
    ckpt_dir = run.checkpoint_dir(stage)
    # the history first: its rows of a step are written before that step's checkpoint (Lightning runs
    # checkpoint callbacks last), see ftclip/logs.py
    callbacks: list[Callback] = [history] if history is not None else []
    callbacks.append(StepSeed(int(cfg.seed), list(cfg.stages).index(stage)))
    callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_epochs=1, save_top_k=1,
                                     save_on_train_epoch_end=True, enable_version_counter=False))
    if t.ckpt_every_n_steps:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=int(t.ckpt_every_n_steps),
                                         save_top_k=1, enable_version_counter=False))
    if monitor is not None:
        key, mode = f"val/{monitor}", str(stage_cfg.monitor_mode)
        callbacks.append(MonitorCheck(stage, key))
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=key, mode=mode, save_top_k=1,
                                         enable_version_counter=False, auto_insert_metric_name=False,
                                         save_on_train_epoch_end=False))
        if stage_cfg.early_stopping is not None:
            es = stage_cfg.early_stopping
            callbacks.append(EarlyStopping(monitor=key, mode=mode, patience=int(es.patience),
                                           min_delta=float(es.min_delta), check_on_train_epoch_end=False))
    loggers = build_loggers(t.logger, run.log_dir(), str(cfg.name), stage)
    if loggers and not closed_form:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    callbacks.append(ApplyStageSettings(stage))
    callbacks.append(StopAtStepEnd(stage, ckpt_dir / "last.ckpt"))
    if t.limit_train_batches is not None:  # a whole number above 1 is a batch count (Lightning wants an int)
        limit = float(t.limit_train_batches)
        kwargs["limit_train_batches"] = int(limit) if limit > 1 and limit.is_integer() else limit
    return L.Trainer(
        max_epochs=int(stage_cfg.epochs), max_steps=0 if closed_form else int(stage_cfg.max_steps),
        logger=loggers or False,
        callbacks=callbacks, plugins=[AtomicCheckpointIO(run.record_hash, on_saved)],
        default_root_dir=str(run.path),  # never the working folder (Lightning looks for SLURM hpc_ckpt_* there)
        log_every_n_steps=int(t.log_every_n_steps),
        gradient_clip_val=t.gradient_clip_val,
        check_val_every_n_epoch=every if every else int(stage_cfg.epochs) + 1,
        **kwargs,
    )


def _launched(trainers: list) -> list:
    """The DDP worker processes Lightning started from this process (where signals are passed on)."""
    return [proc for t in trainers for proc in (getattr(getattr(t.strategy, "launcher", None), "procs", None) or [])]


_TRAINERS: list = []  # this process's Trainers of the current fit (their launchers hold the DDP workers)


def evaluate(cfg, module, datamodule) -> dict[str, float]:
    """The task's validation over the recipe's evaluation data -> ``{metric: value}`` (``val/`` dropped)."""
    trainer = build_trainer(cfg, None, None)
    _TRAINERS.append(trainer)
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    values = results[0] if results else {}
    return {key.split("/", 1)[-1]: float(value) for key, value in values.items()}


def format_metrics(metrics: dict[str, float]) -> str:
    """``mAP=0.3120  rank1=0.4500  train_seconds=42.7s`` (durations in seconds, minutes, hours)."""
    return "  ".join(f"{k}={format_seconds(v)}" if k.endswith("_seconds") else f"{k}={v}" if isinstance(v, int)
                     else f"{k}={v:.4f}" for k, v in metrics.items() if is_number(v))


def check_stages(cfg, module) -> None:
    """Every stage's groups exist in the built model, and LoRA is trained by some stage."""
    groups = module.parameter_groups()
    for name, stage in cfg.stages.items():
        check_groups(groups, list(stage.train), name)
    lora_groups = [g for g in groups if g.endswith(".lora") and groups[g]]
    if lora_groups and not any(g in lora_groups for stage in cfg.stages.values() for g in stage.train):
        raise ConfigError(
            f"strategies.lora.enabled=true but no stage trains {' or '.join(lora_groups)}: the adapters would stay "
            f"zero. Name them in a stage (e.g. stages.{next(iter(cfg.stages))}.train=[{lora_groups[0]},...] with a "
            "LoRA-sized lr such as 2e-4, see docs/lora.md) or set strategies.lora.enabled=false"
        )


def check_trainer(cfg) -> None:
    """What only this machine can say about ``trainer.*``, before any data is read: a GPU asked for where there
    is none, more devices than there are, a strategy Lightning does not know, fp16 on the CPU. (Each value is
    already in its domain: recipe validation.)"""
    from lightning.pytorch.strategies import StrategyRegistry

    t = cfg.trainer
    accelerator, devices = str(t.accelerator), t.devices
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator in ("gpu", "cuda") and not gpus:
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no CUDA GPU (torch sees none): "
                          "set trainer.accelerator=cpu (or auto), or run on a machine with a GPU")
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps but this machine has no Apple MPS device: set trainer.accelerator=cpu")
    on_gpu = accelerator in ("gpu", "cuda") or accelerator == "auto" and gpus > 0
    wanted = int(devices) if isinstance(devices, int) and devices > 0 else None
    if on_gpu and wanted is not None and wanted > gpus:
        raise ConfigError(f"trainer.devices={devices} but this machine has {gpus} GPU(s): set trainer.devices to at "
                          f"most {gpus} (or -1 / auto for all of them)")
    if on_gpu and not isinstance(devices, (int, str)) and any(int(i) >= gpus for i in devices):
        raise ConfigError(f"trainer.devices={list(devices)} names GPU ids this machine does not have (it has "
                          f"{gpus}: ids 0..{gpus - 1})")
    if accelerator == "auto" and not gpus and wanted is not None and wanted > 1:
        raise ConfigError(f"trainer.devices={devices} with trainer.accelerator=auto, but this machine has no GPU: "
                          f"set trainer.accelerator=cpu to train in {devices} CPU processes on purpose, or "
                          "trainer.devices=1")
    strategies = ["auto", *StrategyRegistry.available_strategies()]
    if str(t.strategy) not in strategies:
        raise ConfigError(f"trainer.strategy={t.strategy!r} is not a Lightning strategy; choose one of: "
                          f"{', '.join(strategies)}")
    precision = str(t.precision) if t.precision is not None else None
    if precision in ("16", "16-mixed", "16-true", "transformer-engine", "transformer-engine-float16") and not on_gpu:
        raise ConfigError(f"trainer.precision={precision} needs a CUDA GPU; on the CPU use 32-true or bf16-mixed")


def check_monitors(cfg) -> None:
    """``monitor`` / ``early_stopping`` settings that cannot work, before any work (their values are in
    their domains already: recipe validation)."""
    for name, stage in cfg.stages.items():
        if stage.early_stopping is not None and not stage.monitor:
            raise ConfigError(f"stages.{name}.early_stopping needs stages.{name}.monitor: the metric it watches "
                              "(e.g. mAP, srcc, accuracy)")
        if not stage.monitor:
            continue
        every = eval_every(cfg, stage)
        if not every or every > int(stage.epochs):
            raise ConfigError(
                f"stages.{name}.monitor={stage.monitor} needs evaluations during the stage, but it evaluates only "
                f"after its last epoch; set stages.{name}.eval_every (or eval.every) to N <= {stage.epochs} epochs")


def check_recipe(cfg) -> None:
    """Every check that needs neither data nor model: the trainer against this machine, the task's, the
    model's and its weights, loggers, monitors."""
    task = get_task(str(cfg.task))
    check_trainer(cfg)
    task.check_config(cfg)
    check_model_config(cfg.model)
    check_loggers(cfg.trainer.logger)
    check_monitors(cfg)


def prepare(cfg):
    """Cheapest checks first: the recipe and the model's weights, then the data (parsed and
    decoded once), then the model is built."""
    task = get_task(str(cfg.task))
    check_recipe(cfg)
    datamodule = task.build_datamodule(cfg)
    say(datamodule.summary())
    module = task.build_module(cfg, datamodule.info)
    datamodule.set_preprocess(module.backbone.preprocess)
    say(module.backbone.preprocess.describe())
    check_stages(cfg, module)
    return module, datamodule


def warn_recipe(cfg) -> None:
    """Settings that run but cannot do what their numbers say (printed with the summary, like data check's)."""
    for warning in schedule_warnings(cfg.stages):
        say(f"warning: {warning}")


def describe_model(module) -> str:
    meta = module.backbone.metadata()
    h, w = meta["image_size"]
    _, total = count_parameters(module.parameter_groups())
    weights = module.cfg.model.pretrained
    return (f"model {meta['model_name']} ({'weights ' + str(weights) if weights else 'random init'}), "
            f"input {h}x{w}, {total / 1e6:.2f}M parameters in groups "
            f"{', '.join(g for g, p in module.parameter_groups().items() if p)}")


def dry_run(cfg) -> None:
    """``ftclip fit --dry-run``: the checks, the data parsed, the model built, what each stage would
    train; nothing trained and no run directory."""
    _quiet_lightning()
    set_cpu_threads(cfg)
    module, _ = prepare(cfg)
    warn_recipe(cfg)
    say(describe_model(module))
    for name, stage in cfg.stages.items():
        say(f"{module.set_stage(name, stage)}: groups {', '.join(stage.train)}, {stage.epochs} epoch(s), "
            f"{stage.optimizer.name} lr {stage.optimizer.lr:g}, schedule {stage.schedule.name}")
    say("dry run: the data parses and the model builds; nothing was trained and no run directory was made")


def _known_metrics(metrics: dict) -> list[str]:
    """Metric names of the evaluations recorded so far (for ``resolve_monitor``)."""
    names: list[str] = []
    for values in metrics.values():
        names += [k for k, v in values.items() if k not in names and is_metric_key(k) and is_number(v)]
    return names


def _best(rows: list[dict], key: str, mode: str) -> tuple[float, int] | None:
    """The best ``key`` value in a stage's history and its (1-based) epoch; the first on ties (as ModelCheckpoint)."""
    best = None
    for row in rows:
        if key in row and (best is None or (row[key] > best[0] if mode == "max" else row[key] < best[0])):
            best = (row[key], int(row.get("epoch", 0)) + 1)
    return best


def write_plots(cfg, run: RunDir, stage: str | None) -> None:
    """The shared plots: ``<stage>_loss.png``, ``<stage>_lr.png`` and the run's ``metrics.png``."""
    if stage is not None:
        rows = read_history(run.log_dir() / stage / HISTORY_FILE)
        plot_losses(rows, run.plots_dir() / f"{stage}_loss.png", stage)
        plot_lr(rows, run.plots_dir() / f"{stage}_lr.png", stage)
    stages = [(name, int(s.epochs), read_history(run.log_dir() / name / HISTORY_FILE)) for name, s in cfg.stages.items()]
    plot_run_metrics(run.plots_dir() / "metrics.png", stages, run.metrics())


def fit(cfg, run: RunDir) -> dict:
    """Run every stage not yet completed in ``run``; returns metrics.json's content.

    Raises ``Interrupted`` (a signal; the run resumes where its message says), ``DivergedError``
    and ``DiskFullError`` (one line each, saying which checkpoint a resume continues from).
    """
    _quiet_lightning()
    set_cpu_threads(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    where = _Where()
    _TRAINERS.clear()
    with handle_signals():
        set_children(lambda: _launched(_TRAINERS))
        try:
            return _fit_stages(cfg, run, where)
        except Interrupted as stop:
            _interrupted(cfg, run, where, stop)
            raise
        except DivergedError:
            if where.stage is not None and is_main_process():
                _best_effort(run.set_stage_status, where.stage, "failed", reason="diverged", epoch=where.epoch,
                             step=where.step)
            raise
        except BaseException as exc:
            cause = disk_full_cause(exc)
            if cause is None:
                raise
            for proc in _launched(_TRAINERS):  # the other ranks wait in rank 0's checkpoint barrier
                proc.kill()
            raise _disk_full(cfg, run, where, cause) from exc
        finally:
            _TRAINERS.clear()


def _fit_stages(cfg, run: RunDir, where: _Where) -> dict:
    module, datamodule = prepare(cfg)
    warn_recipe(cfg)  # once every check passed: a bad recipe gets one error line, not warnings first
    say(f"run directory: {run.path}")
    completed = run.completed_stages()
    metrics = run.metrics()
    main = is_main_process()  # under DDP every rank runs this function; one writes the run directory
    if cfg.eval.before and "initial" not in metrics and not completed:
        metrics["initial"] = evaluate(cfg, module, datamodule)
        if main:
            run.record_metrics("initial", metrics["initial"])
            module.on_stage_end(run, "initial")
            write_plots(cfg, run, None)
        say(f"[initial] {format_metrics(metrics['initial'])}")
    previous: str | None = None
    for name, stage in cfg.stages.items():
        if name in completed:
            previous = name
            continue
        where.begin(name)
        monitor = resolve_monitor(name, str(stage.monitor), _known_metrics(metrics)) if stage.monitor else None
        say(module.set_stage(name, stage))
        resume_from = run.last_checkpoint(name)
        if resume_from is not None:
            verify_checkpoint(resume_from, run)
        if resume_from is None and previous is not None:
            previous_ckpt = run.last_checkpoint(previous)
            if previous_ckpt is None:
                raise FtclipError(
                    f"stage '{previous}' is marked completed in {run.path / 'state.json'} but "
                    f"{run.checkpoint_dir(previous) / 'last.ckpt'} is missing; restore it, or remove '{previous}' "
                    "from state.json to train that stage again"
                )
            load_weights(module, previous_ckpt, run)
        if resume_from is not None:
            say(f"resuming stage '{name}' from {resume_from}")
        where.checkpoint_bytes = checkpoint_size(module, stage, resume_from)
        if main:
            run.set_stage_status(name, "running")
            _warn_if_little_space(run, name, where.checkpoint_bytes, resume_from is not None)
        datamodule.set_stage(stage.kind, stage.batch_size)
        history = StageHistory(run.log_dir() / name / HISTORY_FILE, name, int(stage.epochs),
                               int(cfg.trainer.log_every_n_steps), write=main,
                               on_epoch=None if cfg.trainer.enable_progress_bar else say,  # the bar shows it
                               resuming=resume_from is not None)
        trainer = build_trainer(cfg, run, name, stage, history, monitor, on_saved=where.saved)
        _TRAINERS.append(trainer)
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
        trainer.save_checkpoint(run.checkpoint_dir(name) / "last.ckpt", weights_only=False)  # final state, atomically
        metrics[name] = evaluate(cfg, module, datamodule)
        metrics[name]["train_seconds"] = round(history.seconds, 2)
        if monitor is not None:
            best = _best(read_history(history.path), f"val/{monitor}", str(stage.monitor_mode)) if main else None
            if best is not None:
                metrics[name][f"best/{monitor}"], metrics[name]["best/epoch"] = best[0], best[1]
            stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
            if stopper is not None and stopper.stopped_epoch:
                metrics[name]["stopped_early_at_epoch"] = int(stopper.stopped_epoch) + 1
        if main:
            run.record_metrics(name, metrics[name])
            run.mark_completed(name, epoch=int(trainer.current_epoch), step=int(trainer.global_step))
            write_plots(cfg, run, name)
            module.on_stage_end(run, name)
        say(f"[{name}] {format_metrics(metrics[name])}")
        previous = name
    return run.metrics()


# ---------------------------------------------------------------------- faults
def checkpoint_size(module, stage_cfg, existing: Path | None = None) -> int:
    """Bytes of one checkpoint of the stage: the existing file's size, else weights + buffers + the
    optimizer's per-parameter state (Adam/AdamW: two moments; SGD with momentum: one) + 64 KB."""
    if existing is not None and existing.is_file():
        return existing.stat().st_size
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
    name = str(stage_cfg.optimizer.name)
    moments = 2 if name in ("adam", "adamw") else (1 if name == "sgd" and stage_cfg.optimizer.momentum else 0)
    return int(weights + moments * trainable + 64_000)


def _warn_if_little_space(run: RunDir, stage: str, size: int, exists: bool) -> None:
    """Before a stage trains: a checkpoint is written beside the one it replaces, so a stage without one
    needs room for two (one when its checkpoint exists already)."""
    need = size if exists else 2 * size
    free = free_bytes(run.path)
    if free < need:
        print(f"warning: {run.path} has {human_bytes(free)} free, but stage '{stage}' needs about {human_bytes(need)} "
              f"for its checkpoints ({human_bytes(size)} each, written beside the one they replace): training will "
              "stop at a checkpoint for lack of space; free some first", file=sys.stderr, flush=True)


def _best_effort(write, *args, **kwargs) -> None:
    """A state.json note on the way out; a full disk or a second signal must not hide the real error."""
    try:
        write(*args, **kwargs)
    except (OSError, FtclipError, Interrupted):
        pass


def _position(run: RunDir, where: _Where) -> tuple[int, int]:
    """(epoch, step) of the checkpoint a resume of ``where.stage`` continues from (0, 0: none)."""
    if where.epoch is not None:
        return where.epoch, int(where.step or 0)
    ckpt = run.last_checkpoint(where.stage) if where.stage else None
    if ckpt is None:
        return 0, 0
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
        return int(state.get("epoch", 0)), int(state.get("global_step", 0))
    except Exception:
        return 0, 0


def _next_stage(cfg, run: RunDir) -> str | None:
    done = set(run.completed_stages())
    return next((name for name in cfg.stages if name not in done), None)


def _interrupted(cfg, run: RunDir, where: _Where, stop: Interrupted) -> None:
    """Complete the Interrupted's message (stage and position a resume continues from) and record it."""
    stop.run = str(run.path)
    if stop.stage is None:
        if where.stage is None:
            where.stage = _next_stage(cfg, run)
        stop.stage = where.stage
        stop.epoch, stop.step = _position(run, where) if where.stage else (0, 0)
        stop.main = is_main_process()
    if stop.main:
        _best_effort(run.record_interruption, stop.stage, stop.epoch, stop.step, stop.signal_name, stop.note)


def _disk_full(cfg, run: RunDir, where: _Where, cause: BaseException) -> DiskFullError:
    """One line: the run is intact, which checkpoint resumes it, how much room the next checkpoint needs."""
    path = getattr(cause, "path", None) or getattr(cause, "filename", None) or "a file"
    stage = where.stage
    ckpt = run.last_checkpoint(stage) if stage else None
    if ckpt is not None:
        epoch, step = _position(run, where)
        resumes = f"resumes from {ckpt} (stage {stage}, epoch {epoch}, step {step})"
    else:
        done = [s for s in cfg.stages if s in set(run.completed_stages())]
        previous = run.last_checkpoint(done[-1]) if done else None
        if stage is not None and previous is not None:
            resumes = f"resumes stage '{stage}' from its start, from {previous}"
        else:
            resumes = "restarts from its first step (no checkpoint was written yet)"
    if stage is not None:
        _best_effort(run.set_stage_status, stage, "failed", reason="disk full", epoch=where.epoch, step=where.step)
    size = where.checkpoint_bytes or (ckpt.stat().st_size if ckpt else 0)
    free = free_bytes(run.path)
    need = (f"the next checkpoint needs about {human_bytes(size)} free on the file system of {run.path} "
            f"({human_bytes(free)} free now" + (f": free at least {human_bytes(size - free)} more)" if size > free else ")")
            if size else f"free space is needed on the file system of {run.path} ({human_bytes(free)} free now)")
    return DiskFullError(
        f"no space left on the device writing {path}: the run is intact (every file is written atomically, nothing "
        f"half-written is kept) and {resumes}; {need}, then `ftclip fit --resume {run.path}`", str(path))
