"""IQA plots: predicted quality score and its log-odds against MOS (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ftclip.io import atomic_write  # noqa: E402
from ftclip.tasks.iqa.metrics import evaluate_iqa  # noqa: E402


def plot_scatter(path: Path, preds: list[float], mos: list[float], logits: list[float] | None = None,
                 title: str = "") -> Path:
    """Predicted score (left) and its log-odds (right) against MOS, with SRCC / PLCC in the title.

    The right panel shows what the score hides when it saturates: how many scores float32 rounds
    to exactly 0 or 1, and the logit margin's range and spread (a spread near 0: the margin
    collapsed and every image scores alike; a spread of tens: the scores are pinned at 0 and 1).
    """
    result = evaluate_iqa(preds, mos, logits)
    panels = 1 if logits is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    ax.scatter(mos, preds, s=8, alpha=0.6)
    ax.set_xlabel("MOS")
    ax.set_ylabel("predicted quality score")
    ax.set_title(f"{title}  SRCC {result['srcc']:.3f}  PLCC {result['plcc']:.3f}  (n={result['num_images']})",
                 fontsize=9)
    if logits is not None:
        z = np.asarray(logits, dtype=np.float64)
        saturated = int(np.isin(torch.sigmoid(torch.from_numpy(z).float()).numpy(), (0.0, 1.0)).sum())
        ax = axes[0, 1]
        ax.scatter(mos, z, s=8, alpha=0.6, color="tab:orange")
        ax.set_xlabel("MOS")
        ax.set_ylabel("log-odds of the score (logit margin)")
        ax.set_title(f"logit range [{z.min():.2f}, {z.max():.2f}], std {z.std():.2f}; "
                     f"{saturated}/{z.size} scores exactly 0 or 1 in float32", fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return Path(path)
