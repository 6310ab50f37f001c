"""``ftclip recipes``: the bundled recipes, one line each."""

from __future__ import annotations

import yaml


def register(sub) -> None:
    p = sub.add_parser("recipes", help="list bundled recipes")
    p.set_defaults(func=run)


def describe(path) -> str:
    """The recipe's first comment line (its one-line description)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("#"):
                return line.lstrip("# ").strip()
            if line.strip():
                break
    data = yaml.safe_load(open(path, encoding="utf-8")) or {}
    return f"task {data.get('task', '?')}"


def run(args) -> int:
    from ftclip.config import REPO_ROOT
    from ftclip.recipe import bundled_recipes

    root = REPO_ROOT / "recipes"
    recipes = bundled_recipes()
    width = max((len(str(p.relative_to(root).with_suffix(""))) for p in recipes), default=0)
    for path in recipes:
        name = str(path.relative_to(root).with_suffix(""))
        print(f"{name:<{width}}  {describe(path)}")
    return 0
