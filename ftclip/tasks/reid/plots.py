"""Re-ID plots of an evaluation: the rank list (torchreid ``visrank`` style) and the CMC curve.

The rank list shows a few queries, each followed by its top-ranked gallery images under the
evaluation protocol (junk and same-identity same-camera images removed, ties by gallery index),
framed green where the identity matches and red where it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ftclip.data.images import read_image
from ftclip.errors import DataError
from ftclip.plots import plt, save_figure
from ftclip.tasks.reid.metrics import JUNK_PID

RANKLIST_QUERIES = 5
RANKLIST_TOP = 10


@dataclass
class RankedQuery:
    query: str  # image path
    pid: int
    gallery: list[tuple[str, bool, float]]  # (path, same identity, distance), best first


def rank_lists(qf: torch.Tensor, gf: torch.Tensor, q_pids, g_pids, q_cams, g_cams, q_paths: list[str],
               g_paths: list[str], queries: int = RANKLIST_QUERIES, top: int = RANKLIST_TOP) -> list[RankedQuery]:
    """The top ``top`` gallery images of ``queries`` evenly spread valid queries (L2-normalised features;
    cosine distance, which orders like the squared Euclidean one on unit vectors)."""
    q_pids, g_pids = torch.as_tensor(q_pids), torch.as_tensor(g_pids)
    q_cams, g_cams = torch.as_tensor(q_cams), torch.as_tensor(g_cams)
    same = q_pids[:, None] == g_pids[None, :]
    removed = (g_pids[None, :] == JUNK_PID) | (same & (q_cams[:, None] == g_cams[None, :]))
    valid = torch.nonzero((same & ~removed).any(1)).flatten().tolist()
    if not valid:
        return []
    picks = sorted({valid[int(round(i))] for i in np.linspace(0, len(valid) - 1, min(queries, len(valid)))})
    out = []
    for q in picks:
        dist = 1.0 - (gf.float() @ qf[q].float()).cpu()
        keep = torch.nonzero(~removed[q]).flatten()
        order = keep[torch.sort(dist[keep], stable=True).indices][:top].tolist()
        out.append(RankedQuery(q_paths[q], int(q_pids[q]),
                               [(g_paths[g], bool(same[q, g]), float(dist[g])) for g in order]))
    return out


def _show(ax, path: str, color: str | None, title: str, size: tuple[int, int]) -> None:
    import cv2

    try:
        image = cv2.resize(read_image(path), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    except DataError:  # an image that vanished since the evaluation: leave the cell blank
        image = np.full((size[0], size[1], 3), 255, np.uint8)
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)
    for spine in ax.spines.values():
        spine.set_edgecolor(color or "black")
        spine.set_linewidth(4 if color else 1)


def plot_rank_list(path: Path, ranked: list[RankedQuery], title: str, size: tuple[int, int] = (128, 64)) -> Path | None:
    """One row per query: the query (black frame) then its top gallery images (green: same identity)."""
    if not ranked:
        return None
    cols = 1 + max(len(r.gallery) for r in ranked)
    fig, axes = plt.subplots(len(ranked), cols, figsize=(1.1 * cols, 2.2 * len(ranked)), squeeze=False)
    for row, r in zip(axes, ranked):
        _show(row[0], r.query, None, f"query\nid {r.pid}", size)
        for k, ax in enumerate(row[1:]):
            if k < len(r.gallery):
                g, match, dist = r.gallery[k]
                _show(ax, g, "#1a9850" if match else "#d73027", f"{k + 1}\n{dist:.3f}", size)
            else:
                ax.axis("off")
    fig.suptitle(f"{title}: top-{cols - 1} gallery per query (green: same identity, red: another; cosine distance)",
                 fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_cmc(path: Path, cmc: list[float], mAP: float, title: str) -> Path | None:
    """CMC curve (matching rate within the first k ranks) with rank-1/5/10 marked."""
    if not cmc:
        return None
    ranks = np.arange(1, len(cmc) + 1)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(ranks, cmc, marker=".", markersize=4)
    for k in (1, 5, 10):
        if k <= len(cmc):
            ax.plot([k], [cmc[k - 1]], marker="o", color="C3")
            ax.annotate(f"rank-{k} {cmc[k - 1]:.3f}", (k, cmc[k - 1]), textcoords="offset points", xytext=(6, -12),
                        fontsize=8)
    ax.set_xlabel("rank k")
    ax.set_ylabel("matching rate within k")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}: CMC (mAP {mAP:.3f})", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
