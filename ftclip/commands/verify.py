"""``ftclip verify RUN_DIR_OR_EXPORT ...``: every checkpoint / export file against the SHA-256 recorded with it."""

from __future__ import annotations

from ftclip.errors import FtclipError


def register(sub) -> None:
    p = sub.add_parser(
        "verify", help="check a run's checkpoints or an export's files against the hashes recorded with them",
        description="Check a run directory (its config, state and every checkpoint: the SHA-256 recorded in "
                    "state.json when it was written, or the zip CRC-32s of runs made before hashes were recorded; "
                    "also its export/ folder) or an export folder (every file against the SHA-256 in "
                    "ftclip_export.json). Exit status 2 if anything is damaged or missing. See docs/resilience.md.")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR_OR_EXPORT")
    p.set_defaults(func=run)


def export_rows(folder) -> list[tuple[bool, str, str]]:
    """``(ok, file, what)`` for every file of export ``folder``."""
    from ftclip.artifacts.layout import EXPORT_META
    from ftclip.artifacts.manifest import check_files, files_in, read_manifest, written_files

    try:
        meta = read_manifest(folder)
    except FtclipError as exc:
        return [(False, EXPORT_META, str(exc))]
    hashes = meta.get("sha256") or {}
    problems = check_files(folder, meta)
    rows = [(True, EXPORT_META, "the manifest")]
    rows += [(name not in problems, name, problems.get(name, "SHA-256 as recorded")) for name in sorted(hashes)]
    if not hashes:
        rows.append((True, "*", "no hashes recorded (older ftclip): the files cannot be checked"))
    listed = written_files(meta)
    rows += [(True, name, "not written by the export (left alone)") for name in files_in(folder) if name not in listed]
    return rows


def run(args) -> int:
    from pathlib import Path

    from ftclip.artifacts.inference import path_kind
    from ftclip.artifacts.manifest import is_export
    from ftclip.runs import RunDir, check_run

    failures: list[str] = []
    for item in args.paths:
        path = Path(item)
        kind = path_kind(path)
        rows = [(kind, row) for row in (check_run(RunDir(path)) if kind == "run" else export_rows(path))]
        if kind == "run" and is_export(path / "export"):
            rows += [("export", (ok, f"export/{name}", what)) for ok, name, what in export_rows(path / "export")]
        print(f"{kind} {path}")
        for _, (ok, name, what) in rows:
            print(f"  {'ok' if ok else 'FAILED':<7} {name}: {what}")
            if not ok:
                failures.append(what if str(path) in what else f"{path / name}: {what}")
    if failures:
        raise FtclipError(f"verify failed: {len(failures)} problem(s); first: {failures[0]}")
    print(f"verify: ok ({len(args.paths)} checked)")
    return 0
