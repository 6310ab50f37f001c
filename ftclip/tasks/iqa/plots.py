"""IQA plots of an evaluation: predicted quality score and its log-odds against MOS, and the best and worst
scored images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ftclip.data.images import read_image
from ftclip.errors import DataError
from ftclip.plots import plt, save_figure
from ftclip.tasks.iqa.metrics import evaluate_iqa

EXTREMES = 5  # images per row of the best/worst grid


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
    return save_figure(fig, Path(path))


def plot_extremes(path: Path, paths: list[str], preds: list[float], mos: list[float], logits: list[float] | None = None,
                  title: str = "", k: int = EXTREMES) -> Path | None:
    """Two rows: the ``k`` highest scored images (top) and the ``k`` lowest (bottom), with score and MOS;
    ranked by the log-odds where given (scores that saturate at 0 or 1 tie, their log-odds do not)."""
    if not paths or len(paths) != len(preds):
        return None
    rank = logits if logits is not None and len(logits) == len(preds) else preds
    order = sorted(range(len(preds)), key=lambda i: (-rank[i], i))
    k = min(k, max(1, len(order) // 2))
    rows = [("best scored", order[:k]), ("worst scored", order[::-1][:k])]
    fig, axes = plt.subplots(2, k, figsize=(2.0 * k, 4.6), squeeze=False)
    for (label, picks), row in zip(rows, axes):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(picks):
                ax.axis("off")
                continue
            i = picks[j]
            try:
                ax.imshow(read_image(paths[i]))
            except DataError:  # an image that vanished since the evaluation: leave the cell blank
                ax.imshow(np.full((8, 8, 3), 255, np.uint8))
            ax.set_title(f"score {preds[i]:.3f}\nMOS {mos[i]:.3g}", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(f"{title}: best and worst scored images", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(path))
