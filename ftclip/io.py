"""Atomic file writes: write to a temporary name in the same folder, fsync, rename.

A crash leaves either the old file or the new one, never a truncated file a resume would trust.
Also: SHA-256 of files (recorded when a checkpoint or export is written, verified on every read),
an atomic swap of folders, and the checks of an output path before any work.
A full disk (``ENOSPC``, or a quota: ``EDQUOT``) during a write is one :class:`DiskFullError`
naming the file and the free space; the temporary file is removed, the old file stays.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ftclip.errors import DiskFullError, FtclipError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def disk_full_cause(exc: BaseException | None) -> BaseException | None:
    """The ``DiskFullError`` or ``OSError(ENOSPC/EDQUOT)`` in ``exc``'s chain (``torch.save`` wraps the
    OSError in a RuntimeError), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS):
            return exc
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return exc  # libraries that report the OS error in words only (safetensors: "... (os error 28)")
        exc = exc.__cause__ or exc.__context__
    return None


def free_bytes(path: str | Path) -> int:
    """Free bytes (for this user) on the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600: give the mode open() would
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if not isinstance(exc, DiskFullError) and disk_full_cause(exc) is not None:
            raise DiskFullError(
                f"no space left on the device writing {path} ({human_bytes(free_bytes(path.parent))} free); "
                "the file was not changed (nothing half-written is kept): free space, then retry",
                str(path)) from exc
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex (a 600 MB checkpoint takes about a second)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


#: ``record(path, sha256, in_place)``: see :class:`AtomicCheckpointIO`
HashRecord = Callable[[Path, "str | None", bool], None]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that never leaves a half-written ``.ckpt`` and reports each file's SHA-256.

    With ``record``, a checkpoint's hash is handed over twice: ``record(path, sha256, False)`` once the
    new file is complete but before it replaces the old one, and ``record(path, sha256, True)`` once
    it is in place -- so the record (the run's ``state.json``) names the file on disk whenever a
    crash strikes. A removed checkpoint is reported as ``record(path, None, True)``.
    ``on_saved(checkpoint, path)``, if given, is called after each checkpoint is in place.
    """

    def __init__(self, record: HashRecord | None = None, on_saved: Callable[[dict, Path], None] | None = None):
        super().__init__()
        self.record = record
        self.on_saved = on_saved

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        digest = ""

        def write(tmp: str) -> None:
            nonlocal digest
            with open(tmp, "wb") as fh:  # a Python file: a full disk surfaces as OSError(ENOSPC) in the chain
                torch.save(checkpoint, fh)
            digest = sha256_file(tmp)
            if self.record is not None:
                self.record(path, digest, False)

        atomic_write(path, write)
        if self.record is not None:
            self.record(path, digest, True)
        if self.on_saved is not None:
            self.on_saved(checkpoint, path)

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        if self.record is not None:
            self.record(Path(path), None, True)


# --------------------------------------------------------------------------- folders
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target`` (same file system), then delete what was there.

    An existing ``target`` is swapped with ``new`` in one atomic step where the system can (Linux), else
    moved aside, replaced and only then removed -- put back if the replacement fails. A failure before
    the swap leaves ``target`` as it was.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # now the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- output paths, before any work
def nearest_existing(path: str | Path) -> Path:
    """``path`` or its nearest ancestor that exists (absolute): where creating ``path`` would start."""
    path = Path(os.path.abspath(path))
    return next(candidate for candidate in (path, *path.parents) if candidate.exists())  # the root always does


def check_output_file(path: str | Path, what: str, overwrite: bool = False) -> Path:
    """``path`` can be written as a file, checked before any work: not a folder, its folder creatable and
    writable, and not an existing file unless ``overwrite``. ``what`` names it (``--out``); raises FtclipError."""
    path = Path(path)
    if path.is_dir():
        raise FtclipError(f"{what} {path} is a folder; give a file name, e.g. {path / ('out' + path.suffix)}")
    if path.exists() and not overwrite:
        raise FtclipError(f"{what} {path} already exists; pass --overwrite to replace it, or choose another name")
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise FtclipError(f"{what} {path}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FtclipError(f"{what} {path}: the folder {folder} is not writable; choose a writable place")
    return path
