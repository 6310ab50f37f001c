"""The run's shared plots (matplotlib, no display needed), from the stage histories and ``metrics.json``.

* ``<stage>_loss.png``: every ``train/*`` value the stage logged, per logged step (small markers) and
  as epoch means (large markers), so a stage of one step or one epoch still shows its point;
  curves that are the same line (stage 1's ``loss`` is its ``supcon``) are drawn once, labelled
  ``loss = supcon``.
* ``<stage>_lr.png``: the learning rate of each epoch.
* ``metrics.png``: every metric the task logs (``val/<name>``), at every evaluation of the run:
  before training, during each stage (``eval_every``) and after it, over the run's epochs.

Task plots (re-ID rank list and CMC, IQA scatter and best/worst grid) live in the task folders and
are drawn by ``StagedModule.on_stage_end``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ftclip.io import atomic_write  # noqa: E402
from ftclip.logs import is_metric_key, is_number  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return Path(path)


def _same_lines(series: dict[str, tuple[list[float], list[float]]]) -> list[tuple[list[str], tuple]]:
    """Group series that are the same line: ``[(names, (xs, ys)), ...]`` in first-seen order."""
    groups: list[tuple[list[str], tuple]] = []
    for name, line in series.items():
        for names, other in groups:
            if other == line:
                names.append(name)
                break
        else:
            groups.append(([name], line))
    return groups


def plot_losses(rows: list[dict], out: Path, stage: str) -> Path | None:
    """``out``: the stage's ``train/*`` values per logged step and per epoch (see the module docstring)."""
    steps: dict[str, tuple[list[float], list[float]]] = {}
    epochs: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if not key.startswith("train/"):
                continue
            name = key.split("/", 1)[1]
            target = epochs if name.endswith("_epoch") else steps
            xs, ys = target.setdefault(name.removesuffix("_epoch"), ([], []))
            xs.append(row.get("step", len(xs)))
            ys.append(value)
    if not steps and not epochs:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(dict.fromkeys([*steps, *epochs]))
    groups = _same_lines({n: (tuple(steps.get(n, ([], []))[0]), tuple(steps.get(n, ([], []))[1]),
                              tuple(epochs.get(n, ([], []))[0]), tuple(epochs.get(n, ([], []))[1])) for n in names})
    for i, (same, (sx, sy, ex, ey)) in enumerate(groups):
        color, label = colors[i % len(colors)], " = ".join(same)
        if sx:
            ax.plot(sx, sy, color=color, marker=".", markersize=4, linewidth=1, alpha=0.6, label=f"{label} (step)")
        if ex:
            ax.plot(ex, ey, color=color, marker="o", markersize=6, linewidth=2, label=f"{label} (epoch mean)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"stage '{stage}': training losses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_lr(rows: list[dict], out: Path, stage: str) -> Path | None:
    """``out``: the learning rate each epoch of the stage trained with."""
    points = [(int(row.get("epoch", 0)) + 1, row["lr"]) for row in rows if "lr" in row]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_title(f"stage '{stage}': learning rate per epoch")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out)


def run_metric_points(stages: list[tuple[str, int, list[dict]]], metrics: dict) -> dict[str, list[tuple[float, float, str]]]:
    """Every evaluation of the run per metric: ``{name: [(run epoch, value, kind), ...]}``; ``kind`` is
    ``initial``, ``during`` (a validation inside a stage) or ``end`` (the evaluation after a stage)."""
    points: dict[str, list[tuple[float, float, str]]] = {}

    def add(name: str, x: float, value, kind: str) -> None:
        if is_metric_key(name) and is_number(value):
            points.setdefault(name, []).append((x, float(value), kind))

    for name, value in metrics.get("initial", {}).items():
        add(name, 0, value, "initial")
    offset = 0
    for stage, epochs, rows in stages:
        for row in rows:
            for key, value in row.items():
                if key.startswith("val/"):
                    add(key.split("/", 1)[1], offset + int(row.get("epoch", 0)) + 1, value, "during")
        if stage in metrics:
            trained = int(metrics[stage].get("stopped_early_at_epoch", epochs))
            for name, value in metrics[stage].items():
                add(name, offset + trained, value, "end")
        offset += epochs
    return points


def plot_run_metrics(out: Path, stages: list[tuple[str, int, list[dict]]], metrics: dict) -> Path | None:
    """``out``: each metric over the run (``stages``: ``(name, epochs, history rows)`` in recipe order)."""
    points = run_metric_points(stages, metrics)
    if not points:
        return None
    cols = min(3, len(points))
    rows_n = -(-len(points) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    boundaries, offset = [], 0
    for stage, epochs, _ in stages:
        boundaries.append((offset, offset + epochs, stage))
        offset += epochs
    for ax, (name, pts) in zip(axes.flat, points.items()):
        pts = sorted(pts, key=lambda p: (p[0], p[2] != "during"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="0.6", linewidth=1)
        for kind, marker, label in (("initial", "D", "before training"), ("during", "o", "during a stage"),
                                    ("end", "s", "after a stage")):
            sel = [p for p in pts if p[2] == kind]
            if sel:
                ax.plot([p[0] for p in sel], [p[1] for p in sel], linestyle="none", marker=marker, markersize=6,
                        label=label)
        for start, _, stage in boundaries:
            ax.axvline(start, color="0.85", linestyle=":", linewidth=1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch of the run", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(points):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    names = ", ".join(f"{stage} (epochs {start + 1}-{end})" for start, end, stage in boundaries)
    fig.suptitle(f"evaluations: {names}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)
