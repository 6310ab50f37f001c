"""``ftclip fit RECIPE [key=value ...]`` and ``ftclip fit --resume RUN_DIR``."""

from __future__ import annotations

import json

from ftclip.errors import FtclipError


def register(sub) -> None:
    p = sub.add_parser("fit", help="train a recipe (or resume a run)",
                       description="Train the stages of a recipe. Any key can be overridden as a.b=value.")
    p.add_argument("recipe", nargs="?", help="recipe YAML file or bundled recipe name (see `ftclip recipes`)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. trainer.devices=2 data.root=/data/market")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from ftclip.config import load_recipe
    from ftclip.engine import fit
    from ftclip.rundir import RunDir

    if args.resume:
        if args.recipe or args.overrides:
            raise FtclipError("--resume takes only the run directory: its saved config.yaml is used as it is")
        run_dir = RunDir.open(args.resume)
        cfg = run_dir.load_config()
    else:
        if not args.recipe:
            raise FtclipError("give a recipe (`ftclip recipes` lists the bundled ones) or --resume RUN_DIR")
        cfg = load_recipe(args.recipe, list(args.overrides))
        run_dir = RunDir.create(cfg)
    metrics = fit(cfg, run_dir)
    print(json.dumps(metrics, indent=2))
    print(f"done: {run_dir.path}")
    return 0
