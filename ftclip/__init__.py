"""ftclip: fine-tune CLIP models for re-identification, image quality and few-shot adaptation."""

import os

# albumentations 2.0.x checks PyPI for updates on import; ftclip runs offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from ftclip.version import __version__  # noqa: E402,F401
