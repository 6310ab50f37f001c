"""Training throughput of ftclip's re-ID steps vs a plain open_clip + torch loop doing the same work.

    python benchmarks/train_throughput.py [--model ViT-B-16] [--device cuda|cpu] [--batch 64 256]
        [--stages 2 1] [--methods full lora] [--image-size 256 128] [--compile] [--steps 20] [--warmup 5]
        [--repeats 3] [--threads N] [--out benchmarks/out/train_throughput.json]

Random-init weights, random images already on the device (the input pipeline is measured by
benchmarks/data_throughput.py). Precision (``--precision auto``): bf16 autocast on CUDA (ftclip's
default there), fp32 on CPU; ``--precision bf16`` runs bf16 autocast on the CPU too. ``--fused auto``:
fused Adam on CUDA (ftclip's default), ``on``/``off`` on any device (torch has a fused CPU Adam). Three implementations of each step, measured in the same process, interleaved
``--repeats`` times (the median is reported):

* ``plain``: open_clip's model and plain torch -- stage 2: ``model.encode_image`` (forward hooks
  pick the second-to-last block's class token and the pre-projection feature), two BNNeck
  classifiers, label-smoothed CE on both, batch-hard triplet on the three features, image-to-text
  CE against fixed per-ID text features, Adam (fused on CUDA); stage 1: learnable per-ID context
  tokens spliced into the template's token embeddings, the text tower by hand (transformer,
  ln_final, end token, projection), SupCon image->text + text->image on cached image features,
  Adam on the context only;
* ``ftclip``: :class:`ftclip.tasks.reid.module.ReidModule` -- its ``training_step`` (autocast as
  Lightning's bf16-mixed does) + backward + the optimizer its ``configure_optimizers`` builds;
* ``lightning``: the same module under a ``lightning.Trainer`` (no logger, no checkpoints), timed
  from the ``--warmup``-th step to the end: what the framework adds per step.

``full`` trains the image tower + heads (stage 2); ``lora`` trains LoRA adapters on every image
block's attention (ftclip's ``apply_lora``, r 16, also in the plain loop) + heads. Stage 1 trains
the prompts only (``--methods`` does not apply). Peak memory: ``torch.cuda.max_memory_allocated``
per measurement (CUDA only). ``--compile`` adds ``torch.compile`` (ftclip: ``trainer.compile``'s
:meth:`compile_towers`; plain: ``torch.compile`` of the same forward functions).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from common import device_name, sync

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SMOOTHING, MARGIN = 0.1, 0.3

import ftclip.backbone  # noqa: E402,F401  (registers the ftclip-tiny-* open_clip configs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ftclip-tiny-vit", help="open_clip ViT name (random init), e.g. ViT-B-16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256], help="stage-2 images per step")
    parser.add_argument("--prompts", type=int, default=64, help="stage-1 prompts per step")
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 1], choices=[1, 2])
    parser.add_argument("--methods", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--impls", nargs="+", default=["plain", "ftclip", "lightning"],
                        choices=["plain", "ftclip", "lightning"])
    parser.add_argument("--image-size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"))
    parser.add_argument("--num-ids", type=int, default=751, help="identities (Market-1501 train: 751)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the towers (both implementations)")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                        help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--fused", default="auto", choices=["auto", "on", "off"], help="auto: fused Adam on CUDA")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per implementation")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "train_throughput.json")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    if min(args.batch) < 8 or any(b % 4 for b in args.batch):
        parser.error("--batch values must be multiples of 4 (P identities x 4 images), at least 8")
    on_cuda = args.device == "cuda"
    args.bf16 = args.precision == "bf16" or (args.precision == "auto" and on_cuda)
    args.fused_adam = args.fused == "on" or (args.fused == "auto" and on_cuda)
    return args






def pk_labels(batch: int, num_ids: int, device: torch.device) -> torch.Tensor:
    """P identities x 4 images, as the PK sampler draws them."""
    ids = torch.randperm(num_ids)[: batch // 4]
    return ids.repeat_interleave(4).to(device)


# --------------------------------------------------------------------------- ftclip side
def build_module(args: argparse.Namespace, method: str, stage: int, cfg=None):
    """ftclip's re-ID module for the step; ``cfg`` (optional): a loaded recipe to build instead of the demo's."""
    from ftclip.backbone import check_model_config
    from ftclip.recipe import load_recipe
    from ftclip.tasks.reid.module import ReidModule

    if cfg is None:
        cfg = load_recipe(REPO / "recipes" / "demo" / "reid_synthetic.yaml", demo_overrides(args, method))
    check_model_config(cfg.model)  # a model/size the recipe cannot train is a ConfigError, as in `ftclip fit`
    logging.disable(logging.WARNING)
    module = ReidModule(cfg, num_ids=args.num_ids, num_cameras=6)
    logging.disable(logging.NOTSET)
    name = "image" if stage == 2 else "prompts"
    module.set_stage(name, cfg.stages[name])
    return module, cfg


def demo_overrides(args: argparse.Namespace, method: str) -> list[str]:
    overrides = [f"model.name={args.model}", f"model.image_size=[{args.image_size[0]},{args.image_size[1]}]",
                 "data.root=unused", "stages.image.optimizer.lr=5.0e-6", "stages.prompts.optimizer.lr=3.5e-4"]
    if method == "lora":
        overrides += ["strategies.lora.enabled=true", "stages.image.train=[image.lora,head]"]
    if args.compile:
        overrides.append("trainer.compile=true")
    if args.fused != "auto":  # auto: ftclip's own default (fused on CUDA)
        overrides += [f"stages.{s}.optimizer.fused={args.fused == 'on'}" for s in ("image", "prompts")]
    return overrides


def ftclip_setup(args, method: str, stage: int, batch: int, device: torch.device, cfg=None):
    module, cfg = build_module(args, method, stage, cfg)
    module.to(device).train()
    if args.compile:
        module.compile_towers()
    if stage == 2:
        module.build_id_text_features()
        data = {"image": torch.randn(batch, 3, *args.image_size, device=device),
                "pid": pk_labels(batch, args.num_ids, device), "camid": torch.randint(0, 6, (batch,), device=device),
                "index": torch.arange(batch, device=device)}
    else:
        n = 4 * args.num_ids  # cached features of a training set
        module.image_cache = torch.randn(n, module.backbone.embed_dim, device=device)
        module.label_cache = torch.arange(n, device=device) % args.num_ids
        data = {"index": torch.randperm(n, device=device)[:batch]}
    optimizer = module.configure_optimizers()["optimizer"]
    return module, cfg, data, optimizer


def ftclip_step_fn(args, method, stage, batch, device, cfg=None) -> tuple[Callable[[], None], Any]:
    module, _, data, optimizer = ftclip_setup(args, method, stage, batch, device, cfg)
    bf16 = args.bf16

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(data, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, module


def lightning_run(args, method, stage, batch, device, probe=None) -> float:
    """Seconds per step of the module under a Lightning Trainer (steady state).

    ``probe`` (optional): an object whose ``start()`` / ``stop()`` are called where the clock
    starts and stops, and ``mark_step()`` at each timed step after the first (e.g. a counter of
    host reads per step, ``common.HostReads``).
    """
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    module, _, data, _ = ftclip_setup(args, method, stage, batch, device)
    if stage == 1:
        module.on_fit_start = lambda: None  # caches filled above; no datamodule here
    total = args.warmup + args.steps

    class Clock(Callback):
        start = end = 0.0

        def on_train_batch_start(self, trainer, pl_module, b, batch_idx):
            if trainer.global_step == args.warmup and not self.start:
                sync(device)
                self.start = time.perf_counter()
                if probe is not None:
                    probe.start()
            elif self.start and probe is not None:
                probe.mark_step()

        def on_train_end(self, trainer, pl_module):
            sync(device)
            self.end = time.perf_counter()
            if probe is not None:
                probe.stop()

    clock = Clock()
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=total,
                        precision="bf16-mixed" if args.bf16 else "32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock])
    loader = torch.utils.data.DataLoader([data] * total, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return (clock.end - clock.start) / args.steps


# --------------------------------------------------------------------------- plain side
def plain_stage2(args, method: str, batch: int, device: torch.device) -> Callable[[], None]:
    import open_clip

    logging.disable(logging.WARNING)
    size = tuple(args.image_size) if args.image_size[0] != args.image_size[1] else args.image_size[0]
    model = open_clip.create_model(args.model, pretrained=None, force_image_size=size)
    logging.disable(logging.NOTSET)
    if method == "lora":
        from omegaconf import OmegaConf

        from ftclip.backbone import Backbone, Preprocess
        from ftclip.config import LoraConfig
        from ftclip.strategies.lora import apply_lora

        apply_lora(Backbone(model, None, args.model, Preprocess(tuple(args.image_size), (0,) * 3, (1,) * 3), False),
                   OmegaConf.structured(LoraConfig(enabled=True)))
    model.to(device)
    visual = model.visual
    width, dim = visual.class_embedding.shape[0], model.text_projection.shape[1]
    necks = torch.nn.ModuleList([torch.nn.BatchNorm1d(width), torch.nn.BatchNorm1d(dim)]).to(device)
    classifiers = torch.nn.ModuleList([torch.nn.Linear(width, args.num_ids, bias=False),
                                       torch.nn.Linear(dim, args.num_ids, bias=False)]).to(device)
    text = torch.randn(args.num_ids, dim, device=device)  # fixed per-ID text features
    for p in model.parameters():
        p.requires_grad_(False)
    if method == "full":
        trainable = list(visual.parameters())
    else:
        trainable = [p for n, p in visual.named_parameters() if "lora_" in n]
    for p in trainable:
        p.requires_grad_(True)
    trainable += list(necks.parameters()) + list(classifiers.parameters())
    optimizer = torch.optim.Adam(trainable, lr=5e-6, weight_decay=1e-4, fused=args.fused_adam or None)
    captured: dict[str, torch.Tensor] = {}
    visual.transformer.resblocks[-2].register_forward_hook(lambda m, i, o: captured.__setitem__("last", o[:, 0]))
    visual.ln_post.register_forward_hook(  # ln_post runs on all tokens before class-token pooling
        lambda m, i, o: captured.__setitem__("final", o[:, 0] if o.ndim == 3 else o))

    def forward(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        proj = model.encode_image(images)
        # popped, so that every call starts with the same (empty) dict: no recompile under torch.compile
        return proj, captured.pop("final"), captured.pop("last")

    encode = torch.compile(forward) if args.compile else forward
    images = torch.randn(batch, 3, *args.image_size, device=device)
    pids = pk_labels(batch, args.num_ids, device)
    model.train()
    bf16 = args.bf16

    def triplet(f: torch.Tensor) -> torch.Tensor:
        dist = torch.cdist(f, f)
        same = pids[:, None] == pids[None, :]
        hardest_pos = dist.masked_fill(~same, float("-inf")).amax(1)
        hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
        return F.relu(hardest_pos - hardest_neg + MARGIN).mean()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            proj, final, last = encode(images)
            logits = [c(n(f)) for c, n, f in zip(classifiers, necks, (final, proj))]
        loss = sum(F.cross_entropy(lg.float(), pids, label_smoothing=SMOOTHING) for lg in logits)
        loss = loss + sum(triplet(f.float()) for f in (last, final, proj))
        loss = loss + F.cross_entropy(proj.float() @ text.t(), pids, label_smoothing=SMOOTHING)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def plain_stage1(args, prompts: int, device: torch.device) -> Callable[[], None]:
    import open_clip

    logging.disable(logging.WARNING)
    model = open_clip.create_model(args.model, pretrained=None).to(device)
    logging.disable(logging.NOTSET)
    for p in model.parameters():
        p.requires_grad_(False)
    tokens = open_clip.get_tokenizer(args.model)(["A photo of a X X X X person."]).to(device)
    with torch.no_grad():
        embedded = model.token_embedding(tokens)
    prefix, suffix = embedded[:, :5], embedded[:, 9:]
    eot = int(tokens.argmax(-1))
    ctx = torch.nn.Parameter(0.02 * torch.randn(args.num_ids, 4, embedded.shape[-1], device=device))
    optimizer = torch.optim.Adam([ctx], lr=3.5e-4, weight_decay=1e-4, fused=args.fused_adam or None)
    n = 4 * args.num_ids
    image_cache = torch.randn(n, model.text_projection.shape[1], device=device)
    label_cache = torch.arange(n, device=device) % args.num_ids
    index = torch.randperm(n, device=device)[:prompts]
    mask = model.attn_mask

    def text_features(emb: torch.Tensor) -> torch.Tensor:
        x = emb + model.positional_embedding
        x = model.transformer(x, attn_mask=mask)
        x = model.ln_final(x)[:, eot]
        return x @ model.text_projection

    encode = torch.compile(text_features) if args.compile else text_features
    bf16 = args.bf16

    def supcon(a: torch.Tensor, b: torch.Tensor, la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
        logits = a @ b.t()
        positive = (la[:, None] == lb[None, :]).float()
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        return -((positive * log_prob).sum(1) / positive.sum(1)).mean()

    def step() -> None:
        labels = label_cache[index]
        image = image_cache[index]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            c = ctx[labels]
            emb = torch.cat([prefix.expand(len(labels), -1, -1), c, suffix.expand(len(labels), -1, -1)], dim=1)
            text = encode(emb).float()
        loss = supcon(image, text, labels, labels) + supcon(text, image, labels, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# --------------------------------------------------------------------------- measuring
def time_steps(step: Callable[[], None], args, device: torch.device) -> float:
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / args.steps


def measure(args, stage: int, method: str, batch: int, device: torch.device) -> dict[str, Any]:
    builders = {
        "plain": lambda: plain_stage2(args, method, batch, device) if stage == 2 else plain_stage1(args, batch, device),
        "ftclip": lambda: ftclip_step_fn(args, method, stage, batch, device)[0],
    }
    seconds: dict[str, list[float]] = {impl: [] for impl in args.impls}
    peak: dict[str, float | None] = {impl: None for impl in args.impls}
    steps: dict[str, Callable[[], None]] = {}
    for _ in range(args.repeats):
        for impl in args.impls:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                if impl == "lightning":
                    seconds[impl].append(lightning_run(args, method, stage, batch, device))
                else:
                    if impl not in steps:
                        steps[impl] = builders[impl]()
                    seconds[impl].append(time_steps(steps[impl], args, device))
            except torch.cuda.OutOfMemoryError:
                seconds[impl].append(float("nan"))
            if device.type == "cuda":
                value = torch.cuda.max_memory_allocated(device) / 2**30
                peak[impl] = value if peak[impl] is None else max(peak[impl], value)
    row: dict[str, Any] = {"stage": stage, "method": method if stage == 2 else "prompts", "batch": batch}
    for impl in args.impls:
        s = statistics.median(seconds[impl])
        row[impl] = {"step_ms": 1000 * s, "images_per_s": batch / s, "all_step_ms": [1000 * v for v in seconds[impl]],
                     "peak_gib": peak[impl]}
    if "plain" in args.impls:
        for impl in args.impls:
            if impl != "plain":
                row[f"{impl}_vs_plain"] = row[impl]["images_per_s"] / row["plain"]["images_per_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(0)
    rows = []
    for stage in args.stages:
        cases = [(m, b) for m in args.methods for b in args.batch] if stage == 2 else [("prompts", args.prompts)]
        for method, batch in cases:
            rows.append(measure(args, stage, method, batch, device))
            print(f"  done: stage {stage} {method} batch {batch}", file=sys.stderr, flush=True)

    precision = "bf16 autocast" if args.bf16 else "fp32"
    report = {
        "benchmark": "train_throughput",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/train_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "image_size": args.image_size,
        "precision": precision,
        "compile": args.compile,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "load_average_1m_at_end": os.getloadavg()[0],
        "results": rows,
    }
    print(f"{args.model} {args.image_size[0]}x{args.image_size[1]} {precision}{' compiled' if args.compile else ''} "
          f"on {report['device']}, torch {torch.__version__}; median of {args.repeats}")
    header = f"{'stage':<6} {'method':<8} {'batch':>5} " + " ".join(
        f"{impl + ' img/s':>16} {'ms':>8}" for impl in args.impls) + "  vs plain" + "  peak GiB"
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = " ".join(f"{r[i]['images_per_s']:>16.1f} {r[i]['step_ms']:>8.1f}" for i in args.impls)
        ratios = " ".join(f"{r[k]:.2f}" for k in r if k.endswith("_vs_plain"))
        peaks = "/".join("-" if r[i]["peak_gib"] is None else f"{r[i]['peak_gib']:.2f}" for i in args.impls)
        print(f"{r['stage']:<6} {r['method']:<8} {r['batch']:>5} {cells}  {ratios}  {peaks}")
    print("(stage 1: 'batch' = prompts per step, img/s = prompts/s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
