"""Few-shot plots: confusion matrix, reliability diagram, accuracy against the WiSE-FT alpha (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import multiclass_confusion_matrix  # noqa: E402

from ftclip.io import atomic_write  # noqa: E402
from ftclip.tasks.fewshot.metrics import calibration_bins, expected_calibration_error  # noqa: E402

_NAMED_TICKS = 30  # more classes than this: no class names on the axes


def _save(fig, path: Path) -> Path:
    try:
        fig.tight_layout()
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return Path(path)


def plot_confusion(path: Path, logits: torch.Tensor, labels: torch.Tensor, classnames: list[str], title: str = "") -> Path:
    """Row-normalised confusion matrix (true class rows, predicted class columns)."""
    n = len(classnames)
    matrix = multiclass_confusion_matrix(logits.argmax(dim=1), labels, n, normalize="true").numpy()
    size = min(12.0, 3.0 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if n <= _NAMED_TICKS:
        ax.set_xticks(range(n), classnames, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classnames, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = float((logits.argmax(dim=1) == labels).double().mean())
    ax.set_title(f"{title}  accuracy {accuracy:.3f}  (n={len(labels)})", fontsize=9)
    return _save(fig, path)


def plot_reliability(path: Path, logits: torch.Tensor, labels: torch.Tensor, title: str = "") -> Path:
    """Accuracy against confidence per bin (the 15 bins of the ECE), with the diagonal of perfect calibration."""
    bins = calibration_bins(logits, labels)
    edges = bins["edges"].numpy()
    width = edges[1] - edges[0]
    filled = bins["count"].numpy() > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.bar(edges[:-1][filled], bins["accuracy"].numpy()[filled], width=width, align="edge", edgecolor="black",
           label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="calibrated")
    ax.scatter((edges[:-1] + width / 2)[filled], bins["confidence"].numpy()[filled], color="red", s=10,
               label="mean confidence", zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top softmax probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"{title}  ECE {expected_calibration_error(logits, labels):.3f}", fontsize=9)
    return _save(fig, path)


def plot_wise(path: Path, sweep: dict[str, dict[str, float]], title: str = "") -> Path:
    """Every accuracy of the sweep (target test set, retain set, base/new/hm) against alpha."""
    alphas = [float(a) for a in sweep]
    keys = sorted({k for values in sweep.values() for k in values})
    fig, ax = plt.subplots(figsize=(5, 4))
    for key in keys:
        ax.plot(alphas, [sweep[a].get(key, float("nan")) for a in sweep], marker="o", label=key)
    ax.set_xlabel("alpha (0 = zero-shot, 1 = fine-tuned)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)
