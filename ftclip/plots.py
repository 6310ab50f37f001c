"""Plots written into the run directory (matplotlib, no display needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_stage_losses(run, stage: str) -> Path | None:
    """``plots/<stage>_loss.png``: every ``train/*`` loss logged per step in the stage."""
    csv_path = run.log_dir() / stage / "metrics.csv"
    if not csv_path.is_file():
        return None
    series: dict[str, tuple[list[int], list[float]]] = {}
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            step = row.get("step")
            for key, value in row.items():
                if key.startswith("train/") and value not in (None, "") and step not in (None, ""):
                    xs, ys = series.setdefault(key, ([], []))
                    xs.append(int(float(step)))
                    ys.append(float(value))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, label=key.split("/", 1)[1])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"stage '{stage}'")
    ax.legend()
    fig.tight_layout()
    out = run.plots_dir() / f"{stage}_loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
