"""The synthetic IQA demo end to end: training must rank true degradation levels better than the untrained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftclip.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_improves_srcc_against_the_true_degradation_level(tmp_path):
    run_dir = tmp_path / "run"
    rc = main(["fit", str(REPO / "recipes/demo/iqa_synthetic.yaml"), f"run.dir={run_dir}",
               f"data.synthetic_dir={tmp_path / 'data'}"])
    assert rc == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    before, after = metrics["initial"]["synthetic/srcc"], metrics["qualiclip"]["synthetic/srcc"]
    assert after > before + 0.3, (before, after)
    assert after > 0.3
    assert (run_dir / "plots" / "qualiclip_synthetic_scatter.png").is_file()
