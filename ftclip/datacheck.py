"""``ftclip data check RECIPE``: parse a recipe's data, decode every image, report problems.

Works for any task through the task contract (ftclip/tasks/base.py): ``task.check_config``,
``task.build_datamodule(cfg)`` (parsing only: the image check is done here so that *every*
unreadable file is listed, not just the first), ``datamodule.check_splits()`` (``{split:
[(path, {label: value}), ...]}``) and ``task.data_warnings`` for what only the task knows.

Errors (non-zero exit): the data set cannot be parsed (missing root, unknown layout, bad CSV,
empty split, no query/gallery identity in common), unreadable images (zero-byte, corrupt),
and the same image content in both a training and an evaluation split (leakage).
Warnings: duplicate files within a split, and the task's own (re-ID: identities with fewer than K
images, query identities with no gallery image from another camera).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from ftclip.data.images import check_images
from ftclip.errors import FtclipError
from ftclip.tasks import get_task

_SHOW = 5
TRAIN_SPLITS = ("train", "unlabeled", "labeled")


@dataclass
class DataReport:
    """What ``ftclip data check`` prints (``text``) and whether it failed (``errors``)."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        out = list(self.lines)
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"error: {e}" for e in self.errors]
        out.append(f"data check: {'FAILED, ' + str(len(self.errors)) + ' error(s)' if self.errors else 'ok'}"
                   + (f", {len(self.warnings)} warning(s)" if self.warnings else ""))
        return "\n".join(out)


def _few(items) -> str:
    items = list(items)
    return ", ".join(str(i) for i in items[:_SHOW]) + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def _hash(path: str) -> str | None:
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _describe(name: str, items: list[tuple[str, dict]]) -> dict[str, Any]:
    info: dict[str, Any] = {"images": len(items)}
    ids = {labels["id"] for _, labels in items if "id" in labels and labels["id"] != -1}
    cams = {labels["camera"] for _, labels in items if "camera" in labels}
    mos = [labels["mos"] for _, labels in items if "mos" in labels]
    if any("id" in labels for _, labels in items):
        info["ids"] = len(ids)
    if cams:
        info["cameras"] = len(cams)
    if mos:
        info["mos"] = (min(mos), max(mos))
    return info


def check_recipe_data(cfg) -> DataReport:
    """Parse ``cfg``'s data through its task, decode every image, find duplicates; never trains."""
    report = DataReport()
    task = get_task(str(cfg.task))
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # a copy: the check changes data.*
    policy = str(cfg.data.get("on_bad_image", "error"))
    if "check_images" in cfg.data:
        cfg.data.check_images = False  # decoded below, every file, so all bad ones are listed
    try:
        task.check_config(cfg)
        datamodule = task.build_datamodule(cfg)
    except FtclipError as exc:
        report.errors.append(str(exc))
        return report
    splits = datamodule.check_splits()
    report.lines.append(f"task {cfg.task}: {datamodule.summary().splitlines()[0]}")
    report.lines.append(f"  {'split':<16}{'images':>8}{'ids':>7}{'cameras':>9}  other")
    for name, items in splits.items():
        info = _describe(name, items)
        report.splits[name] = info
        other = f"MOS {info['mos'][0]:.3g}..{info['mos'][1]:.3g}" if "mos" in info else ""
        report.lines.append(f"  {name:<16}{info['images']:>8}{info.get('ids', '-'):>7}{info.get('cameras', '-'):>9}  {other}")

    # every image decoded once
    paths = sorted({path for items in splits.values() for path, _ in items})
    workers = max(1, int(cfg.data.get("num_workers", 1) or 1))
    _, bad = check_images(paths, policy="skip", workers=workers)
    report.unreadable = bad
    report.lines.append(f"decoded {len(paths) - len(bad)} of {len(paths)} image files")
    if bad:
        what = "skipped by training (data.on_bad_image=skip)" if policy == "skip" else "training stops on them"
        message = f"{len(bad)} unreadable image(s) ({what}): {_few(p for p, _ in bad)}; first: {bad[0][1]}"
        (report.warnings if policy == "skip" else report.errors).append(message)

    # duplicates: same bytes under different paths
    by_hash: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        digest = _hash(path)
        if digest is not None:
            by_hash[digest].append(path)
    split_of: dict[str, set[str]] = defaultdict(set)
    for name, items in splits.items():
        for path, _ in items:
            split_of[path].add(name)
    report.duplicates = [group for group in by_hash.values() if len(group) > 1]
    if report.duplicates:
        report.lines.append(f"{len(report.duplicates)} group(s) of identical files, e.g. {_few(report.duplicates[0])}")
    leaks = []
    for group in report.duplicates + [[p] for p, s in split_of.items() if len(s) > 1]:
        names = set().union(*(split_of[p] for p in group))
        if names & set(TRAIN_SPLITS) and any(n not in TRAIN_SPLITS for n in names):
            leaks.append(group)
    if leaks:
        report.errors.append(f"{len(leaks)} image(s) appear in both a training and an evaluation split "
                             f"(same content): {_few(g[0] for g in leaks)}; remove them from one side")
    elif report.duplicates:
        report.warnings.append(f"{sum(len(g) - 1 for g in report.duplicates)} duplicate file(s) within splits: "
                               f"{_few(' = '.join(g) for g in report.duplicates)}")

    report.warnings += datamodule.notes
    report.warnings += task.data_warnings(cfg, splits)
    return report
