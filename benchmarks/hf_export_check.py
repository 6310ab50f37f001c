"""--format hf at full size: export an open_clip model to transformers and record the fresh-process figures.

    python benchmarks/hf_export_check.py [--model ViT-B-16] [--quick-gelu] [--text-layer last|penultimate]
        [--pretrained TAG_OR_FILE] [--out benchmarks/out/hf_export_check.json]

Without ``--pretrained`` the weights are open_clip's random init (the numerics of the conversion do
not depend on training; the tests use tiny models, this checks real widths, depths and head counts).
With it, e.g. ``--model ViT-L-14 --quick-gelu --pretrained openai`` (SD 1.x's encoder) or
``--model ViT-H-14 --pretrained laion2b_s32b_b79k --text-layer penultimate`` (SD 2.x's), the stock
weights are exported. Prints the verification figures and the seconds each part took; writes JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import open_clip
import torch
from common import device_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftclip.artifacts import hf as hf_export  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--quick-gelu", action="store_true")
    parser.add_argument("--text-layer", default="last", choices=hf_export.TEXT_LAYERS)
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--out", default="benchmarks/out/hf_export_check.json")
    args = parser.parse_args()

    torch.manual_seed(0)  # the random init, when no --pretrained
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        model = open_clip.create_model(
            args.model, pretrained=args.pretrained, force_quick_gelu=args.quick_gelu)
        logging.disable(logging.NOTSET)
    model = model.eval()
    size = int(model.visual.image_size[0])
    cfg = open_clip.get_model_preprocess_cfg(model)
    meta = {"model_name": args.model, "image_size": [size, size], "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "interpolation": cfg.get("interpolation", "bicubic"), "quick_gelu": args.quick_gelu}
    built = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report = hf_export.export_hf(model, meta, out, text_layer=args.text_layer)
        exported = time.perf_counter() - start
    v = report["verification"]
    result = {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": device_name("cpu"), "torch": torch.__version__, "transformers": v["transformers"],
        "model": args.model, "pretrained": args.pretrained, "quick_gelu": args.quick_gelu,
        "text_layer": args.text_layer, "parameters": sum(p.numel() for p in model.parameters()),
        "build_s": round(built, 1), "export_and_verify_s": round(exported, 1),
        "load_average_1min": os.getloadavg()[0],
        "figures": {k: v[k] for k in ("image_features", "text_features", "last_hidden_state",
                                      "text_encoder_last_hidden_state", "image_processor")},
        "tokenizer_mismatches": v["tokenizer_mismatches"] + v["diffusers_tokenizer_mismatches"],
    }
    print(f"{args.model} ({result['parameters'] / 1e6:.0f}M, {'QuickGELU' if args.quick_gelu else 'GELU'}, "
          f"text layer {args.text_layer}), export + fresh-process check {exported:.1f} s")
    for name, fig in result["figures"].items():
        print(f"  {name:32s} max abs diff {fig['max_abs_diff']:.3g} (magnitude {fig['magnitude']:.3g}), "
              f"min cosine {fig['min_cosine']:.7f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
