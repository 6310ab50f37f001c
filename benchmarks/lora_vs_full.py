"""Full fine-tuning vs LoRA: speed, peak memory and trainable parameters of one training step.

    python benchmarks/lora_vs_full.py [--model ftclip-tiny-vit] [--device cpu|cuda] [--batch 64 256]
        [--image-size 256 128] [--precision 32|bf16] [--steps N] [--warmup N] [--rank 16]
        [--out benchmarks/out/lora_vs_full.json]

The step is CLIP-ReID stage 2 reduced to its cost-bearing part: the image tower forward via
``reid_features`` (ftclip/tasks/reid/features.py) on random images (random-init weights), a bias-free linear ID
classifier on the projected feature, cross-entropy, backward, Adam. ``full`` trains the
``image`` group (the whole image tower) + classifier; ``lora`` trains ``image.lora`` (LoRA on
q/k/v/out of every image block, r = ``--rank``, alpha = r, dropout ``--dropout``) + classifier.

Each (method, batch) runs in a fresh Python process so that memory figures do not mix:

* cuda: ``torch.cuda.max_memory_allocated`` over the whole run (weights, optimizer state,
  activations), plus the allocation before the first step (``static``);
* cpu: peak resident set size (``resource.getrusage(...).ru_maxrss``) minus the resident set
  size right after the model, classifier and inputs were built (``/proc/self/statm``): the
  memory the training steps added (gradients, Adam state, activations). It is taken in a second
  fresh process (1 warm-up + 1 step) run with ``MALLOC_MMAP_THRESHOLD_=65536``, so that glibc
  hands freed tensors back to the OS and RSS follows live memory; the timing run's own figure
  (default malloc, which keeps and fragments freed memory) is kept as
  ``peak_rss_default_malloc_mib``.

Both also report ``saved_activations_mib``: the bytes autograd saves for the backward of one
forward (unique storages, parameters excluded, measured with ``saved_tensors_hooks``), and
``grad_and_adam_mib``: 3 x the trainable parameters' bytes (gradient, Adam's two moments).
These do not depend on the allocator, so they compare the methods where RSS is noisy.

images/s is measured over ``--steps`` steps after ``--warmup`` untimed ones (cuda: synchronized).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import device_name

REPO = Path(__file__).resolve().parents[1]
METHODS = ("full", "lora")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ftclip-tiny-vit", help="open_clip model name (random init)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--image-size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--precision", default="32", choices=["32", "bf16"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank)")
    parser.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout (ftclip's default 0.1)")
    parser.add_argument("--num-ids", type=int, default=751, help="classifier classes (Market-1501 train: 751)")
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "lora_vs_full.json")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    return args




def current_rss() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def run_one(args: argparse.Namespace, method: str, batch: int) -> dict[str, Any]:
    """One (method, batch) measurement, in this (fresh) process."""
    from omegaconf import OmegaConf

    from ftclip.backbone import Backbone
    from ftclip.tasks.reid.features import reid_features
    from ftclip.config import LoraConfig, ModelConfig
    from ftclip.stages import count_parameters, freeze_for_stage
    from ftclip.strategies.lora import apply_lora

    torch.manual_seed(0)
    device = torch.device(args.device)
    logging.disable(logging.WARNING)  # "no pretrained weights": random init on purpose
    backbone = Backbone.from_config(OmegaConf.structured(ModelConfig(name=args.model, image_size=args.image_size)))
    logging.disable(logging.NOTSET)
    if method == "lora":
        lora = LoraConfig(enabled=True, encoders=["image"], targets=["attn"], r=args.rank, alpha=float(args.rank),
                          dropout=args.dropout)
        apply_lora(backbone, OmegaConf.structured(lora))
    backbone.to(device)
    head = torch.nn.Linear(backbone.embed_dim, args.num_ids, bias=False, device=device)
    groups = backbone.parameter_groups()
    groups["head"] = list(head.named_parameters(prefix="head"))
    trainable = freeze_for_stage(groups, ["image" if method == "full" else "image.lora", "head"], method)
    trainable_count, total_count = count_parameters(groups)
    optimizer = torch.optim.Adam([p for _, p in trainable], lr=args.lr, fused=device.type == "cuda" or None)
    backbone.train()
    images = torch.randn(batch, 3, *args.image_size, device=device)
    labels = torch.randint(0, args.num_ids, (batch,), device=device)
    use_bf16 = args.precision == "bf16"

    def forward() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = head(reid_features(backbone, images).proj)
        return torch.nn.functional.cross_entropy(logits.float(), labels)

    def step() -> None:
        forward().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        static = torch.cuda.memory_allocated()
    else:
        static = current_rss()
    try:
        for _ in range(args.warmup):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        elapsed = time.perf_counter() - start
    except torch.cuda.OutOfMemoryError:
        return {"method": method, "batch": batch, "error": "out of memory"}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        memory = {"peak_mib": peak / 2**20, "static_mib": static / 2**20}
    else:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        memory = {"peak_mib": (peak_rss - static) / 2**20, "baseline_rss_mib": static / 2**20}
    memory["saved_activations_mib"] = saved_activation_bytes(forward, backbone, head) / 2**20
    trainable_bytes = sum(p.numel() * p.element_size() for _, p in trainable)
    memory["grad_and_adam_mib"] = 3 * trainable_bytes / 2**20  # gradient + exp_avg + exp_avg_sq
    return {
        "method": method,
        "batch": batch,
        "images_per_s": batch * args.steps / elapsed,
        "step_s": elapsed / args.steps,
        "trainable_params": trainable_count,
        "total_params": total_count,
        **memory,
    }


def saved_activation_bytes(forward, *modules: torch.nn.Module) -> int:
    """Bytes autograd keeps for the backward of one forward (unique storages, parameters excluded).

    Allocator- and device-independent, so it compares the methods where RSS cannot (CPU).
    """
    params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = forward()
    del loss
    return sum(storages.values())


def run_child(cmd: list[str], env: dict[str, str], method: str, batch: int) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"method": method, "batch": batch, "error": tail}
    return json.loads(lines[-1][len("RESULT "):])


def child_command(args: argparse.Namespace, method: str, batch: int) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()), "--model", args.model, "--device", args.device,
        "--image-size", *map(str, args.image_size), "--precision", args.precision, "--steps", str(args.steps),
        "--warmup", str(args.warmup), "--rank", str(args.rank), "--dropout", str(args.dropout),
        "--num-ids", str(args.num_ids), "--lr", str(args.lr), "--child", method, str(batch),
    ]


def human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        method, batch = args.child[0], int(args.child[1])
        print("RESULT " + json.dumps(run_one(args, method, batch)), flush=True)
        return 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    results: list[dict[str, Any]] = []
    for batch in args.batch:
        for method in METHODS:
            result = run_child(child_command(args, method, batch), env, method, batch)
            if args.device == "cpu" and "error" not in result:
                # Memory pass: glibc returns every block >= 64 KiB to the OS on free, so the peak RSS
                # follows the live tensors instead of the allocator's reuse pattern.
                memory_args = argparse.Namespace(**{**vars(args), "steps": 1, "warmup": 1})
                memory_env = {**env, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
                memory = run_child(child_command(memory_args, method, batch), memory_env, method, batch)
                result["peak_rss_default_malloc_mib"] = result["peak_mib"]
                result["peak_mib"] = memory.get("peak_mib", float("nan"))
            results.append(result)
            print(f"  done: {method} batch {batch}", file=sys.stderr, flush=True)

    memory_metric = (
        "torch.cuda.max_memory_allocated over the run (MiB)" if args.device == "cuda"
        else "peak RSS (ru_maxrss) minus RSS after building model+inputs, fresh process, 2 steps, "
             "MALLOC_MMAP_THRESHOLD_=65536 (MiB)"
    )
    report = {
        "benchmark": "lora_vs_full",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/lora_vs_full.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": device_name(args.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "image_size": args.image_size,
        "precision": args.precision,
        "steps": args.steps,
        "warmup": args.warmup,
        "load_average_1m_at_end": os.getloadavg()[0],
        "lora": {"r": args.rank, "alpha": args.rank, "dropout": args.dropout, "targets": ["attn"], "blocks": "all",
                 "encoders": ["image"]},
        "memory_metric": memory_metric,
        "results": results,
    }
    print(f"{args.model} {args.image_size[0]}x{args.image_size[1]} {args.precision} on {report['device']}, "
          f"torch {torch.__version__}; memory = {memory_metric}")
    header = (f"{'method':<6} {'batch':>5} {'images/s':>10} {'step s':>8} {'peak MiB':>9} {'saved act MiB':>13} "
              f"{'grad+Adam MiB':>13} {'trainable':>18}")
    print(header)
    print("-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['method']:<6} {r['batch']:>5}  error: {r['error']}")
            continue
        share = f"{human(r['trainable_params'])} ({100 * r['trainable_params'] / r['total_params']:.2f}%)"
        print(f"{r['method']:<6} {r['batch']:>5} {r['images_per_s']:>10.1f} {r['step_s']:>8.3f} "
              f"{r['peak_mib']:>9.1f} {r['saved_activations_mib']:>13.1f} {r['grad_and_adam_mib']:>13.1f} "
              f"{share:>18}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
