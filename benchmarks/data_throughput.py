"""Input throughput of stage 2: JPEG files + albumentations in DataLoader workers vs the decoded uint8 cache
with batched augmentation on the device (``data.device_cache=true``).

    python benchmarks/data_throughput.py [--device cuda|cpu] [--workers 0 2 4 8 16] [--sizes 128x64 256x128]
        [--ids 200] [--batch 64] [--epochs 2] [--root /tmp/ftclip_data_bench] [--out benchmarks/out/data_throughput.json]

Writes ftclip's synthetic Market-1501-layout set (``write_synthetic_reid``) at each size once under
``--root`` (reused on later runs), then measures images/s of complete P x K training batches:

* ``jpeg``: ftclip's own training loader for ``data.device_cache=false`` -- ``ReidImages`` (decode
  JPEG with PIL, then ``reid_train_transform``: resize, flip, pad + crop, normalise, erasing) under the
  ``PKBatchSampler``, ``N`` workers, persistent, pinned memory on CUDA; the batch copied to the device;
* ``cache``: the same sampler's batches gathered from the uint8 cache on ``--device`` and augmented by
  ``ReidDeviceAugment`` there (what the module does in ``on_after_batch_transfer``). The one-off
  cost of building the cache (decode + resize all training images, threads) is reported separately.

Each measurement skips the first batch (worker start-up) and times ``--epochs`` epochs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import device_name, sync

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
STD = (0.26862954, 0.26130258, 0.27577711)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8, 16])
    parser.add_argument("--sizes", nargs="+", default=["128x64", "256x128"], help="HxW of the JPEGs and of training")
    parser.add_argument("--ids", type=int, default=200, help="training identities of the synthetic set")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads of the main process (the cache path runs there)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/ftclip_data_bench"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "data_throughput.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    if args.workers and max(args.workers) > (os.cpu_count() or 1):
        print(f"note: more workers than the {os.cpu_count()} logical CPUs are skipped", file=sys.stderr)
        args.workers = [w for w in args.workers if w <= (os.cpu_count() or 1)] or [0]
    try:
        args.sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    except ValueError:
        parser.error("--sizes takes HxW values such as 256x128")
    return args






def dataset(root: Path, size: tuple[int, int], ids: int):
    from ftclip.tasks.reid.formats import load_reid_dataset
    from ftclip.tasks.reid.synthetic import write_synthetic_reid

    folder = root / f"market_{size[0]}x{size[1]}_{ids}ids"
    if not folder.exists():
        print(f"writing the synthetic set to {folder}", file=sys.stderr, flush=True)
        write_synthetic_reid(folder, num_ids=ids, num_query_ids=2, size=size, seed=0)
    return load_reid_dataset("market1501", folder)


def sampler(ds, batch: int):
    from ftclip.data.samplers import PKBatchSampler

    return PKBatchSampler([s.pid for s in ds.train], batch, 4, seed=0)


def jpeg_path(ds, size, batch: int, workers: int, epochs: int, device: torch.device) -> float:
    from torch.utils.data import DataLoader

    from ftclip.data.transforms import reid_train_transform
    from ftclip.tasks.reid.datamodule import ReidImages

    transform = reid_train_transform(size, MEAN, STD)
    batches = sampler(ds, batch)
    loader = DataLoader(ReidImages(ds.train, transform), batch_sampler=batches, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    images = 0
    start = None
    for epoch in range(epochs + 1):
        batches.set_epoch(epoch)
        for i, b in enumerate(loader):
            b["image"].to(device, non_blocking=True)
            if start is None:  # skip worker start-up and the first batch
                sync(device)
                start = time.perf_counter()
                continue
            images += len(b["index"])
    sync(device)
    return images / (time.perf_counter() - start)


def cache_path(ds, size, batch: int, epochs: int, device: torch.device) -> tuple[float, float, int]:
    from ftclip.tasks.reid.gpu_augment import ReidDeviceAugment, build_uint8_cache

    start = time.perf_counter()
    cache = build_uint8_cache([s.path for s in ds.train], size, workers=len(os.sched_getaffinity(0)))
    cache = cache.to(device)
    sync(device)
    build_s = time.perf_counter() - start
    augment = ReidDeviceAugment(size, MEAN, STD)
    batches = sampler(ds, batch)
    images, start = 0, None
    for epoch in range(epochs + 1):
        batches.set_epoch(epoch)
        for b in batches:
            index = torch.tensor([i for i, _ in b], device=device)
            out = augment(cache[index], generator=augment.generator(device, b[0][1]))
            if start is None:
                sync(device)
                start = time.perf_counter()
                continue
            images += out.shape[0]
    sync(device)
    return images / (time.perf_counter() - start), build_s, cache.numel()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        ds = dataset(args.root, size, args.ids)
        n = len(ds.train)
        for workers in args.workers:
            rate = jpeg_path(ds, size, args.batch, workers, args.epochs, device)
            rows.append({"path": "jpeg", "size": list(size), "workers": workers, "train_images": n,
                         "images_per_s": rate})
            print(f"  done: jpeg {size} {workers} workers: {rate:.0f} img/s", file=sys.stderr, flush=True)
        rate, build_s, nbytes = cache_path(ds, size, args.batch, args.epochs, device)
        rows.append({"path": "cache", "size": list(size), "workers": 0, "train_images": n, "images_per_s": rate,
                     "cache_build_s": build_s, "cache_mib": nbytes / 2**20,
                     "market1501_cache_gib": 12936 * 3 * size[0] * size[1] / 2**30})
        print(f"  done: cache {size}: {rate:.0f} img/s", file=sys.stderr, flush=True)
    report = {
        "benchmark": "data_throughput",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/data_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": device_name(device),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch": args.batch,
        "epochs": args.epochs,
        "load_average_1m_at_end": os.getloadavg()[0],
        "results": rows,
    }
    print(f"stage-2 input on {report['device']}, {report['torch_threads']} torch threads in the main process, "
          f"torch {torch.__version__}, batch {args.batch}")
    header = f"{'path':<6} {'size':>8} {'workers':>8} {'images/s':>10}  notes"
    print(header)
    print("-" * len(header))
    for r in rows:
        size = f"{r['size'][0]}x{r['size'][1]}"
        note = ""
        if r["path"] == "cache":
            note = (f"cache of {r['train_images']} images {r['cache_mib']:.1f} MiB built in {r['cache_build_s']:.1f} s; "
                    f"Market-1501 would take {r['market1501_cache_gib']:.2f} GiB")
        print(f"{r['path']:<6} {size:>8} {r['workers']:>8} {r['images_per_s']:>10.1f}  {note}")
    jpeg_best = {tuple(r["size"]): max(x["images_per_s"] for x in rows if x["path"] == "jpeg" and x["size"] == r["size"])
                 for r in rows if r["path"] == "cache"}
    for r in rows:
        if r["path"] == "cache":
            r["vs_best_jpeg"] = r["images_per_s"] / jpeg_best[tuple(r["size"])]
            print(f"cache vs best jpeg at {r['size'][0]}x{r['size'][1]}: {r['vs_best_jpeg']:.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
