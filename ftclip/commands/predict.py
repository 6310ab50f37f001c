"""``ftclip predict RUN_DIR_OR_EXPORT IMAGE|FOLDER|LIST.csv ... [--out preds.csv|.parquet] [--topk K]``: class labels."""

from __future__ import annotations

from pathlib import Path

from ftclip.commands import add_checkpoint_options
from ftclip.errors import FtclipError

OUTPUT_SUFFIXES = (".csv", ".parquet")


def register(sub) -> None:
    p = sub.add_parser("predict", help="classify images with a trained few-shot run or export",
                       description="Classify images (files, folders searched recursively, CSV lists with a 'path' "
                                   "column) with a classification run directory or export folder. Writes path, label "
                                   "and score (the softmax probability) per image; with --topk K, K rows per image, "
                                   "best first, with their rank. Unreadable images are reported by name and skipped. "
                                   "A 'label' column in a CSV list is compared with the top-1 predictions.")
    p.add_argument("source", metavar="RUN_DIR_OR_EXPORT")
    p.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER|CSV")
    p.add_argument("--out", metavar="FILE", help="write the predictions to a .csv or .parquet file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--topk", type=int, default=1, help="classes per image (default 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--workers", type=int, default=4, help="threads decoding images")
    p.add_argument("--quiet", action="store_true", help="do not print the table")
    add_checkpoint_options(p, "classify with")
    p.set_defaults(func=run)


def write_predictions(out: Path, rows: list[dict], columns: list[str]) -> None:
    """``rows`` (dicts with ``columns``) -> a .csv or .parquet file, atomically."""
    from ftclip.io import atomic_write

    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise FtclipError("--out .parquet needs pyarrow: pip install 'ftclip[parquet]' (or use .csv)") from None
        table = pa.table({c: [r[c] for r in rows] for c in columns})
        atomic_write(out, lambda tmp: pq.write_table(table, tmp))
        return
    import csv

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for r in rows:
                writer.writerow({c: (f"{r[c]:.6f}" if isinstance(r[c], float) else r[c]) for c in columns})

    atomic_write(out, write)


def run(args) -> int:
    import torch

    from ftclip.artifacts.inference import (collect_inputs, iter_image_batches, load_for_inference, path_kind,
                                            report_unreadable)
    from ftclip.io import check_output_file

    if args.topk < 1:
        raise FtclipError(f"--topk must be >= 1, got {args.topk}")
    if args.batch_size < 1:
        raise FtclipError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix.lower() not in OUTPUT_SUFFIXES:
            raise FtclipError(f"--out {out}: unknown output type '{out.suffix}'; use one of {', '.join(OUTPUT_SUFFIXES)}")
        check_output_file(out, "--out", args.overwrite)
    path_kind(args.source)
    inputs = collect_inputs(list(args.inputs))
    model = load_for_inference(args.source, device=args.device, stage=args.stage, checkpoint=args.checkpoint)
    model.task.require_output("predict", "predict")
    info = model.meta.get("task_info") or model.meta
    classnames = list(info.get("classnames", []))
    if not classnames:
        raise FtclipError(f"{args.source} records no class names (task_info.classnames); re-export the run")
    bad: list[tuple[Path, str]] = []
    best: dict[Path, list[tuple[str, float]]] = {}
    for batch_paths, images in iter_image_batches(inputs.paths, model.preprocess, args.batch_size,
                                                  lambda path, reason: bad.append((path, reason)), args.workers):
        probs = torch.softmax(model.predict(images).float(), dim=-1)
        probs, index = probs.topk(min(args.topk, probs.shape[-1]), dim=-1)
        for path, p_row, i_row in zip(batch_paths, probs.cpu().tolist(), index.cpu().tolist()):
            best[path] = [(classnames[i], float(p)) for p, i in zip(p_row, i_row)]
    report_unreadable(bad, len(best), len(inputs.paths), "classified")
    truth = inputs.column("label")
    rows = [{"path": str(p), "rank": rank, "label": label, "score": score,
             **({"true_label": truth.get(p, "")} if truth else {})}
            for p in inputs.paths if p in best for rank, (label, score) in enumerate(best[p], start=1)]
    columns = ["path"] + (["rank"] if args.topk > 1 else []) + ["label", "score"] + (["true_label"] if truth else [])
    if not args.quiet:
        width = max([len("path")] + [len(r["path"]) for r in rows])
        print(f"{'path':<{width}}  " + ("rank  " if args.topk > 1 else "") + "score   label")
        for r in rows:
            print(f"{r['path']:<{width}}  " + (f"{r['rank']:>4}  " if args.topk > 1 else "") + f"{r['score']:.4f}  {r['label']}")
    print(f"classified {len(best)} image(s) with {model.source} {args.source}"
          + (f"; skipped {len(bad)} unreadable" if bad else ""))
    if truth:
        known = [(best[p][0][0], truth[p]) for p in best if truth.get(p)]
        if known:
            hits = sum(pred == want for pred, want in known)
            print(f"against the CSV's label column: top-1 accuracy {hits / len(known):.4f} ({hits}/{len(known)})")
    if out is not None:
        write_predictions(out, rows, columns)
        print(f"wrote {out}")
    return 0
