"""benchmarks/gpu_suite.py: the GPU suite keeps working between GPU windows (issue 16).

The slow test runs ``--smoke`` (every part, tiny, on the CPU, every branch the GPU run takes:
bf16 autocast, fused Adam, channels-last, the device cache, torch.compile) and checks that every
part reported figures. The fast ones check the suite's promises for a GPU window: a failing part
is recorded and the others still run, and a part past its budget is stopped.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ["stage2", "stage1", "input", "eval", "towers", "fit"]


@pytest.fixture(scope="module")
def gpu_suite():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield importlib.import_module("gpu_suite")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.mark.slow
def test_smoke_run_reports_figures_for_every_part(tmp_path):
    out = tmp_path / "gpu_suite.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--smoke", "--out", str(out),
                           "--data-root", str(tmp_path / "data")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["precision"] == "bf16 autocast" and report["fused_adam"]
    assert report["compile_backend"] == "aot_eager"
    parts = report["parts"]
    assert list(parts) == PARTS
    for name, part in parts.items():
        assert part["status"] == "done", (name, part.get("error"), part.get("traceback"))
        assert part["rows"] and not part["skipped"], name
    stage2 = parts["stage2"]["rows"]  # full and LoRA, eager and compiled, both implementations measured
    assert sorted((r["method"], r["compiled"]) for r in stage2) == [("full", False), ("full", True),
                                                                      ("lora", False), ("lora", True)]
    assert all(r[impl]["per_s"] > 0 for r in stage2 for impl in ("plain", "ftclip"))
    stage1 = parts["stage1"]["rows"]
    assert [r["compiled"] for r in stage1] == [False, True]
    assert all(r[impl]["step_ms"] > 0 for r in stage1 for impl in ("plain", "ftclip", "lightning"))
    # no host read on most steps, in ftclip's step or under Lightning (the NaN guard reads every 16 steps)
    assert stage1[0]["per_step_sync_left"] is False, (stage1[0]["ftclip_host_reads"], stage1[0]["lightning_host_reads"])
    assert {r["path"] for r in parts["input"]["rows"]} == {"device_cache", "jpeg"}
    assert all(r["images_per_s"] > 0 for r in parts["input"]["rows"])
    assert all(r["agrees"] for r in parts["eval"]["rows"])
    towers = parts["towers"]["rows"]
    assert len(towers) == 2 and all(r["plain"]["per_s"] > 0 for r in towers)
    assert all("per_s" in r["ftclip"] or r["ftclip"]["not_supported"] for r in towers)
    fits = parts["fit"]["rows"]
    assert {r["data"].split(",")[0] for r in fits} == {"device_cache", "jpeg"}
    for row in fits:
        assert row["steps"] == report["sizes"]["fit_steps"] and row["stage_fit_s"] > 0 and row["bare_s"] > 0
        assert row["checkpoints"] >= 1 and row["steady_step_ms"] > 0
    assert {t["target"] for t in report["targets"]} and all(t["met"] is None for t in report["targets"])
    assert time.perf_counter() - start < 600


def _suite(gpu_suite, tmp_path, budget: float):
    import torch

    args = gpu_suite.parse_args(["--smoke", "--out", str(tmp_path / "out.json"), "--budget", str(budget)])
    sizes = gpu_suite.smoke_sizes()
    return gpu_suite.Suite(args, type(sizes)(**{**vars(sizes), "skip_by_budget": True}), torch.device("cpu"))


def test_a_failing_part_is_recorded_and_the_next_one_runs(gpu_suite, tmp_path, monkeypatch):
    def broken(suite, part):
        suite.add({"figure": 1.0}, "one row measured before the failure")
        raise ValueError("a broken part")

    def fine(suite, part):
        suite.add({"figure": 2.0}, "a row")

    monkeypatch.setitem(gpu_suite.PART_FUNCTIONS, "stage1", broken)
    monkeypatch.setitem(gpu_suite.PART_FUNCTIONS, "eval", fine)
    suite = _suite(gpu_suite, tmp_path, 60)
    assert suite.run(["stage1", "eval"]) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    stage1, ev = report["parts"]["stage1"], report["parts"]["eval"]
    assert stage1["status"] == "error" and stage1["error"] == "ValueError: a broken part"
    assert stage1["rows"] == [{"figure": 1.0}]  # what it measured before failing is kept
    assert ev["status"] == "done" and ev["rows"] == [{"figure": 2.0}]


def test_a_part_past_its_budget_is_stopped_and_nothing_measured_means_exit_1(gpu_suite, tmp_path, monkeypatch):
    def endless(suite, part):
        while True:
            time.sleep(0.01)

    monkeypatch.setitem(gpu_suite.PART_FUNCTIONS, "eval", endless)
    suite = _suite(gpu_suite, tmp_path, 0.3)
    suite.grace_s = 0.2
    start = time.perf_counter()
    assert suite.run(["eval"]) == 1
    assert time.perf_counter() - start < 5
    part = json.loads((tmp_path / "out.json").read_text())["parts"]["eval"]
    assert part["status"] == "timeout" and "watchdog" in part["error"]


def test_a_case_that_does_not_fit_the_time_left_is_skipped(gpu_suite):
    part = gpu_suite.Part("stage2", budget_s=10.0)
    assert part.fits("small", 5.0)
    assert not part.fits("compiled", 60.0)
    assert part.skipped == [{"case": "compiled", "estimate_s": 60.0, "left_s": pytest.approx(10.0, abs=0.5)}]
