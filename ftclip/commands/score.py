"""``ftclip score RUN_DIR_OR_EXPORT IMAGE|FOLDER|LIST.csv ... [--out scores.csv]``: image quality scores."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ftclip.commands import add_checkpoint_options
from ftclip.errors import FtclipError


def register(sub) -> None:
    p = sub.add_parser("score", help="score image quality with a trained IQA run or export",
                       description="Score images (files, folders searched recursively, CSV lists with a 'path' "
                                   "column) with an IQA run directory or export folder. Unreadable images are "
                                   "reported by name and skipped.")
    p.add_argument("source", metavar="RUN_DIR_OR_EXPORT")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER|CSV")
    p.add_argument("--out", metavar="CSV", help="write path,score,logit[,mos] rows to this CSV file (score at full "
                                                "float64 precision; logit: its log-odds, which keeps apart scores "
                                                "that print as 1.0000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    add_checkpoint_options(p, "score with")
    p.set_defaults(func=run)


def run(args) -> int:
    from ftclip.artifacts.inference import (collect_inputs, iter_image_batches, load_for_inference, path_kind,
                                            report_unreadable)
    from ftclip.io import atomic_write, check_output_file
    from ftclip.tasks.iqa.metrics import evaluate_iqa

    if args.batch_size < 1:
        raise FtclipError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out:
        check_output_file(args.out, "--out", args.overwrite)
    path_kind(args.source)
    inputs = collect_inputs(list(args.inputs))
    model = load_for_inference(args.source, device=args.device, stage=args.stage, checkpoint=args.checkpoint)
    model.task.require_output("score", "score")
    bad: list[tuple[Path, str]] = []
    scores: dict[Path, float] = {}
    for batch_paths, images in iter_image_batches(inputs.paths, model.preprocess, args.batch_size,
                                                  lambda path, reason: bad.append((path, reason))):
        for path, value in zip(batch_paths, model.score(images).cpu().tolist()):
            scores[path] = float(value)
    report_unreadable(bad, len(scores), len(inputs.paths), "scored")
    mos_column = inputs.column("mos")
    rows = [(str(p), scores[p], _number(mos_column.get(p))) for p in inputs.paths if p in scores]
    with_mos = any(m is not None for _, _, m in rows)
    if not args.quiet:
        width = max([len("path")] + [len(p) for p, _, _ in rows])
        print(f"{'path':<{width}}  score" + ("     mos" if with_mos else ""))
        for p, s, m in rows:
            print(f"{p:<{width}}  {s:.4f}" + (f"  {m:g}" if with_mos and m is not None else ""))
    print(f"scored {len(rows)} image(s) with {model.source} {args.source}" + (f"; skipped {len(bad)} unreadable" if bad else ""))
    if with_mos and sum(m is not None for _, _, m in rows) >= 2:
        pairs = [(s, m) for _, s, m in rows if m is not None]
        result = evaluate_iqa([s for s, _ in pairs], [m for _, m in pairs])
        print(f"against the CSV's mos column: SRCC {result['srcc']:.4f}  PLCC {result['plcc']:.4f} (no logistic fit)")
    if args.out:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(["path", "score", "logit"] + (["mos"] if with_mos else []))
                for p, s, m in rows:
                    writer.writerow([p, repr(s), f"{_log_odds(s):.6g}"] + ([("" if m is None else m)] if with_mos else []))

        atomic_write(args.out, write)
        print(f"wrote {args.out}")
    return 0


def _log_odds(score: float) -> float:
    """log(s / (1 - s)) of a float64 score (+-inf only where float64 itself saturates, |logit| > ~37)."""
    if score <= 0.0:
        return -math.inf
    if score >= 1.0:
        return math.inf
    return math.log(score) - math.log1p(-score)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None
