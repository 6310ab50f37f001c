"""How fast is ftclip's CMC/mAP evaluation, and does it agree with the classic per-query loop?

    python benchmarks/eval_speed.py [--device cpu|cuda] [--sizes market msmt17] [--out benchmarks/out/eval_speed.json]

Times :func:`ftclip.tasks.reid.metrics.evaluate_reid` on random L2-normalised 1280-d features with
Market-1501 (3,368 x 15,913) and MSMT17 (11,659 x 82,161) sized query/gallery sets, identity
structure, cameras and distractors, against a numpy reference written as the classic evaluation
loop (distance matrix, argsort, per-query filtering). Where the full reference would not fit in
memory or time, it runs on the first ``--ref-queries`` queries and its time is extrapolated
linearly (marked in the table and JSON); agreement is then checked on that subset.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import device_name, sync

from ftclip.tasks.reid.metrics import evaluate_reid

DIM = 1280
SIZES: dict[str, dict[str, int]] = {
    # queries, gallery (junk already removed), identities, cameras, distractors (pid 0)
    "market": {"num_q": 3368, "num_g": 15913, "num_ids": 750, "num_cams": 6, "distractors": 2793},
    "msmt17": {"num_q": 11659, "num_g": 82161, "num_ids": 3060, "num_cams": 15, "distractors": 0},
}
DEFAULT_REF_QUERIES = {"market": None, "msmt17": 1000}  # None = all queries
TOLERANCE = 1e-4  # float32 distances from numpy and torch round differently near ties


def make_split(num_q: int, num_g: int, num_ids: int, num_cams: int, distractors: int, seed: int = 0) -> dict:
    """Random normalised features clustered by identity, with realistic pids and cameras."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(num_ids + 1, DIM, generator=gen)
    q_pids = torch.randint(1, num_ids + 1, (num_q,), generator=gen)
    extra = torch.randint(1, num_ids + 1, (num_g - num_ids - distractors,), generator=gen)
    g_pids = torch.cat([torch.arange(1, num_ids + 1), extra])  # every identity at least once
    g_pids = torch.cat([g_pids, torch.zeros(distractors, dtype=torch.int64)])[torch.randperm(num_g, generator=gen)]
    q_cams = torch.randint(0, num_cams, (num_q,), generator=gen)
    g_cams = torch.randint(0, num_cams, (num_g,), generator=gen)

    def feats(pids: torch.Tensor) -> torch.Tensor:
        own = torch.where(pids[:, None] > 0, centers[pids], torch.randn(len(pids), DIM, generator=gen))
        return torch.nn.functional.normalize(own + 3.0 * torch.randn(len(pids), DIM, generator=gen), dim=1)

    return {"qf": feats(q_pids), "gf": feats(g_pids), "qp": q_pids, "gp": g_pids, "qc": q_cams, "gc": g_cams}


def numpy_reference(
    qf: np.ndarray, gf: np.ndarray, qp: np.ndarray, gp: np.ndarray, qc: np.ndarray, gc: np.ndarray, max_rank: int = 50
) -> dict:
    """The classic evaluation loop: full distance matrix, argsort, then one query at a time."""
    distmat = (qf**2).sum(1)[:, None] + (gf**2).sum(1)[None, :] - 2.0 * qf @ gf.T
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (gp[indices] == qp[:, None]).astype(np.int32)
    all_cmc, all_ap = [], []
    for i in range(len(qp)):
        order = indices[i]
        keep = (gp[order] != -1) & ~((gp[order] == qp[i]) & (gc[order] == qc[i]))
        raw = matches[i][keep]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = raw.cumsum() / (np.arange(len(raw)) + 1.0)
        all_ap.append((precision * raw).sum() / raw.sum())
    cmc_mean = np.asarray(all_cmc, dtype=np.float64).mean(0)
    return {"mAP": float(np.mean(all_ap)), "cmc": cmc_mean.tolist(), "num_valid_queries": len(all_ap)}


def _first_queries(args: list, n: int) -> list:
    """(qf, gf, qp, gp, qc, gc) restricted to the first ``n`` queries."""
    qf, gf, qp, gp, qc, gc = args
    return [qf[:n], gf, qp[:n], gp, qc[:n], gc]




