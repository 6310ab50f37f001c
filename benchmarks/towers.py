"""Stage-2 re-ID throughput and memory of image towers: ViT-B/16, RN50, MobileCLIP-S1/S2 (or any open_clip names).

    python benchmarks/towers.py [--models ViT-B-16 RN50 MobileCLIP-S1 MobileCLIP-S2] [--device cuda|cpu]
        [--batch 64] [--image-size 256 128] [--methods full lora] [--steps 10] [--warmup 3] [--repeats 3]
        [--num-ids 751] [--threads N] [--cpu-clock] [--out benchmarks/out/towers.json]

Random-init full-size models (no weights are needed for speed), random images already on the device.
Per model: ftclip's own :class:`~ftclip.tasks.reid.module.ReidModule` stage-2 training step (the
tower's CLIP-ReID features -- ResNet: last stride 1 and the 16x8 attention-pool grid; FastViT: its
pooled pre-logits -- BNNecks, ID + triplet + i2t losses, backward, Adam; bf16 autocast on CUDA, fp32
on CPU; the same step ``benchmarks/train_throughput.py`` times as ``ftclip``), and the evaluation
feature ``module.embed`` without gradients (FastViT also in its re-parameterised deployment form).
Each measurement is the median of ``--repeats`` interleaved timings; ratios are against the first
model (ViT-B/16 by default). Peak memory is ``torch.cuda.max_memory_allocated`` (CUDA only).

Other scripts (``benchmarks/gpu_suite.py``) call :func:`run_towers` directly.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from common import device_name, sync
from train_throughput import REPO, ftclip_step_fn

DEFAULT_MODELS = ("ViT-B-16", "RN50", "MobileCLIP-S1", "MobileCLIP-S2")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="open_clip names (random init)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=64, help="stage-2 images per step (P identities x 4)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--methods", nargs="+", default=["full"], choices=["full", "lora"])
    parser.add_argument("--num-ids", type=int, default=751, help="identities (Market-1501 train: 751)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per model")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--cpu-clock", action="store_true",
                        help="time with this process's CPU time (time.process_time), not wall time: on a CPU shared "
                             "with other jobs, with --threads 1, the figures do not depend on their load")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "towers.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    if args.batch < 8 or args.batch % 4:
        parser.error("--batch must be a multiple of 4 (P identities x 4 images), at least 8")
    return args


def _settings(models, device, batch, image_size, methods, num_ids, steps, warmup, repeats,
              cpu_clock) -> argparse.Namespace:
    """What train_throughput's ftclip step reads, and the timing settings."""
    if cpu_clock and torch.device(device).type != "cpu":
        raise ValueError("cpu_clock times CPU work: use it with device cpu")
    return argparse.Namespace(models=list(models), device=str(device), batch=int(batch), image_size=list(image_size),
                              methods=list(methods), num_ids=int(num_ids), steps=int(steps), warmup=int(warmup),
                              repeats=int(repeats), cpu_clock=bool(cpu_clock), compile=False, model=None)


def _embed_fn(module, batch: int, image_size, device: torch.device, fold: bool):
    """``module.embed`` on a random batch, no gradients (``fold``: the FastViT tower re-parameterised)."""
    from ftclip.towers import reparameterized

    images = torch.randn(batch, 3, *image_size, device=device)
    bf16 = device.type == "cuda"
    if fold:
        module.backbone.model = reparameterized(module.backbone.model)
    module.eval()

    def step() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            module.embed(images)

    return step


def _time_steps(step, settings, device: torch.device) -> float:
    clock = time.process_time if settings.cpu_clock else time.perf_counter
    for _ in range(settings.warmup):
        step()
    sync(device)
    start = clock()
    for _ in range(settings.steps):
        step()
    sync(device)
    return (clock() - start) / settings.steps


