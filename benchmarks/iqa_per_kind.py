"""How does a trained IQA run rank each distortion kind, and do its scores saturate?

    python benchmarks/iqa_per_kind.py RUN_DIR_OR_EXPORT SET.csv [SET.csv ...] [--out benchmarks/out/iqa_per_kind.json]

For each graded csv set (``path,mos,kind,level,source`` as ``write_synthetic_iqa`` writes: the
demo's ``eval.csv`` and ``transfer.csv``), scores every image through the inference path
(``load_for_inference``: the export's preprocessing, float64 scores) and reports SRCC against MOS
over the whole set and per kind (each kind's images with the clean sources), computed from the
scores' log-odds, plus how many scores float32 would round to exactly 0 or 1 and the log-odds'
spread. The numbers of docs/iqa_method.md section 5 come from it:

    ftclip fit recipes/demo/iqa_synthetic.yaml seed=0 run.dir=runs/iqa_s0 data.synthetic_dir=runs/_data/iqa_s0
    python benchmarks/iqa_per_kind.py runs/iqa_s0 runs/_data/iqa_s0/eval.csv runs/_data/iqa_s0/transfer.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import torch

from ftclip.artifacts.inference import load_for_inference
from ftclip.tasks.iqa.metrics import srcc


def _log_odds(score: float) -> float:
    return math.log(score) - math.log1p(-score) if 0.0 < score < 1.0 else math.copysign(math.inf, score - 0.5)


def evaluate_set(model, csv_path: Path, batch_size: int = 64) -> dict:
    rows = list(csv.DictReader(open(csv_path, newline="", encoding="utf-8")))
    scores: list[float] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images = torch.stack([model.preprocess(csv_path.parent / r["path"]) for r in chunk])
        scores += model.score(images).double().cpu().tolist()
    logits = [_log_odds(s) for s in scores]
    mos = [float(r["mos"]) for r in rows]
    kinds = sorted({r["kind"] for r in rows} - {"none"})
    per_kind = {}
    for kind in kinds:
        idx = [i for i, r in enumerate(rows) if r["kind"] in (kind, "none")]
        per_kind[kind] = srcc([logits[i] for i in idx], [mos[i] for i in idx])
    z = torch.tensor(logits, dtype=torch.float64)
    saturated = int(torch.isin(torch.sigmoid(z.float()), torch.tensor([0.0, 1.0])).sum())
    return {"images": len(rows), "srcc": srcc(logits, mos), "per_kind": per_kind,
            "float32_saturated": saturated, "logit_std": float(z.std()), "distinct_scores": len(set(scores))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="an IQA run directory or export folder")
    parser.add_argument("sets", nargs="+", type=Path, help="graded csv sets (path,mos,kind,level,source)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    model = load_for_inference(args.source, device="cpu")
    report = {str(p): evaluate_set(model, p) for p in args.sets}
    for name, r in report.items():
        kinds = "  ".join(f"{k} {v:+.2f}" for k, v in r["per_kind"].items())
        print(f"{name}: SRCC {r['srcc']:.3f} over {r['images']} images ({r['distinct_scores']} distinct scores, "
              f"{r['float32_saturated']} at 0/1 in float32, log-odds std {r['logit_std']:.2f})\n  {kinds}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
