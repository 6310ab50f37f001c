"""``ftclip`` command line. Each command lives in ``ftclip/commands/<name>.py`` and exposes
``register(subparsers)``; it sets ``func(args) -> int`` on its parser.

User mistakes (:class:`FtclipError`) print one line and exit with status 2. A run stopped by a
signal (:class:`Interrupted`) prints where it resumes and exits with 128 + the signal number
(SIGTERM 143, SIGINT 130).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ftclip.version import __version__
from ftclip.errors import FtclipError, Interrupted

COMMANDS = [
    "ftclip.commands.fit",
    "ftclip.commands.eval",
    "ftclip.commands.data",
    "ftclip.commands.recipes",
    "ftclip.commands.score",
    "ftclip.commands.predict",
    "ftclip.commands.export",
    "ftclip.commands.embed",
    "ftclip.commands.verify",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftclip", description="Fine-tune CLIP models with YAML recipes.")
    parser.add_argument("--version", action="version", version=f"ftclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FtclipError as exc:
        print(f"ftclip: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        if stop.main:  # under DDP every rank stops; one says so
            print(stop.line(), file=sys.stderr, flush=True)
        return stop.exit_code
    except KeyboardInterrupt:  # outside `ftclip fit` (which handles SIGINT itself)
        print(f"ftclip {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
