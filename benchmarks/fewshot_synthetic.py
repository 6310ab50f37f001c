"""Every few-shot method on ftclip's synthetic shapes with the demo's tiny random-init ViT: test accuracy before
(the zero-shot ``initial`` evaluation) and after, and the stage's seconds.

    python benchmarks/fewshot_synthetic.py [--methods zeroshot coop ...] [--shots 16] [--seed 0]
        [--out benchmarks/out/fewshot_synthetic.json]

Each method is one ``ftclip fit`` of ``recipes/demo/fewshot_synthetic.yaml`` (8 classes, 16 shots + 4 val per
class from 20 training images, 16 test images per class, 64 x 64, ``ftclip-tiny-vit`` random init, CPU) with its
stage replaced by the one below. Closed-form methods, Tip-Adapter-F and CoOp run with their reference settings
(``recipes/fewshot_*.yaml``); the gradient methods on the whole towers (CLIP-LoRA, fine-tuning, FLYP) get the
demo's learning rate and length, because a random-init model learns from scratch (their reference lrs of 2e-4,
3e-5 and 1e-5 are for pretrained CLIP and move a random model nowhere in a CPU-sized run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LORA = ["strategies.lora.enabled=true"]  # the demo's CLIP-LoRA adapters (rank 2, alpha 1, rsLoRA, q/k/v)
NO_LORA = ["strategies.lora.enabled=false"]

#: method -> (what differs from its reference here, overrides of the demo recipe's second stage)
METHODS: dict[str, tuple[str, list[str]]] = {
    "zeroshot": ("-", NO_LORA + ["stages.clip_lora.kind=zeroshot", "stages.clip_lora.train=[]"]),
    "linear_probe": ("reference", NO_LORA + ["stages.clip_lora.kind=linear_probe", "stages.clip_lora.train=[]"]),
    "lp_plus_plus": ("reference", NO_LORA + ["stages.clip_lora.kind=lp_plus_plus", "stages.clip_lora.train=[]"]),
    "tip_adapter": ("reference", NO_LORA + ["stages.clip_lora.kind=tip_adapter", "stages.clip_lora.train=[]"]),
    "tip_adapter_f": ("reference (20 epochs, batch 256)", NO_LORA + [
        "stages.clip_lora.kind=tip_adapter_f", "stages.clip_lora.train=[cache]", "stages.clip_lora.epochs=20",
        "stages.clip_lora.max_steps=-1", "stages.clip_lora.batch_size=256",
        "stages.clip_lora.optimizer={name: adamw, lr: 1.0e-3, eps: 1.0e-4, weight_decay: 0.01}"]),
    "coop": ("reference (200 epochs at 16 shots)", NO_LORA + [
        "stages.clip_lora.kind=coop", "stages.clip_lora.train=[prompts]", "stages.clip_lora.epochs=200",
        "stages.clip_lora.max_steps=-1", "strategies.zeroshot.logit_scale=null",
        "stages.clip_lora.optimizer={name: sgd, lr: 0.002, momentum: 0.9, weight_decay: 5.0e-4}",
        "stages.clip_lora.schedule={first_epoch: 0, name: dassl_cosine, warmup_epochs: 1, warmup_lr: 1.0e-5, "
        "min_lr: 0.0}"]),
    "clip_lora": ("demo: lr 2e-2, 300 steps", LORA),
    "finetune": ("demo: lr 1e-3, 300 steps", NO_LORA + [
        "stages.clip_lora.kind=finetune", "stages.clip_lora.train=[image,head]",
        "stages.clip_lora.optimizer={name: adamw, lr: 1.0e-3, weight_decay: 0.1}"]),
    "flyp": ("demo: lr 1e-3, 300 steps", NO_LORA + [
        "stages.clip_lora.kind=flyp", "stages.clip_lora.train=[image,text,logit_scale]",
        "stages.clip_lora.optimizer={name: adamw, lr: 1.0e-3, weight_decay: 0.1}"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "fewshot_synthetic.json"))
    args = parser.parse_args()

    from ftclip.cli import main as ftclip

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for method in args.methods:
            note, overrides = METHODS[method]
            run = Path(tmp) / method
            start = time.time()
            code = ftclip(["fit", str(REPO / "recipes" / "demo" / "fewshot_synthetic.yaml"), f"data.root={data}",
                           f"data.shots={args.shots}", f"seed={args.seed}", f"run.dir={run}", "wise.alpha=[]",
                           "eval.plots=false", *overrides])
            if code != 0:
                raise SystemExit(f"{method}: ftclip fit failed ({code})")
            metrics = json.loads((run / "metrics.json").read_text())
            rows.append({"method": method, "settings": note, "before": metrics["initial"]["accuracy"],
                         "after": metrics["clip_lora"]["accuracy"], "macro_f1": metrics["clip_lora"]["macro_f1"],
                         "ece": metrics["clip_lora"]["ece"], "stage_seconds": metrics["clip_lora"]["train_seconds"],
                         "run_seconds": round(time.time() - start, 1), "fit": metrics["clip_lora"].get("fit")})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"shots": args.shots, "seed": args.seed, "rows": rows}, indent=2) + "\n")
    print("| method | settings | accuracy before | after | macro-F1 | ECE | stage s | run s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['settings']} | {r['before']:.3f} | {r['after']:.3f} | {r['macro_f1']:.3f} | "
              f"{r['ece']:.3f} | {r['stage_seconds']:.1f} | {r['run_seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
