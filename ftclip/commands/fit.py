"""``ftclip fit RECIPE [key=value ...] [--print-config | --dry-run]`` and ``ftclip fit --resume RUN_DIR [key=value ...]``."""

from __future__ import annotations

import json
import os
import sys

from ftclip.errors import DiskFullError, DivergedError, FtclipError, Interrupted


RUN_DIR_ENV = "FTCLIP_RUN_DIR"


def register(sub) -> None:
    p = sub.add_parser("fit", help="train a recipe (or resume a run)",
                       description="Train the stages of a recipe. Any key can be overridden as a.b=value. "
                                   "With --resume RUN_DIR, an interrupted run continues from its checkpoints; "
                                   "key=value overrides may then change only the optimizer and schedule of "
                                   "stages not finished yet (e.g. stages.image.optimizer.lr=1e-6).")
    p.add_argument("recipe", nargs="?", help="recipe YAML file or bundled recipe name (see `ftclip recipes`)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. trainer.devices=2 data.root=/data/market")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its directory")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--print-config", action="store_true",
                      help="print the resolved recipe (YAML) and exit; nothing is read, built or written")
    what.add_argument("--dry-run", action="store_true",
                      help="check the recipe, parse the data, build the model, print what each stage trains, and exit "
                           "without training or writing a run directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from ftclip.engine import is_main_process
    from ftclip.recipe import load_recipe, to_yaml

    if args.print_config or args.dry_run:
        if args.resume:
            from ftclip.runs import RunDir

            cfg = RunDir.open(args.resume).load_config()
        elif args.recipe:
            cfg = load_recipe(args.recipe, list(args.overrides))
        else:
            raise FtclipError("give a recipe (`ftclip recipes` lists the bundled ones) or --resume RUN_DIR")
        if args.print_config:
            print(to_yaml(cfg), end="")
        else:
            from ftclip.engine import dry_run

            dry_run(cfg)
        return 0
    if args.resume:
        overrides = _resume_overrides(args)
        # one process per run directory: a resume takes the lock before torch is even imported (seconds), so a
        # second one is refused at once
        lock = _lock_early(args.resume) if _worker_rank() == 0 else None
        try:
            run_dir, metrics = fit_run(None, overrides, args.resume, lock=lock)
        finally:
            if lock is not None:
                lock.release()
    else:
        run_dir, metrics = fit_run(args.recipe, list(args.overrides))
    if metrics is None:  # --resume of a finished run: said so, nothing trained
        return 0
    if is_main_process() and run_dir.config_path.is_file():  # one run (seeds=[...] printed its summary)
        print(json.dumps(metrics, indent=2))
        print(f"report: {run_dir.path / 'report.html'}")
        print(f"done: {run_dir.path}")
    return 0


def _lock_early(run_dir: str):
    from pathlib import Path

    from ftclip.lockfile import LOCK_FILE, RunLock

    folder = Path(run_dir)
    if not (folder / "config.yaml").is_file() or not os.access(folder, os.W_OK):
        return None  # RunDir.open says what is wrong
    return RunLock(folder / LOCK_FILE).acquire("ftclip fit --resume")


def fit_run(recipe, overrides: list[str], resume=None, lock=None):
    """Train (or resume) a run, export it (``run.export``) and write its report: ``(RunDir, metrics)``.
    With ``resume``, ``overrides`` are the ``--resume key=value`` changes of unfinished stages'
    optimizer and schedule; a finished run gives ``(RunDir, None)`` (nothing to do). With
    ``seeds=[...]``: the folder holding ``seed<N>/`` and ``seeds.json``, and that summary. ``lock``: a
    hold on the run directory already taken (else one is taken here). The one path of ``ftclip fit``
    and ``ftclip.fit`` / ``ftclip.resume``."""
    from ftclip.io import atomic_write_text
    from ftclip.recipe import load_recipe, to_yaml
    from ftclip.runs import RunDir, resume_config

    created = False
    if _worker_rank() > 0 and (os.environ.get(RUN_DIR_ENV) or resume):
        # a DDP worker (started by Lightning re-running this command, or a resume under torchrun/SLURM)
        run_dir = RunDir(os.environ.get(RUN_DIR_ENV) or resume)
        cfg = run_dir.load_config()
        if resume:
            cfg, _ = resume_config(run_dir, cfg, overrides)  # what rank 0 applied (the same on every rank)
    elif _worker_rank() > 0 and recipe:
        # torchrun / srun start every rank with the same command: rank 0 creates run.dir, the others join it
        cfg = load_recipe(recipe, overrides)
        if not cfg.run.dir:
            raise FtclipError("several processes were launched (torchrun/srun): set run.dir so they share one run "
                              "directory, e.g. run.dir=runs/my_job")
        run_dir = RunDir(cfg.run.dir)
        _wait_for(run_dir.config_path)
        cfg = run_dir.load_config()
    elif resume:
        if recipe:
            raise FtclipError("--resume takes the run directory (and key=value overrides), not a recipe: "
                              "the run's own config.yaml is used")
        run_dir = RunDir.open(resume)
        lock = lock or run_dir.lock("ftclip fit --resume")
        cfg = run_dir.load_config()
        if run_dir.is_finished(cfg):
            _finished(run_dir, cfg, overrides)
            return run_dir, None
        cfg, changes = resume_config(run_dir, cfg, overrides)
        if changes:
            atomic_write_text(run_dir.config_path, to_yaml(cfg))
            print("resume overrides: " + "; ".join(f"{k} {old} -> {new}" for k, (old, new) in changes.items()),
                  flush=True)
        run_dir.record_history("ftclip fit --resume", overrides, changes)
    else:
        if not recipe:
            raise FtclipError("give a recipe (`ftclip recipes` lists the bundled ones) or --resume RUN_DIR")
        cfg = load_recipe(recipe, overrides)
        if cfg.seeds:
            base, summary = fit_seeds(cfg)
            return RunDir(base), summary
        run_dir = RunDir.create(cfg)
        created = True
        lock = run_dir.lock("ftclip fit")
    return run_dir, _fit_run(cfg, run_dir, created, lock)


def _fit_run(cfg, run_dir, created: bool, lock=None) -> dict:
    """Train ``cfg`` in ``run_dir`` (removed again if bad input stops it before any work), then export and
    write ``report.html``. ``lock`` (rank 0's hold on the run directory) is released at the end."""
    from ftclip.artifacts.report import write_report
    from ftclip.engine import fit, is_main_process
    from ftclip.interrupts import handle_signals
    from ftclip.lockfile import describe

    if lock is not None and lock.stale:
        print(f"note: {lock.path} was left by {describe(lock.stale)}, which has ended; taking it over",
              file=sys.stderr, flush=True)
    saved = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run_dir.path)  # inherited by the DDP workers Lightning launches
    try:
        with handle_signals():
            try:
                metrics = fit(cfg, run_dir)
            except BaseException as exc:
                if isinstance(exc, (Interrupted, DivergedError, DiskFullError)):
                    pass  # the run stays, even before its first checkpoint: the line says how to resume it
                elif created and not run_dir.started():  # a failed start: leave nothing half-made behind
                    run_dir.discard()
                elif is_main_process() and run_dir.started():
                    _say_resumable(exc, run_dir)
                raise
            if is_main_process():
                if cfg.run.export:
                    _export(run_dir, cfg)
                write_report(run_dir.path)
    except Interrupted as stop:
        stop.run = stop.run or str(run_dir.path)
        raise
    finally:
        if lock is not None:
            lock.release()
        if saved is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = saved
    return metrics


