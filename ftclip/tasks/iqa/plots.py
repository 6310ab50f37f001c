"""IQA plots: predicted quality score against MOS (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ftclip.io import atomic_write  # noqa: E402
from ftclip.tasks.iqa.metrics import evaluate_iqa  # noqa: E402


def plot_scatter(path: Path, preds: list[float], mos: list[float], title: str = "") -> Path:
    """Scatter of predicted score (y) against MOS (x), with SRCC / PLCC in the title."""
    result = evaluate_iqa(preds, mos)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(mos, preds, s=8, alpha=0.6)
    ax.set_xlabel("MOS")
    ax.set_ylabel("predicted quality score")
    ax.set_title(f"{title}  SRCC {result['srcc']:.3f}  PLCC {result['plcc']:.3f}  (n={result['num_images']})",
                 fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return Path(path)
