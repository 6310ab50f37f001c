"""``ftclip embed RUN_DIR_OR_EXPORT INPUTS... --out feats.npy|.parquet|.csv``."""

from __future__ import annotations

import sys
from pathlib import Path

from ftclip.commands import add_checkpoint_options
from ftclip.errors import FtclipError

OUTPUT_SUFFIXES = (".npy", ".parquet", ".csv")


def register(sub) -> None:
    p = sub.add_parser(
        "embed", help="compute image embeddings with a run or an export",
        description="Embed images (files, folders searched recursively, or CSV lists of paths with a 'path' column "
                    "or one path per line, relative to the CSV) with the adapted encoder of a run directory or an "
                    "export. Features are L2-normalised. .npy writes the array and <out stem>.paths.txt (one path "
                    "per row); .parquet writes columns path + embedding; .csv writes path, f0, f1, ... "
                    "Unreadable images are reported and skipped.")
    p.add_argument("source", help="run directory (ftclip fit) or export folder (ftclip export)")
    p.add_argument("inputs", nargs="+", help="image files, folders or .csv lists of image paths")
    p.add_argument("--out", required=True, help="output file: .npy, .parquet or .csv")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--feature", choices=("proj", "final", "final+proj"), default=None,
                   help="which feature (default: the one the task evaluates with, e.g. final+proj for re-ID)")
    p.add_argument("--workers", type=int, default=4, help="threads decoding images")
    add_checkpoint_options(p, "embed with")
    p.set_defaults(func=run)


def paths_file(out: Path) -> Path:
    """Where a .npy output's row paths go: ``feats.npy`` -> ``feats.paths.txt``."""
    return out.with_suffix(".paths.txt")


def write_embeddings(out: Path, paths: list[str], feats) -> list[Path]:
    """Write ``feats`` ([N, D] float32 numpy) with their ``paths`` atomically; returns the files written."""
    import numpy as np

    from ftclip.io import atomic_write, atomic_write_text

    suffix = out.suffix.lower()
    if suffix == ".npy":
        atomic_write(out, lambda tmp: np.save(open(tmp, "wb"), feats))
        side = paths_file(out)
        atomic_write_text(side, "".join(f"{p}\n" for p in paths))
        return [out, side]
    if suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise FtclipError("--out .parquet needs pyarrow: pip install 'ftclip[parquet]' (or use .npy / .csv)") from None
        dim = int(feats.shape[1])
        table = pa.table({"path": pa.array(paths, pa.string()),
                          "embedding": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), pa.float32()), dim)})
        atomic_write(out, lambda tmp: pq.write_table(table, tmp))
        return [out]
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path"] + [f"f{i}" for i in range(feats.shape[1])])
    for p, row in zip(paths, feats):
        writer.writerow([p] + [repr(float(v)) for v in row])
    atomic_write_text(out, buf.getvalue())
    return [out]


def run(args) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ftclip.artifacts.inference import collect_inputs, iter_image_batches, load_for_inference, path_kind
    from ftclip.io import check_output_file

    out = Path(args.out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise FtclipError(f"--out {out}: unknown output type '{out.suffix}'; use one of {', '.join(OUTPUT_SUFFIXES)}")
    if args.batch_size < 1:
        raise FtclipError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_output_file(out, "--out", args.overwrite)
    if out.suffix.lower() == ".npy":
        check_output_file(paths_file(out), "--out's path list", args.overwrite)
    path_kind(args.source)
    paths = collect_inputs(args.inputs).paths
    model = load_for_inference(args.source, device=args.device, stage=args.stage, checkpoint=args.checkpoint)
    feature = args.feature or model.feature
    model.check_feature(feature)
    print(f"embedding {len(paths)} images with {model.source} {args.source} ({model.meta.get('model_name')}, "
          f"feature {feature}, device {model.device})", file=sys.stderr, flush=True)

    bad: list[tuple[Path, str]] = []
    kept: list[str] = []
    chunks = []
    with tqdm(total=len(paths), unit="img", desc="embed", file=sys.stderr, disable=None) as bar:
        def on_bad(path, reason):
            bad.append((path, reason))
            tqdm.write(f"skipped unreadable image {path}: {reason}", file=sys.stderr)

        for batch_paths, images in iter_image_batches(paths, model.preprocess, args.batch_size, on_bad, args.workers):
            chunks.append(model.encode(images, feature).cpu())
            kept += [str(p) for p in batch_paths]
            bar.update(len(batch_paths))
        bar.update(len(bad))
    if not kept:
        raise FtclipError(f"none of the {len(paths)} images could be read (first: {bad[0][0]}: {bad[0][1]})")
    feats = torch.cat(chunks).numpy().astype(np.float32)
    written = write_embeddings(out, kept, feats)
    note = f"; skipped {len(bad)} unreadable image(s)" if bad else ""
    print(f"wrote {feats.shape[0]} x {feats.shape[1]} embeddings to {', '.join(map(str, written))}{note}")
    return 0
