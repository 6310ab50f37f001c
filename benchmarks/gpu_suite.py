"""The GPU benchmark suite: every speed target of issue 16 measured in one process, in one command.

    python benchmarks/gpu_suite.py [--parts stage2 stage1 input eval towers fit] [--budget 480]
        [--out benchmarks/out/gpu_suite.json] [--data-root /tmp/ftclip_gpu_suite]
    python benchmarks/gpu_suite.py --smoke --out /tmp/smoke.json     # the same code paths, tiny, on the CPU

Parts, in this order (each prints its table row by row as it is measured, and the JSON is
rewritten after every row and every part, so a run cut short keeps what it measured):

* ``stage2``: ViT-B/16 at 256x128, bf16 autocast, random init (ViT-B/16 weights are not
  available offline; random weights cost the same): open_clip's plain loop and ftclip's
  training step (``benchmarks/train_throughput.py``), interleaved, at batch 64 and 256, full and
  LoRA, eager then with ``torch.compile`` (``trainer.compile``); img/s and peak memory of each
  implementation alone (the other one's resident memory is subtracted);
* ``stage1``: the stage-1 step with 64 prompts (ms/step): plain, ftclip, ftclip under a
  Lightning Trainer; and the host reads per step of ftclip's step and of the Trainer (a host
  read or synchronising CUDA call stalls the GPU queue: ``common.HostReads``);
* ``input``: one epoch of a Market-size synthetic set (751 identities, ~12k images,
  ``common.market_size_reid_set``): JPEG + albumentations in DataLoader workers vs
  ``data.device_cache`` (decoded uint8 cache + batched augmentation on the GPU), end to end;
* ``eval``: CMC/mAP at Market-1501 and MSMT17 sizes on the GPU vs the numpy reference
  (``benchmarks/eval_speed.py``), agreement checked;
* ``towers``: RN50 and MobileCLIP-S2 at batch 64: open_clip's image tower in a plain loop, and
  ftclip's stage-2 step where ftclip can train that tower for re-ID (else the reason it cannot);
* ``fit``: ``ftclip fit`` in-process (``ftclip.engine.fit``, stage 2 only, a few hundred steps
  via ``stages.image.max_steps``, on the synthetic set) against the same number of ftclip bare
  steps: the framework's share (data, callbacks, logging, checkpoints, start-up).

Time: every part has a budget (``--budget`` seconds in all, shared by the selected parts by
weight); a part measures for seconds, not steps, starts a case only when its estimated cost
fits what is left, and is stopped by a watchdog past its budget. A part that fails records its
error in the JSON and the suite goes on; the exit status is 0 when anything was measured.

``--smoke`` runs the same code on the CPU at tiny sizes (``ftclip-tiny-vit``, batch 8/16, a
few hundred images) without skipping any case, so that every branch the GPU run takes is
built and run at least once: bf16 autocast (on the CPU), fused Adam (torch's CPU kernel),
channels-last conv towers, the device cache (on the CPU), ``torch.compile`` (with the
``aot_eager`` backend: dynamo and AOTAutograd trace forward and backward exactly as for
inductor, without generating kernels, which would take minutes on 2 cores). Its figures mean
nothing; tests/test_gpu_suite_smoke.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gc
import logging
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data_throughput  # noqa: E402
import eval_speed  # noqa: E402
import train_throughput  # noqa: E402
from common import (HostReads, count_host_reads, device_name, market_size_reid_set, measure_for,  # noqa: E402
                    sync, warm_up)

PARTS = ("stage2", "stage1", "input", "eval", "towers", "fit")
WEIGHTS = {"stage2": 0.40, "stage1": 0.08, "input": 0.10, "eval": 0.07, "towers": 0.10, "fit": 0.25}


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and ``--smoke``."""

    model: str
    image_size: tuple[int, int]
    batches: tuple[int, ...]
    num_ids: int  # classifier classes / identities of the random batches (Market-1501 train: 751)
    prompts: int  # stage-1 prompts per step
    measure_s: float  # seconds of one timed measurement
    repeats: int  # interleaved measurements per implementation (median reported)
    warmup: int  # untimed steps before the first measurement (compilation happens there)
    sync_steps: int  # steps over which host reads are counted
    data_ids: int  # training identities of the synthetic set (input and fit parts)
    data_size: tuple[int, int]
    jpeg_workers: tuple[int, ...]
    eval_sizes: dict[str, dict[str, int] | None]  # None: eval_speed.SIZES[name]
    eval_ref_queries: dict[str, int | None]
    towers: tuple[tuple[str, tuple[int, int]], ...]
    tower_batch: int
    fit_recipe: str
    fit_overrides: tuple[str, ...]
    fit_steps: int
    compile_guess_s: float  # first guess of one torch.compile (forward + backward), refined as measured
    skip_by_budget: bool = True
    compile_backend: str | None = None  # None: torch's default (inductor)
    fit_jpeg_workers: int = 8