def _measure(fn_builder, settings, device: torch.device) -> dict[str, Any]:
    seconds, peaks = [], []
    step = None
    for _ in range(settings.repeats):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step = step or fn_builder()
        seconds.append(_time_steps(step, settings, device))
        if device.type == "cuda":
            peaks.append(torch.cuda.max_memory_allocated(device) / 2**30)
    median = statistics.median(seconds)
    return {"seconds_per_step": median, "images_per_second": settings.batch / median, "seconds": seconds,
            "peak_memory_gib": max(peaks) if peaks else None}


def run_towers(models=DEFAULT_MODELS, device: str = "cuda", batch: int = 64, image_size=(256, 128),
               methods=("full",), num_ids: int = 751, steps: int = 10, warmup: int = 3,
               repeats: int = 3, cpu_clock: bool = False) -> dict[str, Any]:
    """Measure every model in ``models`` (stage-2 train step per method, evaluation embed); returns
    ``{"device", "settings", "results": [...], "ratios": {...}}`` (ratios against ``models[0]``).
    ``cpu_clock``: time with the process's CPU time (device cpu; see ``--cpu-clock``)."""
    dev = torch.device(device)
    settings = _settings(models, dev, batch, image_size, methods, num_ids, steps, warmup, repeats, cpu_clock)
    results = []
    for name in models:
        settings.model = name
        for method in methods:
            holder: dict[str, Any] = {}

            def build_train(method=method):
                step, module = ftclip_step_fn(settings, method, 2, batch, dev)
                holder["module"] = module
                return step

            row = {"model": name, "measure": f"stage 2 train ({method})", **_measure(build_train, settings, dev)}
            module = holder["module"]
            row["image_tower"] = module.backbone.image_kind
            row["image_params_m"] = sum(p.numel() for n, p in module.backbone.model.named_parameters()
                                        if n.startswith("visual.")) / 1e6
            row["trainable_params_m"] = sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6
            results.append(row)
            print(_line(row), flush=True)
        folds = [False] + ([True] if _foldable(name) else [])
        for fold in folds:
            def build_embed(fold=fold):
                _, module = ftclip_step_fn(settings, "full", 2, batch, dev)
                return _embed_fn(module, batch, image_size, dev, fold)

            row = {"model": name, "measure": "embed" + (" (re-parameterised)" if fold else ""),
                   **_measure(build_embed, settings, dev)}
            results.append(row)
            print(_line(row), flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"device": device_name(dev), "settings": {k: v for k, v in vars(settings).items() if k != "model"},
            "results": results, "ratios": _ratios(results, models[0])}


def _foldable(name: str) -> bool:
    import open_clip

    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    return "fastvit" in str(vision.get("timm_model_name", ""))


def _ratios(results: list[dict], reference: str) -> dict[str, dict[str, float]]:
    """Per measure: each model's images/s and peak memory relative to ``reference``'s."""
    out: dict[str, dict[str, float]] = {}
    base = {r["measure"]: r for r in results if r["model"] == reference}
    for r in results:
        ref = base.get(r["measure"]) or base.get(r["measure"].replace(" (re-parameterised)", ""))
        if ref is None:
            continue
        entry = {"throughput_vs_" + reference: r["images_per_second"] / ref["images_per_second"]}
        if r["peak_memory_gib"] and ref["peak_memory_gib"]:
            entry["memory_vs_" + reference] = r["peak_memory_gib"] / ref["peak_memory_gib"]
        out[f"{r['model']} / {r['measure']}"] = entry
    return out


def _line(row: dict) -> str:
    mem = f", peak {row['peak_memory_gib']:.2f} GiB" if row.get("peak_memory_gib") else ""
    return f"{row['model']:>16} {row['measure']:<28} {row['images_per_second']:9.1f} images/s{mem}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    report = run_towers(args.models, args.device, args.batch, args.image_size, args.methods, args.num_ids,
                        args.steps, args.warmup, args.repeats, args.cpu_clock)
    report.update({"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
                   "date": dt.datetime.now().isoformat(timespec="seconds"), "wall_seconds": time.time() - started,
                   "torch": torch.__version__})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for key, ratio in report["ratios"].items():
        print(f"{key:>58}: " + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
