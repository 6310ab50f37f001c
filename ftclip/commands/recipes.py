"""``ftclip recipes``: the bundled recipes, each with its whole description."""

from __future__ import annotations

import yaml


def register(sub) -> None:
    p = sub.add_parser("recipes", help="list bundled recipes with their descriptions")
    p.set_defaults(func=run)


def describe(path) -> list[str]:
    """The recipe's leading comment block (its description), one entry per line; else its task."""
    lines: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            lines.append(line[1:].rstrip()[1:] if line[1:2] == " " else line[1:].rstrip())
    if lines:
        return lines
    data = yaml.safe_load(open(path, encoding="utf-8")) or {}
    return [f"task {data.get('task', '?')}"]


def run(args) -> int:
    from ftclip.config import REPO_ROOT
    from ftclip.recipe import bundled_recipes

    root = REPO_ROOT / "recipes"
    recipes = bundled_recipes()
    width = max((len(str(p.relative_to(root).with_suffix(""))) for p in recipes), default=0)
    for i, path in enumerate(recipes):
        name = str(path.relative_to(root).with_suffix(""))
        first, *more = describe(path)
        print(("\n" if i else "") + f"{name:<{width}}  {first}")
        for line in more:
            print(f"{'':<{width}}  {line}")
    return 0
