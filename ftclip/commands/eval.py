"""``ftclip eval SOURCE [RECIPE] [key=value ...]``: evaluate without training.

    ftclip eval RUN_DIR [--stage S] [--checkpoint last|best] [data.root=...]   a trained run
    ftclip eval EXPORT_DIR [RECIPE] [key=value ...]                           an export (default: its own recipe)
    ftclip eval RECIPE model.pretrained=... [key=value ...]                   a stock model: the zero-shot baseline

Every source goes through the task's own validation (``engine.evaluate``, the code ``ftclip fit``
runs after each stage), so ``ftclip eval RUN`` gives the numbers of ``metrics.json``. Prints a
table and writes ``eval.json`` (``--out``; default ``RUN_DIR/eval.json`` for a run, else
``./eval.json``).
"""

from __future__ import annotations

import time
from pathlib import Path

from ftclip.commands import add_checkpoint_options
from ftclip.errors import FtclipError

#: the keys ``ftclip eval RUN_DIR`` may override (the model comes from the checkpoint)
RUN_OVERRIDABLE = ("data.", "eval.", "trainer.")


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a run, an export or a pretrained model on a recipe's data (no training)",
        description="Evaluate without training: a finished run directory (its last stage's final weights, or --stage / "
                    "--checkpoint best), an export folder (with its recorded recipe or a RECIPE), or a recipe with "
                    "model.pretrained=... (a stock CLIP: the zero-shot baseline). key=value overrides choose other "
                    "data (data.root=..., eval.sets=[...]). Prints the metrics and writes eval.json.")
    p.add_argument("source", metavar="RUN_DIR|EXPORT_DIR|RECIPE")
    p.add_argument("rest", nargs="*", metavar="[RECIPE] key=value",
                   help="for an export, optionally the recipe whose data to use; then overrides such as data.root=...")
    add_checkpoint_options(p, "evaluate")
    p.add_argument("--out", help="where to write eval.json (default: RUN_DIR/eval.json for a run, else ./eval.json; "
                                 "the default is replaced by each evaluation)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=run)


def evaluate_source(source: str | Path, recipe: str | Path | None = None, overrides: list[str] | None = None,
                    stage: str | None = None, checkpoint: str = "last") -> dict:
    """Evaluate a run directory, an export folder or a recipe's pretrained model -> what ``eval.json`` holds.
    The one path of ``ftclip eval`` and ``ftclip.eval``."""
    from omegaconf import OmegaConf

    from ftclip.artifacts.inference import load_module_from_export, path_kind, read_export_meta
    from ftclip.engine import evaluate, prepare, set_cpu_threads
    from ftclip.recipe import config_from_text, load_recipe, with_overrides
    from ftclip.runs import RunDir, load_module_from_run, select_checkpoint
    from ftclip.tasks import get_task
    from ftclip.version import __version__

    overrides = list(overrides or [])
    path = Path(source)
    kind = path_kind(path) if path.is_dir() else "pretrained"
    if kind != "run" and (stage is not None or checkpoint != "last"):
        raise FtclipError("--stage and --checkpoint choose a run's checkpoint; an export or a recipe has one model")
    ckpt = None
    start = time.time()
    if kind == "run":
        if recipe is not None:
            raise FtclipError(f"{path} is a run directory: it is evaluated with its own recipe (config.yaml); give "
                              f"overrides only, e.g. `ftclip eval {path} data.root=/other/data`")
        bad = [o for o in overrides if not o.partition("=")[0].strip().startswith(RUN_OVERRIDABLE)]
        if bad:
            raise FtclipError(f"`ftclip eval RUN_DIR` overrides only {', '.join(k + '*' for k in RUN_OVERRIDABLE)} keys "
                              f"(the model comes from the checkpoint); not {bad[0]}")
        run = RunDir(path)
        cfg = with_overrides(run.load_config(), overrides, str(run.config_path))
        stage, ckpt = select_checkpoint(run, stage, cfg, which=checkpoint)
        get_task(str(cfg.task)).check_config(cfg)
        module, _ = load_module_from_run(run, stage, checkpoint, cfg=cfg)
        _as_after_stage(module, cfg, stage)
        datamodule = _evaluation_data(cfg)
    elif kind == "export":
        if recipe is not None:
            cfg = load_recipe(recipe, overrides)
        else:
            meta = read_export_meta(path)
            if not meta.get("recipe"):
                raise FtclipError(f"export {path} records no recipe; give one: ftclip eval {path} RECIPE [key=value]")
            cfg = with_overrides(config_from_text(meta["recipe"], f"{path} (recorded recipe)"), overrides, str(path))
        get_task(str(cfg.task)).check_config(cfg)
        module, cfg = load_module_from_export(path, cfg)
        _as_after_stage(module, cfg, read_export_meta(path).get("stage"))
        datamodule = _evaluation_data(cfg)
    else:
        if recipe is not None:
            raise FtclipError(f"give the recipe once: `ftclip eval {source} key=value ...`")
        cfg = load_recipe(source, overrides)
        import lightning as L

        L.seed_everything(int(cfg.seed), workers=True, verbose=False)  # a random-init model as `ftclip fit` builds it
        module, datamodule = prepare(cfg)
    datamodule.set_preprocess(module.backbone.preprocess)
    set_cpu_threads(cfg)
    metrics = evaluate(cfg, module, datamodule)
    return {
        "source": str(path.resolve()) if path.exists() else str(source),
        "kind": kind,
        "task": str(cfg.task),
        "stage": stage,
        "checkpoint": str(ckpt) if ckpt is not None else None,
        "model": {"name": str(cfg.model.name), "pretrained": cfg.model.pretrained},
        "overrides": overrides,
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "eval": OmegaConf.to_container(cfg.eval, resolve=True),
        "metrics": metrics,
        "seconds": round(time.time() - start, 2),
        "ftclip": __version__,
    }


def _as_after_stage(module, cfg, stage: str | None) -> None:
    """Freeze the module as ``ftclip fit`` had it when it evaluated ``stage`` (its groups trainable, the rest
    frozen). Evaluation runs without gradients either way, but torch picks some kernels by whether
    parameters require grad (the text tower's attention differs by ~1e-6), so this makes ``ftclip eval``
    give metrics.json's numbers to the bit. Skipped where the stage's groups do not exist (a LoRA stage
    of an export, whose adapters are merged)."""
    if stage is None or stage not in cfg.stages:
        return
    groups = module.parameter_groups()
    if all(groups.get(g) for g in cfg.stages[stage].train):
        module.set_stage(stage, cfg.stages[stage])


def _evaluation_data(cfg):
    """The task's datamodule for evaluation only: built from ``cfg`` without its stages, so no stage's
    training data is read (the model comes from a checkpoint or an export, not from this data)."""
    import copy

    from ftclip.engine import say
    from ftclip.tasks import get_task

    data_cfg = copy.deepcopy(cfg)
    data_cfg.stages = {}
    datamodule = get_task(str(cfg.task)).build_datamodule(data_cfg)
    say(datamodule.summary())
    return datamodule


def format_table(metrics: dict[str, float]) -> str:
    """``metric  value`` rows, the metric names as the task logged them."""
    width = max([len("metric")] + [len(k) for k in metrics])
    return "\n".join([f"{'metric':<{width}}  value"] + [f"{k:<{width}}  {v:.4f}" for k, v in metrics.items()])


def default_out(source: str | Path) -> Path:
    """``RUN_DIR/eval.json`` for a run directory, else ``./eval.json``."""
    from ftclip.runs import is_run_dir

    return Path(source) / "eval.json" if is_run_dir(source) else Path("eval.json")


def run(args) -> int:
    from ftclip.io import atomic_write_json, check_output_file

    rest = list(args.rest)
    recipe = rest.pop(0) if rest and "=" not in rest[0] else None
    out = Path(args.out) if args.out else default_out(args.source)
    check_output_file(out, "--out", overwrite=args.overwrite or not args.out)  # before any work
    result = evaluate_source(args.source, recipe, rest, args.stage, args.checkpoint)
    where = f"stage {result['stage']}, {Path(result['checkpoint']).name}" if result["kind"] == "run" else result["kind"]
    print(f"evaluated {args.source} ({where}) in {result['seconds']:.1f}s")
    print(format_table(result["metrics"]))
    atomic_write_json(out, result)
    print(f"wrote {out}")
    if result["kind"] == "run" and out.resolve() == default_out(args.source).resolve():
        from ftclip.artifacts.report import write_report

        write_report(result["source"])  # the run's report lists its eval.json
    return 0
