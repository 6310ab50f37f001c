"""The export manifest (``ftclip_export.json``): what an export folder is, the files it holds, their SHA-256.

Export records the SHA-256 of every file it writes (``"sha256": {relative path: hex}``, every file
but the manifest itself); inference and ``ftclip verify`` check them before trusting the folder,
and ``ftclip export --overwrite`` replaces a folder only if its manifest proves it is an export
and it holds nothing the export did not write. Exports written before hashes were recorded still
load (with a note); their file list is the manifest's ``files``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftclip.artifacts.layout import EXPORT_META
from ftclip.errors import FtclipError
from ftclip.io import sha256_file


def read_manifest(folder: str | Path) -> dict:
    """The manifest of export ``folder``; FtclipError naming the file if it is missing or unreadable."""
    path = Path(folder) / EXPORT_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FtclipError(f"{path} is not readable JSON ({exc}); re-export the run") from None
    if not isinstance(meta, dict):
        raise FtclipError(f"{path} is not a JSON object; re-export the run")
    return meta


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` holds a readable ftclip export manifest."""
    try:
        return "format_version" in read_manifest(folder)
    except FtclipError:
        return False


def files_in(folder: str | Path) -> list[str]:
    """Every file below ``folder`` (relative posix paths, sorted), the manifest included."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def file_hashes(folder: str | Path) -> dict[str, str]:
    """``{relative path: SHA-256}`` of every file of the export being written, but the manifest."""
    folder = Path(folder)
    return {name: sha256_file(folder / name) for name in files_in(folder) if name != EXPORT_META}


def written_files(meta: dict) -> set[str]:
    """The files an export wrote, by its manifest (older manifests: the ``files`` list and ONNX weights)."""
    if meta.get("sha256"):
        names = set(meta["sha256"])
    else:
        names = set(meta.get("files", {}))
        names |= {f"{name}.data" for name in names if name.endswith(".onnx")}
    return names | {EXPORT_META}


def check_files(folder: str | Path, meta: dict) -> dict[str, str]:
    """What is wrong with the files of export ``folder`` by its manifest: ``{file: problem}`` for each listed
    file that is missing or whose SHA-256 differs (empty: all good, or nothing recorded -- see ``meta["sha256"]``)."""
    folder = Path(folder)
    problems = {}
    for name, expected in (meta.get("sha256") or {}).items():
        path = folder / name
        if not path.is_file():
            problems[name] = "missing"
        elif (actual := sha256_file(path)) != expected:
            problems[name] = (f"corrupt: its SHA-256 is {actual[:16]}..., but {expected[:16]}... was recorded in "
                              f"{EXPORT_META} when it was written")
    return problems


def verify_export(folder: str | Path, meta: dict) -> bool:
    """Raise one FtclipError for the first damaged file of the export; False if it records no hashes."""
    problems = check_files(folder, meta)
    if problems:
        name, problem = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FtclipError(f"export {folder}: {Path(folder) / name} is {problem}{more}; re-export the run "
                          f"(`ftclip export RUN_DIR --out {folder} --overwrite`) or restore the folder from a copy")
    return bool(meta.get("sha256"))