def fit_seeds(cfg):
    """``seeds=[1,2,3]``: one run per seed in ``<run dir>/seed<N>/`` (``seed`` set, everything else as given),
    then ``<run dir>/seeds.json``: per stage and metric the values, their mean and (population) std, as
    Dassl's ``parse_test_res.py`` reports them. A run that stops can be finished with ``--resume <run dir>/seed<N>``.
    Returns ``(<run dir>, the summary)``."""
    import copy
    import datetime as dt
    from pathlib import Path

    from ftclip.io import atomic_write_json
    from ftclip.runs import RunDir

    seeds = [int(s) for s in cfg.seeds]
    if len(set(seeds)) != len(seeds):
        raise FtclipError(f"seeds={seeds} lists a seed twice")
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(cfg.run.dir) if cfg.run.dir else Path(cfg.run.root) / str(cfg.name) / stamp
    runs = {}
    for seed in seeds:
        one = copy.deepcopy(cfg)
        one.seed, one.seeds, one.run.dir = seed, [], str(base / f"seed{seed}")
        print(f"=== seed {seed} ===", flush=True)
        run_dir = RunDir.create(one)
        runs[seed] = _fit_run(one, run_dir, created=True, lock=run_dir.lock("ftclip fit"))
    summary = summarize_seeds(runs)
    atomic_write_json(base / "seeds.json", summary)
    for stage, values in summary["stages"].items():
        for key, stats in values.items():
            print(f"[{stage}] {key} = {stats['mean']:.4f} +- {stats['std']:.4f} over seeds {seeds}")
    print(f"done: {base} (seeds.json)")
    return base, summary