def time_ours(split: dict, device: torch.device, repeat: int) -> tuple[float, float, dict]:
    """Best wall and process-CPU seconds of ``repeat`` runs, after a warm-up, on device-resident features."""
    args = [split[k].to(device) for k in ("qf", "gf", "qp", "gp", "qc", "gc")]
    evaluate_reid(*_first_queries(args, 256))  # warm-up
    sync(device)
    best, best_cpu, result = float("inf"), float("inf"), {}
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = evaluate_reid(*args)
        sync(device)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best, best_cpu, result


def run_size(name: str, device: torch.device, repeat: int, ref_queries: int | None,
             size: dict[str, int] | None = None) -> dict[str, Any]:
    """One work size (``SIZES[name]``, or ``size`` with the same keys) timed and checked against the reference."""
    split = make_split(**(size or SIZES[name]))
    num_q, num_g = len(split["qp"]), len(split["gp"])
    seconds, cpu_seconds, ours = time_ours(split, device, repeat)

    n_ref = num_q if ref_queries is None else min(ref_queries, num_q)
    ref_args = _first_queries([split[k].numpy() for k in ("qf", "gf", "qp", "gp", "qc", "gc")], n_ref)
    start, start_cpu = time.perf_counter(), time.process_time()
    ref = numpy_reference(*ref_args)
    ref_seconds = (time.perf_counter() - start) * num_q / n_ref
    ref_cpu_seconds = (time.process_time() - start_cpu) * num_q / n_ref
    ours_sub = ours
    if n_ref < num_q:
        ours_sub = evaluate_reid(*_first_queries([split[k] for k in ("qf", "gf", "qp", "gp", "qc", "gc")], n_ref))
    diff = max(abs(ours_sub["mAP"] - ref["mAP"]), float(np.max(np.abs(np.subtract(ours_sub["cmc"], ref["cmc"])))))
    return {
        "work": name,
        "num_query": num_q,
        "num_gallery": num_g,
        "dim": DIM,
        "device": str(device),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # process CPU time, all threads: steadier than wall time on a busy host
        "ref_seconds": ref_seconds,
        "ref_cpu_seconds": ref_cpu_seconds,
        "ref_queries": n_ref,
        "ref_extrapolated": n_ref < num_q,
        "speedup": ref_seconds / seconds,
        "mAP": ours["mAP"],
        "rank1": ours["rank1"],
        "max_abs_diff_vs_ref": diff,
        "agrees": diff <= TOLERANCE and ours_sub["num_valid_queries"] == ref["num_valid_queries"],
    }




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", nargs="+", default=["market", "msmt17"], choices=sorted(SIZES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/eval_speed.json"))
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of evaluate_reid; the best is reported")
    parser.add_argument(
        "--ref-queries", type=int, default=None,
        help="queries for the numpy reference (default: all for market, 1000 for msmt17)",
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    device = torch.device(args.device)

    rows = []
    for name in args.sizes:
        ref_queries = args.ref_queries if args.ref_queries is not None else DEFAULT_REF_QUERIES[name]
        rows.append(run_size(name, device, args.repeat, ref_queries))

    header = (
        f"{'work':<8} {'queries x gallery':>18} {'device':<7} {'seconds':>8} {'ref seconds':>12} {'speedup':>8}"
        "  agrees (max |diff|)"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        ref = f"{r['ref_seconds']:.2f}" + ("*" if r["ref_extrapolated"] else "")
        print(
            f"{r['work']:<8} {r['num_query']:>8,} x {r['num_gallery']:<7,} {r['device']:<7} {r['seconds']:>8.3f} "
            f"{ref:>12} {r['speedup']:>7.1f}x  {'yes' if r['agrees'] else 'NO'} ({r['max_abs_diff_vs_ref']:.1e})"
            f"  mAP {r['mAP']:.4f} R1 {r['rank1']:.4f}"
        )
    if any(r["ref_extrapolated"] for r in rows):
        print("* numpy reference run on a subset of the queries; time extrapolated linearly to all queries, "
              "agreement checked on that subset.")
    report = {
        "device_name": device_name(device),
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tolerance": TOLERANCE,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not all(r["agrees"] for r in rows):
        raise SystemExit("evaluate_reid disagrees with the numpy reference beyond the tolerance")


if __name__ == "__main__":
    main()