def gpu_sizes() -> Sizes:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(1, min(8, cores - 2))
    return Sizes(
        model="ViT-B-16", image_size=(256, 128), batches=(64, 256), num_ids=751, prompts=64, measure_s=2.0,
        repeats=2, warmup=3, sync_steps=32, data_ids=751, data_size=(256, 128),
        jpeg_workers=tuple(sorted({max(1, cores // 2), max(1, cores - 2)})),
        eval_sizes={"market": None, "msmt17": None}, eval_ref_queries=dict(eval_speed.DEFAULT_REF_QUERIES),
        towers=(("RN50", (256, 128)), ("MobileCLIP-S2", (256, 128))), tower_batch=64,
        fit_recipe="recipes/reid_two_stage.yaml",
        fit_overrides=("model.pretrained=null", "eval.before=false", "trainer.enable_progress_bar=false",
                       "stages.image.epochs=100"),
        fit_steps=300, compile_guess_s=60.0, fit_jpeg_workers=workers,
    )


# --smoke's stand-in for MobileCLIP: the same open_clip classes (CustomTextCLIP, a timm FastViT image tower
# in TimmModel), with timm's smallest FastViT and a 2-layer text tower (MobileCLIP-S1 takes ~10 s a step on 2 cores)
TINY_FASTVIT = "gpu-suite-tiny-fastvit"
TINY_FASTVIT_CONFIG = {
    "embed_dim": 64, "custom_text": True,
    "vision_cfg": {"timm_model_name": "fastvit_t8", "timm_model_pretrained": False, "timm_pool": "avg",
                   "timm_proj": "linear", "image_size": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "no_causal_mask": True},
}


def register_tiny_fastvit(folder: Path) -> None:
    import json

    import open_clip

    path = folder / f"{TINY_FASTVIT}.json"
    path.write_text(json.dumps(TINY_FASTVIT_CONFIG))
    open_clip.add_model_config(path)


def smoke_sizes() -> Sizes:
    return Sizes(
        model="ftclip-tiny-vit", image_size=(128, 64), batches=(8,), num_ids=32, prompts=8, measure_s=0.1,
        repeats=1, warmup=2, sync_steps=4, data_ids=24, data_size=(128, 64), jpeg_workers=(0, 1),
        eval_sizes={"market": {"num_q": 60, "num_g": 300, "num_ids": 30, "num_cams": 6, "distractors": 20}},
        eval_ref_queries={"market": None},
        towers=(("ftclip-tiny-rn", (128, 64)), (TINY_FASTVIT, (64, 32))), tower_batch=8,
        fit_recipe="recipes/demo/reid_synthetic.yaml",
        fit_overrides=("data.synthetic=false", "eval.before=false", "trainer.precision=bf16-mixed",
                       "stages.image.optimizer.fused=true", "stages.image.epochs=100"),
        fit_steps=12, compile_guess_s=5.0, skip_by_budget=False, compile_backend="aot_eager", fit_jpeg_workers=1,
    )


# --------------------------------------------------------------------------- budget, watchdog, report
class PartTimeout(BaseException):
    """Raised by the watchdog inside a part that ran past its budget (BaseException: no library swallows it)."""


@dataclass
class Part:
    name: str
    budget_s: float
    start: float = field(default_factory=time.perf_counter)
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    skip_by_budget: bool = True

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def fits(self, case: str, estimate_s: float) -> bool:
        """Whether a case estimated to take ``estimate_s`` fits the time left; else record it as skipped."""
        if not self.skip_by_budget or estimate_s <= self.left():
            return True
        self.skipped.append({"case": case, "estimate_s": round(estimate_s, 1), "left_s": round(self.left(), 1)})
        print(f"  [{self.name}] skipped {case}: needs ~{estimate_s:.0f} s, {max(0.0, self.left()):.0f} s left",
              flush=True)
        return False


class Suite:
    #: the watchdog stops a part this long (at least) after its budget has run out
    grace_s = 15.0

    def __init__(self, args: argparse.Namespace, sizes: Sizes, device: torch.device):
        self.args, self.sizes, self.device = args, sizes, device
        self.start = time.perf_counter()
        self.deadline = self.start + args.budget
        self.part: Part | None = None
        self.report: dict[str, Any] = {
            "benchmark": "gpu_suite",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "benchmarks/gpu_suite.py", *sys.argv[1:]]),
            "smoke": args.smoke,
            "device": device_name(device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "budget_s": args.budget,
            "precision": "bf16 autocast", "fused_adam": True,  # on CUDA by ftclip's defaults, forced in --smoke
            "compile_backend": sizes.compile_backend or "inductor",
            "sizes": dict(vars(sizes)),
            "parts": {},
        }

    # ---------------------------------------------------------------- JSON
    def write(self) -> None:
        from ftclip.io import atomic_write_json

        self.report["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        self.report["load_average_1m"] = os.getloadavg()[0]
        atomic_write_json(self.args.out, self.report)

    def add(self, row: dict, line: str) -> None:
        """Record a measured row of the running part, print its table line, rewrite the JSON."""
        self.part.rows.append(row)
        self.report["parts"][self.part.name]["rows"] = self.part.rows
        print(f"  {line}", flush=True)
        self.write()

    # ---------------------------------------------------------------- parts
    def run(self, names: list[str]) -> int:
        for i, name in enumerate(names):
            remaining_weight = sum(WEIGHTS[n] for n in names[i:])
            budget = max(1.0, (self.deadline - time.perf_counter()) * WEIGHTS[name] / remaining_weight)
            self.run_part(name, budget)
        try:
            self.report["targets"] = targets(self.report["parts"], self.args.smoke)
            print_targets(self.report["targets"], self.args.smoke)
        except Exception as exc:  # a summary that fails never costs the figures measured
            self.report["targets_error"] = f"{type(exc).__name__}: {exc}"
        self.write()
        print(f"wrote {self.args.out} ({self.report['elapsed_s']:.0f} s)")
        return 0 if any(p["rows"] for p in self.report["parts"].values()) else 1

    def run_part(self, name: str, budget: float) -> None:
        part = self.part = Part(name, budget, skip_by_budget=self.sizes.skip_by_budget)
        entry = self.report["parts"][name] = {"status": "running", "budget_s": round(budget, 1), "rows": []}
        print(f"== {name}: {PART_TITLES[name]} (budget {budget:.0f} s)", flush=True)
        self.write()
        # watchdog: a part that overruns its budget (a compile longer than guessed, a hung loader) is stopped
        grace = budget + max(self.grace_s, 0.25 * budget) if self.sizes.skip_by_budget else max(300.0, 2 * budget)
        limit = max(1.0, min(grace, self.deadline + 30.0 - time.perf_counter()))
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            PART_FUNCTIONS[name](self, part)
            entry["status"] = "done"
        except PartTimeout:
            entry["status"] = "timeout"
            entry["error"] = f"stopped by the watchdog after {limit:.0f} s (budget {budget:.0f} s)"
        except Exception as exc:  # one part failing never stops the suite
            entry["status"] = "error"
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=-8)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            entry["seconds"] = round(time.perf_counter() - part.start, 1)
            entry["skipped"] = part.skipped
            self.free()
        if entry["status"] != "done":
            print(f"  [{name}] {entry['status']}: {entry['error']}", flush=True)
        self.write()

    # ---------------------------------------------------------------- helpers for the parts
    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0

    def tt_args(self, batch: int, compiled: bool, model: str | None = None,
                image_size: tuple[int, int] | None = None, num_ids: int | None = None) -> argparse.Namespace:
        """train_throughput's arguments for one case (its own parser checks them)."""
        cuda = self.device.type == "cuda"
        h, w = image_size or self.sizes.image_size
        argv = ["--model", model or self.sizes.model, "--device", self.device.type, "--batch", str(batch),
                "--image-size", str(h), str(w), "--num-ids", str(num_ids or self.sizes.num_ids),
                "--prompts", str(self.sizes.prompts), "--warmup", str(self.sizes.warmup),
                # GPU: ftclip's defaults there (bf16, fused Adam); smoke: the same branches forced on the CPU
                "--precision", "auto" if cuda else "bf16", "--fused", "auto" if cuda else "on"]
        return train_throughput.parse_args(argv + (["--compile"] if compiled else []))

    def interleaved(self, builders: dict[str, Callable[[], Callable[[], None]]], items: int,
                    unsupported: tuple[type[BaseException], ...] = (), part: Part | None = None,
                    case: str = "") -> tuple[dict[str, dict], dict[str, Callable[[], None]]]:
        """Build each implementation's step, warm it up, then time them in turn ``repeats`` times.

        Returns per implementation: build/warm-up seconds, median ms per step, items per second,
        resident and peak GiB (peak during its own measurements, minus what the others hold), or
        ``not_supported`` (an ftclip config error, or an exception of ``unsupported``: the reason) /
        ``error`` (out of memory) / ``skipped`` (``part`` given: its build, estimated from the one
        before, does not fit the time left); and the steps themselves.
        """
        from ftclip.errors import FtclipError

        unsupported = (FtclipError, *unsupported)

        s, device = self.sizes, self.device
        out: dict[str, dict] = {}
        steps: dict[str, Callable[[], None]] = {}
        resident: dict[str, int] = {}
        setup_s = 0.0
        for name, build in builders.items():
            if part is not None and setup_s and not part.fits(f"{case}: {name}", setup_s + s.repeats * s.measure_s
                                                              * len(builders)):
                out[name] = {"skipped": "time budget"}
                continue
            before, start = self.allocated(), time.perf_counter()
            try:
                step = build()
                built = time.perf_counter()
                warm = warm_up(step, s.warmup, device)
            except torch.cuda.OutOfMemoryError:
                out[name] = {"error": "CUDA out of memory"}
                self.free()
                continue
            except unsupported as exc:
                out[name] = {"not_supported": f"{type(exc).__name__}: {exc}"}
                self.free()
                continue
            steps[name], resident[name] = step, self.allocated() - before
            setup_s = max(setup_s, time.perf_counter() - start)
            out[name] = {"build_s": round(built - start, 2), "warmup_s": round(warm, 2), "all_step_ms": [],
                         "steps": 0, "peak_gib": None, "resident_gib": _gib(resident[name]) if device.type == "cuda" else None}
        for _ in range(s.repeats):
            for name, step in list(steps.items()):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                others = self.allocated() - resident[name]
                try:
                    measured = measure_for(step, s.measure_s, device)
                except torch.cuda.OutOfMemoryError:  # the other implementation's memory counts here too
                    out[name] = {"error": "CUDA out of memory"}
                    del steps[name]
                    self.free()
                    continue
                out[name]["all_step_ms"].append(round(1000 * measured["step_s"], 3))
                out[name]["steps"] += measured["steps"]
                if device.type == "cuda":
                    peak = _gib(torch.cuda.max_memory_allocated(device) - others)
                    out[name]["peak_gib"] = max(peak, out[name]["peak_gib"] or 0.0)
        for name in steps:
            ms = statistics.median(out[name]["all_step_ms"])
            out[name].update(step_ms=round(ms, 3), per_s=round(1000 * items / ms, 1))
        return out, steps


def _raise_timeout(signum, frame):
    raise PartTimeout()


def _gib(nbytes: int) -> float:
    return round(nbytes / 2**30, 3)


def _cell(result: dict | None, what: str = "per_s") -> str:
    """One implementation's figure for a table line."""
    if not result:
        return "-"
    if "not_supported" in result:
        return "n/a"
    if "skipped" in result:
        return "skipped"
    if "error" in result:
        return "OOM"
    value = result[what]
    return "-" if value is None else (f"{value:,.0f}" if what == "per_s" else f"{value:.2f}")


def _ratio(row: dict, a: str = "ftclip", b: str = "plain") -> float | None:
    if row.get(a, {}).get("per_s") and row.get(b, {}).get("per_s"):
        return round(row[a]["per_s"] / row[b]["per_s"], 3)
    return None


@contextlib.contextmanager
def compile_backend(backend: str | None):
    """Smoke runs: ``torch.compile(..., backend=backend)`` wherever the code under test calls torch.compile."""
    if backend is None:
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        torch.compile = original


# --------------------------------------------------------------------------- part: stage 2
def part_stage2(suite: Suite, part: Part) -> None:
    s = suite.sizes
    big, small = max(s.batches), min(s.batches)
    # the targets first: full at both sizes, then compiled full at the large batch; then the rest
    cases = [("full", small, False), ("full", big, False), ("full", big, True), ("lora", small, False),
             ("lora", big, False), ("full", small, True), ("lora", big, True), ("lora", small, True)]
    cases = list(dict.fromkeys(cases))  # --smoke has one batch size
    print(f"  {s.model} {s.image_size[0]}x{s.image_size[1]}, img/s (median of {s.repeats}), peak GiB of each alone")
    print(f"  {'method':<6} {'batch':>5} {'compile':>7} {'plain img/s':>12} {'ftclip img/s':>12} {'ratio':>6}"
          f" {'plain GiB':>9} {'ftclip GiB':>10} {'warm-up s':>10}")
    cost: dict[bool, float] = {}
    for method, batch, compiled in cases:
        case = f"{method} batch {batch}{' compiled' if compiled else ''}"
        eager = cost.get(False, 10 + 4 * s.repeats * s.measure_s)
        # a compiled case starts when its ftclip side fits; its plain side is checked once ftclip's setup is known
        guess = cost.get(compiled) or (eager / 2 + s.compile_guess_s if compiled else eager)
        if not part.fits(case, guess):
            continue
        start = time.perf_counter()
        args = suite.tt_args(batch, compiled)
        if compiled:
            torch._dynamo.reset()  # a clean, static-shape compile per case
        builders = {"ftclip": lambda: train_throughput.ftclip_step_fn(args, method, 2, batch, suite.device)[0],
                    "plain": lambda: train_throughput.plain_stage2(args, method, batch, suite.device)}
        results, steps = suite.interleaved(builders, batch, part=part, case=case)  # ftclip first: the target
        steps.clear()
        row = {"method": method, "batch": batch, "compiled": compiled, **results, "ftclip_vs_plain": _ratio(results)}
        warm = "/".join(f"{results[i].get('warmup_s', 0):.0f}" for i in ("plain", "ftclip"))
        ratio = "-" if row["ftclip_vs_plain"] is None else f"{row['ftclip_vs_plain']:.2f}"
        suite.add(row, f"{method:<6} {batch:>5} {'yes' if compiled else 'no':>7} {_cell(results['plain']):>12} "
                       f"{_cell(results['ftclip']):>12} {ratio:>6} {_cell(results['plain'], 'peak_gib'):>9} "
                       f"{_cell(results['ftclip'], 'peak_gib'):>10} {warm:>10}")
        suite.free()
        cost[compiled] = max(cost.get(compiled, 0.0), time.perf_counter() - start)


# --------------------------------------------------------------------------- part: stage 1
def part_stage1(suite: Suite, part: Part) -> None:
    from ftclip.tasks.base import StagedModule

    s, device = suite.sizes, suite.device
    every = StagedModule.finite_check_every
    print(f"  {s.prompts} prompts per step; steps that wait for the GPU (host read or CUDA sync), ftclip step / "
          f"under Lightning: the NaN guard reads every {every} steps ({1 / every:.3f})")
    print(f"  {'compile':>7} {'plain ms':>9} {'ftclip ms':>9} {'Lightning ms':>12} {'synced steps':>13}"
          f" {'reads/step':>11}  per-step sync left?")
    cost: float | None = None
    for compiled in (False, True):
        case = f"stage 1{' compiled' if compiled else ''}"
        guess = (cost or 10 + 3 * s.repeats * s.measure_s) + (2 * s.compile_guess_s if compiled else 0)
        if not part.fits(case, guess):
            continue
        start = time.perf_counter()
        args = suite.tt_args(s.prompts, compiled)
        if compiled:
            torch._dynamo.reset()
        builders = {"plain": lambda: train_throughput.plain_stage1(args, s.prompts, device),
                    "ftclip": lambda: train_throughput.ftclip_step_fn(args, "prompts", 1, s.prompts, device)[0]}
        results, steps = suite.interleaved(builders, s.prompts)
        # host reads: eager only (a torch function mode around a compiled step would make dynamo recompile)
        bare = None if compiled else count_host_reads(steps["ftclip"], s.sync_steps, device)
        steps.clear()
        # the same module under a Lightning Trainer: as many timed steps as fit measure_s, then a counted run
        args.steps = max(10, int(s.measure_s * 1000 / results["ftclip"]["step_ms"]))
        lightning_s = train_throughput.lightning_run(args, "prompts", 1, s.prompts, device)
        results["lightning"] = {"step_ms": round(1000 * lightning_s, 3), "per_s": round(s.prompts / lightning_s, 1)}
        under = None
        if not compiled:
            probe = HostReads(device)
            args.steps = s.sync_steps
            train_throughput.lightning_run(args, "prompts", 1, s.prompts, device, probe=probe)
            under = probe.summary()
        row = {"compiled": compiled, "prompts": s.prompts, **results, "ftclip_host_reads": bare,
               "lightning_host_reads": under}
        synced = reads = left = "-"
        if not compiled:
            row["per_step_sync_left"] = max(bare["synced_fraction"], under["synced_fraction"]) >= 0.5  # most steps
            synced = f"{bare['synced_fraction']:.3f}/{under['synced_fraction']:.3f}"
            reads = f"{bare['host_reads_per_step']:.2f}/{under['host_reads_per_step']:.2f}"
            left = "YES: " + str(under["host_reads"]) if row["per_step_sync_left"] else "no"
        suite.add(row, f"{'yes' if compiled else 'no':>7} {_cell(results['plain'], 'step_ms'):>9} "
                       f"{_cell(results['ftclip'], 'step_ms'):>9} {_cell(results['lightning'], 'step_ms'):>12} "
                       f"{synced:>13} {reads:>11}  {left}")
        suite.free()
        cost = time.perf_counter() - start


# --------------------------------------------------------------------------- part: input path
def synthetic_set(suite: Suite) -> tuple[Path, float]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return market_size_reid_set(suite.args.data_root, suite.sizes.data_ids, suite.sizes.data_size, cores)


def part_input(suite: Suite, part: Part) -> None:
    from ftclip.tasks.reid.formats import load_reid_dataset

    s, device = suite.sizes, suite.device
    folder, write_s = synthetic_set(suite)
    ds = load_reid_dataset("market1501", folder)
    size, batch = s.data_size, min(s.batches)
    print(f"  one epoch of {len(ds.train):,} training images ({ds.num_train_pids} ids) at {size[0]}x{size[1]}, "
          f"P x K batches of {batch}" + (f"; set written in {write_s:.0f} s" if write_s else ""))
    print(f"  {'path':<30} {'img/s':>9} {'epoch s':>8}  notes")
    start = time.perf_counter()
    rate, build_s, nbytes = data_throughput.cache_path(ds, size, batch, 0, device)
    wall = time.perf_counter() - start
    row = {"path": "device_cache", "device": str(device), "train_images": len(ds.train), "images_per_s": round(rate, 1),
           "cache_build_s": round(build_s, 2), "cache_gib": _gib(nbytes), "epoch_s": round(wall, 2)}
    suite.add(row, f"{'uint8 cache + augment on ' + device.type:<30} {rate:>9,.0f} {wall:>8.2f}  "
                   f"epoch s includes building the {_gib(nbytes):.2f} GiB cache ({build_s:.1f} s)")
    cost = 10.0
    for workers in sorted(s.jpeg_workers, reverse=True):
        if not part.fits(f"JPEG, {workers} workers", cost):
            continue
        start = time.perf_counter()
        rate = data_throughput.jpeg_path(ds, size, batch, workers, 0, device)
        wall = time.perf_counter() - start
        row = {"path": "jpeg", "workers": workers, "train_images": len(ds.train), "images_per_s": round(rate, 1),
               "epoch_s": round(wall, 2)}
        suite.add(row, f"{'JPEG + albumentations, ' + str(workers) + ' workers':<30} {rate:>9,.0f} {wall:>8.2f}  "
                       "epoch s includes the loader start")
        cost = 1.5 * wall


# --------------------------------------------------------------------------- part: evaluation
def part_eval(suite: Suite, part: Part) -> None:
    s = suite.sizes
    print(f"  {'work':<8} {'queries x gallery':>18} {'seconds':>8} {'numpy s':>9} {'speedup':>8}  agrees")
    for name, size in s.eval_sizes.items():
        if not part.fits(name, 20.0 if name == "msmt17" else 5.0):
            continue
        r = eval_speed.run_size(name, suite.device, 3, s.eval_ref_queries[name], size=size)
        ref = f"{r['ref_seconds']:.2f}" + ("*" if r["ref_extrapolated"] else "")
        suite.add(r, f"{name:<8} {r['num_query']:>8,} x {r['num_gallery']:<7,} {r['seconds']:>8.3f} {ref:>9} "
                     f"{r['speedup']:>7.1f}x  {'yes' if r['agrees'] else 'NO'} ({r['max_abs_diff_vs_ref']:.1e})"
                     + ("  *numpy on a subset of queries, time extrapolated" if r["ref_extrapolated"] else ""))


# --------------------------------------------------------------------------- part: other towers
def plain_tower_step(name: str, size: tuple[int, int], batch: int, args, device: torch.device) -> Callable[[], None]:
    """open_clip's image tower + BNNeck + ID classifier, label-smoothed CE, Adam: the cost-bearing part of a
    stage-2 step (the triplet and image-to-text terms are a few small matrices); channels-last for conv towers."""
    import open_clip
    from open_clip.transformer import VisionTransformer

    logging.disable(logging.WARNING)
    model = open_clip.create_model(name, pretrained=None, force_image_size=size if size[0] != size[1] else size[0])
    logging.disable(logging.NOTSET)
    visual = model.visual.to(device).train()
    fmt = torch.contiguous_format if isinstance(visual, VisionTransformer) else torch.channels_last
    visual.to(memory_format=fmt)
    images = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=fmt)
    with torch.no_grad():
        dim = visual(images[:2]).shape[1]
    neck = torch.nn.BatchNorm1d(dim).to(device)
    classifier = torch.nn.Linear(dim, args.num_ids, bias=False).to(device)
    params = [*visual.parameters(), *neck.parameters(), *classifier.parameters()]
    optimizer = torch.optim.Adam(params, lr=5e-6, weight_decay=1e-4, fused=args.fused_adam or None)
    pids = train_throughput.pk_labels(batch, args.num_ids, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = classifier(neck(visual(images)))
        F.cross_entropy(logits.float(), pids, label_smoothing=0.1).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def tower_size(name: str, wanted: tuple[int, int]) -> tuple[int, int]:
    """``wanted`` where the tower takes it; open_clip's ResNets take square images only (their native size)."""
    import open_clip

    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)) and wanted[0] != wanted[1]:
        native = vision.get("image_size", 224)
        return (native, native) if isinstance(native, int) else tuple(native)
    return wanted


def part_towers(suite: Suite, part: Part) -> None:
    s, device = suite.sizes, suite.device
    print(f"  batch {s.tower_batch}, eager; ftclip 'n/a' = ftclip cannot train that tower for re-ID yet (reason in the JSON)")
    print(f"  {'model':<22} {'size':>8} {'plain img/s':>12} {'ftclip img/s':>12} {'ratio':>6} {'plain GiB':>9}"
          f" {'ftclip GiB':>10}")
    for name, wanted in s.towers:
        if not part.fits(name, 15 + 4 * s.repeats * s.measure_s):
            continue
        size = tower_size(name, wanted)
        args = suite.tt_args(s.tower_batch, False, model=name, image_size=size)
        builders = {"plain": lambda: plain_tower_step(name, size, s.tower_batch, args, device),
                    "ftclip": lambda: train_throughput.ftclip_step_fn(args, "full", 2, s.tower_batch, device)[0]}
        # ftclip's re-ID module is built for class-token ViTs: today any failure to build or run it on
        # another tower is that limitation (the backbones issue), recorded with its message, not an error
        results, steps = suite.interleaved(builders, s.tower_batch, unsupported=(Exception,))
        steps.clear()
        row = {"model": name, "image_size": list(size), "batch": s.tower_batch, **results,
               "ftclip_vs_plain": _ratio(results)}
        ratio = "-" if row["ftclip_vs_plain"] is None else f"{row['ftclip_vs_plain']:.2f}"
        suite.add(row, f"{name:<22} {size[0]:>4}x{size[1]:<3} {_cell(results['plain']):>12} "
                       f"{_cell(results['ftclip']):>12} {ratio:>6} {_cell(results['plain'], 'peak_gib'):>9} "
                       f"{_cell(results['ftclip'], 'peak_gib'):>10}")
        suite.free()


# --------------------------------------------------------------------------- part: ftclip fit vs the bare step
class FitClock:
    """Attached to the engine's stage Trainer: times ``Trainer.fit`` and checkpoint writes, counts host
    reads over steps [count_from, count_to), then times the steady steps from count_to to the end."""

    def __init__(self, device: torch.device, count_from: int, count_to: int):
        from lightning.pytorch.callbacks import Callback

        clock = self
        self.device, self.count_from, self.count_to = device, count_from, count_to
        self.counter = HostReads(device)
        self.times: dict[str, float] = {}
        self.ckpt_s, self.ckpts, self.steps = 0.0, 0, 0

        class _Callback(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                clock.at_step(trainer.global_step)

            def on_train_end(self, trainer, pl_module):
                clock.stop_counting()
                sync(device)
                clock.times["end"] = time.perf_counter()
                clock.steps = trainer.global_step

            def on_exception(self, trainer, pl_module, exception):
                clock.stop_counting()

        self.callback = _Callback()
        self._counting = False

    def attach(self, trainer) -> None:
        trainer.callbacks.append(self.callback)
        fit, save = trainer.fit, trainer.save_checkpoint

        def timed_fit(*a, **k):
            self.times["fit_start"] = time.perf_counter()
            try:
                return fit(*a, **k)
            finally:
                sync(self.device)
                self.times["fit_end"] = time.perf_counter()

        def timed_save(*a, **k):
            sync(self.device)
            start = time.perf_counter()
            try:
                return save(*a, **k)
            finally:
                self.ckpt_s += time.perf_counter() - start
                self.ckpts += 1

        trainer.fit, trainer.save_checkpoint = timed_fit, timed_save

    def at_step(self, step: int) -> None:
        if step == 0 and "first_step" not in self.times:
            sync(self.device)
            self.times["first_step"] = time.perf_counter()
        if step == self.count_from and not self._counting and "steady" not in self.times:
            sync(self.device)
            self.counter.start()
            self._counting = True
        if self._counting and self.count_from < step < self.count_to:
            self.counter.mark_step()
        if step == self.count_to and self._counting:
            self.stop_counting()
            sync(self.device)
            self.times["steady"] = time.perf_counter()

    def stop_counting(self) -> None:
        if self._counting:
            self.counter.stop()
            self._counting = False


def fit_once(suite: Suite, folder: Path, num_ids: int, device_cache: bool) -> dict:
    from ftclip import engine
    from ftclip.recipe import load_recipe
    from ftclip.runs import RunDir

    s = suite.sizes
    steps, count_from, count_to = s.fit_steps, min(5, s.fit_steps // 4), min(5, s.fit_steps // 4) + s.sync_steps
    with tempfile.TemporaryDirectory(prefix="ftclip_gpu_suite_fit_") as tmp:
        overrides = [*s.fit_overrides, f"data.root={folder}", "data.format=market1501",
                     f"data.device_cache={str(device_cache).lower()}", f"data.num_workers={s.fit_jpeg_workers}",
                     f"data.batch_size={min(s.batches)}", f"stages.image.max_steps={steps}", f"run.dir={tmp}/run",
                     f"model.name={s.model}", f"model.image_size=[{s.image_size[0]},{s.image_size[1]}]"]
        cfg = load_recipe(REPO / s.fit_recipe, overrides)
        del cfg.stages["prompts"]  # stage 2 alone: the framework's share of the step that costs
        clock = FitClock(suite.device, count_from, count_to)
        original = engine.build_trainer

        def build_trainer(*a, **k):
            trainer = original(*a, **k)
            if len(a) > 3 and a[3] is not None:  # a stage's Trainer (not the evaluation one)
                clock.attach(trainer)
            return trainer

        engine.build_trainer = build_trainer
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(_Indented()):
                engine.fit(cfg, RunDir.create(cfg))
        finally:
            engine.build_trainer = original
        engine_s = time.perf_counter() - start
        threads = torch.get_num_threads()
        # the bare step of the same module and recipe, the same number of steps
        args = suite.tt_args(min(s.batches), False, num_ids=num_ids)
        step, module = train_throughput.ftclip_step_fn(args, "full", 2, min(s.batches), suite.device, cfg=cfg)
        warm_up(step, s.warmup, suite.device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(suite.device)
        bare_s = time.perf_counter() - start
        del step, module
    t = clock.times
    stage_s = t["fit_end"] - t["fit_start"]
    steady_steps = clock.steps - count_to
    steady_ms = 1000 * (t["end"] - t["steady"]) / steady_steps if "steady" in t and steady_steps > 0 else None
    bare_ms = 1000 * bare_s / steps
    return {
        "data": "device_cache" if device_cache else f"jpeg, {s.fit_jpeg_workers} workers",
        "steps": clock.steps, "batch": min(s.batches), "torch_threads": threads,
        "engine_fit_s": round(engine_s, 2), "stage_fit_s": round(stage_s, 2),
        "start_to_first_step_s": round(t["first_step"] - t["fit_start"], 2),
        "checkpoint_s": round(clock.ckpt_s, 2), "checkpoints": clock.ckpts,
        "steady_step_ms": None if steady_ms is None else round(steady_ms, 3), "bare_step_ms": round(bare_ms, 3),
        "bare_s": round(bare_s, 2),
        "bare_vs_fit": round(bare_s / stage_s, 3),  # 1.0: the framework costs nothing; target >= 0.9
        "bare_vs_steady": None if steady_ms is None else round(bare_ms / steady_ms, 3),
        "host_reads": clock.counter.summary(),
    }


class _Indented:
    """stdout of ``ftclip fit`` inside the suite: kept, indented under the part's table."""

    def write(self, text: str) -> int:
        sys.__stdout__.write("".join(f"    | {line}\n" for line in text.splitlines() if line.strip()))
        return len(text)

    def flush(self) -> None:
        sys.__stdout__.flush()


def part_fit(suite: Suite, part: Part) -> None:
    from ftclip.tasks.reid.formats import load_reid_dataset

    s = suite.sizes
    folder, _ = synthetic_set(suite)
    num_ids = load_reid_dataset("market1501", folder).num_train_pids
    print(f"  stage 2 of `ftclip fit` ({s.fit_recipe}, {s.model}), {s.fit_steps} steps of batch {min(s.batches)} on "
          f"the synthetic set, vs {s.fit_steps} bare ftclip steps")
    header = (f"  {'data':<18} {'fit s':>7} {'start s':>8} {'ckpt s':>7} {'steady ms':>10} {'bare ms':>8}"
              f" {'bare/fit':>9} {'bare/steady':>11} {'synced steps':>12}")
    cost: float | None = None
    for device_cache in (True, False):
        case = "fit, " + ("device cache" if device_cache else "JPEG workers")
        if not part.fits(case, cost or 60.0):
            continue
        start = time.perf_counter()
        row = fit_once(suite, folder, num_ids, device_cache)
        steady = "-" if row["steady_step_ms"] is None else f"{row['steady_step_ms']:.1f}"
        print(header)
        suite.add(row, f"{row['data']:<18} {row['stage_fit_s']:>7.2f} {row['start_to_first_step_s']:>8.2f} "
                       f"{row['checkpoint_s']:>7.2f} {steady:>10} {row['bare_step_ms']:>8.1f} {row['bare_vs_fit']:>9.2f} "
                       f"{row['bare_vs_steady'] or 0:>11.2f} {row['host_reads']['synced_fraction']:>12.3f}")
        suite.free()
        cost = time.perf_counter() - start


PART_FUNCTIONS: dict[str, Callable[[Suite, Part], None]] = {
    "stage2": part_stage2, "stage1": part_stage1, "input": part_input, "eval": part_eval, "towers": part_towers,
    "fit": part_fit,
}
PART_TITLES = {
    "stage2": "stage-2 step, plain open_clip loop vs ftclip, interleaved",
    "stage1": "stage-1 step and per-step host synchronisation",
    "input": "stage-2 input, one epoch: JPEG workers vs data.device_cache",
    "eval": "CMC/mAP vs the numpy reference",
    "towers": "other image towers, stage-2 step",
    "fit": "ftclip fit (engine) vs the bare step: the framework's share",
}


# --------------------------------------------------------------------------- targets
def targets(parts: dict, smoke: bool) -> list[dict]:
    """The issue's targets against what was measured (None where not measured)."""
    def rows(name: str) -> list[dict]:
        return parts.get(name, {}).get("rows", [])

    def stage2(method: str, batch: int, compiled: bool | None, what: str = "per_s") -> list[float]:
        return [r["ftclip"][what] for r in rows("stage2") if r.get("method") == method and r.get("batch") == batch
                and (compiled is None or r.get("compiled") == compiled) and r.get("ftclip", {}).get(what) is not None]

    def first(name: str, key: str, value, field_: str):
        return next((r.get(field_) for r in rows(name) if r.get(key) == value), None)

    s2 = max(stage2("full", 64, None), default=None)
    s2_256 = max(stage2("full", 256, True), default=None)
    mem = min(stage2("full", 64, False, "peak_gib"), default=None)
    mem_lora = min(stage2("lora", 64, False, "peak_gib"), default=None)
    s1 = min((r["ftclip"]["step_ms"] for r in rows("stage1") if r.get("ftclip", {}).get("step_ms")), default=None)
    msmt, market = first("eval", "work", "msmt17", "seconds"), first("eval", "work", "market", "seconds")
    agree = [r["agrees"] for r in rows("eval") if "agrees" in r]
    cache = first("input", "path", "device_cache", "images_per_s")
    fit = first("fit", "data", "device_cache", "bare_vs_fit")
    rn50 = (first("towers", "model", "RN50", "ftclip") or {}).get("per_s")
    sync_left = [r["per_step_sync_left"] for r in rows("stage1") if "per_step_sync_left" in r]
    table = [
        ("stage 2 img/s, batch 64 (ftclip, full)", ">= 1,500", s2, lambda v: v >= 1500),
        ("stage 2 img/s, batch 256, compiled", ">= 5,000", s2_256, lambda v: v >= 5000),
        ("stage 2 peak GiB, batch 64, full", "<= 4.0", mem, lambda v: v <= 4.0),
        ("stage 2 peak GiB, batch 64, LoRA", "< full", mem_lora, lambda v: mem is not None and v < mem),
        ("stage 1 ms/step, 64 prompts", "<= 5", s1, lambda v: v <= 5.0),
        ("no per-step host sync (stage 1)", "none left", None if not sync_left else not any(sync_left), bool),
        ("CMC/mAP s, Market size", "<= 0.05", market, lambda v: v <= 0.05),
        ("CMC/mAP s, MSMT17 size", "<= 0.3", msmt, lambda v: v <= 0.3),
        ("CMC/mAP agrees with numpy", "yes", all(agree) if agree else None, bool),
        ("input img/s, device cache", ">= 5,000", cache, lambda v: v >= 5000),
        ("stage 2 RN50 img/s, batch 64 (ftclip)", ">= 2,000", rn50, lambda v: v >= 2000),
        ("fit: bare steps / fit time", ">= 0.9", fit, lambda v: v >= 0.9),
    ]
    out = []
    for name, target, value, ok in table:
        out.append({"target": name, "goal": target, "measured": value,
                    "met": None if value is None or smoke else bool(ok(value))})
    return out


def print_targets(table: list[dict], smoke: bool) -> None:
    print("== targets" + (" (smoke run: figures of a tiny model on the CPU, targets not judged)" if smoke else ""))
    for t in table:
        value = t["measured"]
        shown = "not measured" if value is None else (f"{value:,.3f}" if isinstance(value, float) else str(value))
        verdict = "" if t["met"] is None else ("met" if t["met"] else "MISSED")
        print(f"  {t['target']:<40} {t['goal']:>10} {shown:>14}  {verdict}")


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="a subset, run in the suite's order")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all selected parts together (default 480; --smoke: 600, a backstop only)")
    parser.add_argument("--smoke", action="store_true", help="the same code paths on the CPU at tiny sizes")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gpu_suite.json")
    parser.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir()) / "ftclip_gpu_suite",
                        help="where the synthetic set is written (reused by later runs)")
    args = parser.parse_args(argv)
    args.parts = [p for p in PARTS if p in args.parts]
    if args.budget is None:
        args.budget = 600.0 if args.smoke else 480.0
    if args.budget <= 0:
        parser.error("--budget must be positive")
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device is visible to torch; on a machine without a GPU use --smoke")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    sizes = smoke_sizes() if args.smoke else gpu_sizes()
    if args.smoke:
        # one intra-op thread (unless OMP_NUM_THREADS says otherwise; `ftclip fit` then keeps it too): on a
        # small shared CPU more threads make every small op wait at OpenMP barriers (benchmarks/RESULTS.md)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        register_tiny_fastvit(Path(tempfile.mkdtemp(prefix="ftclip_gpu_suite_")))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.set_float32_matmul_precision("high")  # as `ftclip fit` sets it on CUDA
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(0)
    suite = Suite(args, sizes, device)
    print(f"gpu_suite{' --smoke' if args.smoke else ''} on {suite.report['device']}, torch {torch.__version__}, "
          f"budget {args.budget:.0f} s, parts: {' '.join(args.parts)}", flush=True)
    with compile_backend(sizes.compile_backend):
        return suite.run(args.parts)


if __name__ == "__main__":
    sys.exit(main())
