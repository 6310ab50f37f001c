"""ftclip: fine-tune CLIP models for re-identification, image quality and few-shot adaptation.

The Python API (docs/api.md) is importable from here: ``ftclip.fit``, ``ftclip.resume``,
``ftclip.eval``, ``ftclip.load`` and the ``Run`` / ``Model`` they return. They live in
:mod:`ftclip.api` (the top layer, beside the CLI) and are loaded on first use, so importing any
part of ftclip does not import the training stack.
"""

import os

# albumentations 2.0.x checks PyPI for updates on import; ftclip runs offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from ftclip.version import __version__  # noqa: E402,F401

_API = ("fit", "resume", "eval", "load", "Run", "Model")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from ftclip import api

        return getattr(api, name)
    raise AttributeError(f"module 'ftclip' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
