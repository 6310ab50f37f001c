"""``ftclip export RUN_DIR [--format open_clip onnx hf] [--text-layer last|penultimate] [--out DIR] [--overwrite]
[--stage S] [--checkpoint last|best]``."""

from __future__ import annotations

from ftclip.commands import add_checkpoint_options


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a run's adapted encoder (open_clip checkpoint, ONNX, Hugging Face), verified by a "
                       "round trip",
        description="Write the final weights of a run as an open_clip checkpoint + config (loads with plain "
                    "open_clip, LoRA merged), the task's text features / prompts / heads, a model card and, with "
                    "--format onnx, ONNX encoders; with --format hf, a transformers CLIPModel folder plus the "
                    "diffusers text_encoder/ and tokenizer/ layout (hf/). Every export is reloaded and compared with "
                    "the trained model before it is put in place. See docs/export.md.")
    p.add_argument("run_dir", help="run directory written by `ftclip fit`")
    p.add_argument("--format", dest="formats", nargs="+", default=["open_clip"], metavar="FORMAT",
                   help="open_clip (always written), onnx and/or hf (default: open_clip)")
    p.add_argument("--text-layer", dest="text_layer", choices=["last", "penultimate"], default="last",
                   help="--format hf: what hf/text_encoder/ outputs: the last layer after the final LayerNorm (SD 1.x) "
                        "or the penultimate block then the final LayerNorm (SD 2.x) (default: last)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/export)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_checkpoint_options(p, "export")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from ftclip.artifacts.export import check_formats, export_run
    from ftclip.artifacts.layout import EXPORT_META
    from ftclip.artifacts.report import write_report

    check_formats(args.formats)
    out = export_run(args.run_dir, args.formats, out=Path(args.out) if args.out else None, overwrite=args.overwrite,
                     stage=args.stage, checkpoint=args.checkpoint, text_layer=args.text_layer)
    if out.resolve() == (Path(args.run_dir) / "export").resolve():
        write_report(args.run_dir)  # the report shows how to load the run's own export
    meta = json.loads((out / EXPORT_META).read_text(encoding="utf-8"))
    ver = meta["verification"]
    hf = ver.get("hf")
    print(f"verified: reloaded with plain open_clip, encode_image max abs diff {ver['encode_image_max_abs_diff']:.3g}"
          + "".join(f"; {name} (onnxruntime) max abs diff {max(entry['max_abs_diff'].values()):.3g}"
                    for name, entry in ver.get("onnx", {}).items())
          + (f"; hf/ (transformers {hf['transformers']}, fresh process) image features max abs diff "
             f"{hf['image_features']['max_abs_diff']:.3g}, text features {hf['text_features']['max_abs_diff']:.3g}"
             if hf else ""))
    print(f"exported {meta['model_name']} ({meta['task']}, feature {meta['feature']}, stage {meta['stage']}, "
          f"{meta['checkpoint']}) to {out}")
    if meta.get("tower_fit"):
        print(f"load it:  see {out / 'README.md'} (open_clip builds the stock {meta['model_name']}, then fit it as shown)")
    else:
        print(f"load it:  import open_clip; model, _, preprocess = "
              f"open_clip.create_model_and_transforms('local-dir:{out.resolve()}')")
    if hf:
        print(f"          from transformers import CLIPModel; CLIPModel.from_pretrained('{out.resolve() / 'hf'}')")
    return 0