def _say_resumable(exc: BaseException, run_dir) -> None:
    """After training began, a failure keeps the run: say how to continue it (once)."""
    hint = f"the run is kept: continue it with `ftclip fit --resume {run_dir.path}`"
    if isinstance(exc, FtclipError):
        if "--resume" not in str(exc):
            exc.args = (f"{exc}; {hint}",)
    elif not isinstance(exc, (KeyboardInterrupt, Interrupted)):  # the CLI says how to resume after those
        print(f"ftclip: {type(exc).__name__} after training began; {hint}", file=sys.stderr, flush=True)


def summarize_seeds(runs: dict[int, dict]) -> dict:
    """``{seed: metrics.json content}`` -> per stage, per numeric metric: values (in seed order), mean, std."""
    import statistics

    stages: dict[str, dict[str, dict]] = {}
    for metrics in runs.values():
        for stage, values in metrics.items():
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "train_seconds":
                    stages.setdefault(stage, {}).setdefault(key, {"values": []})["values"].append(float(value))
    for values in stages.values():
        for stats in values.values():
            stats["mean"] = statistics.fmean(stats["values"])
            stats["std"] = statistics.pstdev(stats["values"])
    return {"seeds": list(runs), "stages": stages}


def _resume_overrides(args) -> list[str]:
    """``fit --resume RUN a=b c=d``: argparse puts ``a=b`` in ``recipe``; a resume takes no recipe."""
    items = ([args.recipe] if args.recipe else []) + list(args.overrides)
    if items and "=" not in items[0]:
        raise FtclipError(f"--resume takes the run directory and optional key=value overrides of its optimizer and "
                          f"schedule, not a recipe ('{items[0]}'): the run's own config.yaml is used")
    return items


def _export(run_dir, cfg) -> None:
    from ftclip.artifacts.export import export_run

    export_run(run_dir.path, list(cfg.run.export), out=run_dir.path / "export", overwrite=True,
               text_layer=str(cfg.run.hf_text_layer))


def _finished(run_dir, cfg, overrides: list[str]) -> int:
    """``--resume`` of a finished run: nothing to train (its data are not even read)."""
    from ftclip.artifacts.layout import EXPORT_META

    if overrides:
        raise FtclipError(f"run {run_dir.path} is finished, so nothing is resumed and the overrides "
                          f"{' '.join(overrides)} would change nothing; train a new run with them instead")
    print(f"run {run_dir.path} is finished (stages {', '.join(cfg.stages)}): nothing to do; its metrics are in "
          f"{run_dir.metrics_path}")
    if cfg.run.export and not (run_dir.path / "export" / EXPORT_META).is_file():
        print(f"its export (run.export: {', '.join(cfg.run.export)}) is missing: exporting", flush=True)
        _export(run_dir, cfg)
    return 0


def _worker_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not launched as a worker)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value and value.isdigit():
            return int(value)
    return 0


def _wait_for(path, timeout: float = 600.0) -> None:
    import time

    deadline = time.time() + timeout
    while not path.is_file():
        if time.time() > deadline:
            raise FtclipError(f"rank 0 did not create {path} within {int(timeout)} s; is run.dir on a shared file system?")
        time.sleep(1.0)
