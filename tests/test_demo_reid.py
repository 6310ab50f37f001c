"""The bundled re-ID demo end to end through the Python API: both stages, progress printed per epoch, mAP
clearly above the untrained model."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_reid_demo_learns(tmp_path, capsys):
    import ftclip  # the Python API trains the demo in three lines

    run = ftclip.fit("recipes/demo/reid_synthetic.yaml", [f"run.dir={tmp_path / 'run'}", f"data.root={tmp_path / 'd'}"])
    print(run.metrics["image"]["mAP"])
    run_dir = run.dir
    out = capsys.readouterr().out
    assert out.count("[prompts] epoch ") == 5 and out.count("[image] epoch ") == 30  # progress: one line per epoch
    assert "[image] epoch 30/30  loss " in out
    assert (run_dir / "report.html").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"initial", "prompts", "image"}
    before, after = metrics["initial"]["mAP"], metrics["image"]["mAP"]
    assert after > 0.12 and after > 5 * before, metrics
    assert metrics["image"]["rank1"] > metrics["initial"]["rank1"] + 0.1
    for stage in ("prompts", "image"):
        assert (run_dir / "checkpoints" / stage / "last.ckpt").is_file()
        assert (run_dir / "logs" / stage / "metrics.csv").is_file()
    assert (run_dir / "plots" / "image_loss.png").is_file()
    assert "data:" in (run_dir / "config.yaml").read_text()
