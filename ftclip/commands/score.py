"""``ftclip score RUN_DIR_OR_EXPORT IMAGE|FOLDER|LIST.csv ... [--out scores.csv]``: image quality scores."""

from __future__ import annotations

import csv
import sys

from ftclip.errors import FtclipError


def register(sub) -> None:
    p = sub.add_parser("score", help="score image quality with a trained IQA run or export",
                       description="Score images (files, folders searched recursively, CSV lists with a 'path' "
                                   "column) with an IQA run directory or export folder. Unreadable images are "
                                   "reported by name and skipped.")
    p.add_argument("source", metavar="RUN_DIR_OR_EXPORT")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER|CSV")
    p.add_argument("--out", metavar="CSV", help="write path,score[,mos] rows to this CSV file")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ftclip.io import atomic_write
    from ftclip.tasks.iqa.scoring import collect_inputs, load_scorer, score_paths

    if args.batch_size < 1:
        raise FtclipError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise FtclipError(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    scorer = load_scorer(args.source).to(args.device)
    inputs = collect_inputs(list(args.inputs))
    scores, bad = score_paths(scorer, inputs.paths, batch_size=args.batch_size, device=args.device)
    for path, reason in bad:
        print(f"skipped unreadable image {path}: {reason}", file=sys.stderr)
    rows = [(p, scores[p], inputs.mos.get(p)) for p in inputs.paths if p in scores]
    with_mos = any(m is not None for _, _, m in rows)
    if not args.quiet:
        width = max([len("path")] + [len(p) for p, _, _ in rows])
        print(f"{'path':<{width}}  score" + ("     mos" if with_mos else ""))
        for p, s, m in rows:
            print(f"{p:<{width}}  {s:.4f}" + (f"  {m:g}" if with_mos and m is not None else ""))
    print(f"scored {len(rows)} image(s) with {scorer.source}" + (f"; skipped {len(bad)} unreadable" if bad else ""))
    if with_mos and sum(m is not None for _, _, m in rows) >= 2:
        from ftclip.metrics.iqa import evaluate_iqa

        pairs = [(s, m) for _, s, m in rows if m is not None]
        result = evaluate_iqa([s for s, _ in pairs], [m for _, m in pairs])
        print(f"against the CSV's mos column: SRCC {result['srcc']:.4f}  PLCC {result['plcc']:.4f} (no logistic fit)")
    if args.out:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(["path", "score"] + (["mos"] if with_mos else []))
                for p, s, m in rows:
                    writer.writerow([p, f"{s:.6f}"] + ([("" if m is None else m)] if with_mos else []))

        atomic_write(args.out, write)
        print(f"wrote {args.out}")
    return 0 if rows else 2
