"""The few-shot protocol: K shots per class, a small val set, the base-to-new class split.

Every draw is keyed by ``(seed, stream, class key)`` (:func:`keyed_rng`), so

* the K-shot set is a pure function of the data set, K and the seed -- the same for every
  method, every run and every machine;
* a class's draw does not depend on the other classes (adding, removing or renaming a class
  changes nothing for the rest);
* the K-shot sets are nested: for one seed, the 1-shot images are among the 2-shot ones,
  which are among the 4-shot ones, and so on (each class's training images, sorted by path, are
  permuted once and the first K taken).

Reference: Dassl's ``DatasetBase.generate_fewshot_dataset`` (used by CoOp, CoCoOp, CLIP-LoRA and
Tip-Adapter) draws ``random.sample(items, K)`` per class from Python's global RNG in label order,
so a class's images depend on every class before it, on what else consumed the RNG, and on
the order each repository calls it in (CoOp draws train then val, CLIP-LoRA val then train): the
released repositories do not share K-shot sets either. Where Dassl keeps *all* images of a class
with fewer than K (``repeat=False``; CLIP-LoRA's copy repeats images, ``repeat=True``), ftclip
refuses with a message naming the classes: a "16-shot" result must not silently be a
fewer-shot one. val follows Dassl: ``min(K, 4)`` per class from the data set's val split when it
has one, else (ftclip; the reference data sets all ship one except ImageNet, where CoOp
validates on the test set) from the training images not drawn as shots; fewer if a class has
no more (listed in :attr:`FewShotSplit.short_val`). test is the whole test split.

Base-to-new (CoCoOp): classes in label order, the first ``ceil(n / 2)`` are base (trained and
tested), the rest new (tested zero-shot); each side is relabelled from 0 as Dassl's
``subsample_classes`` does. Report base, new and their harmonic mean.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ftclip.errors import ConfigError, DataError
from ftclip.tasks.fewshot.dataset import ClassificationData, Item, few

__all__ = [
    "FewShotSplit",
    "keyed_rng",
    "stratified_split",
    "few_shot_split",
    "base_new_classes",
    "subsample_classes",
    "harmonic_mean",
]

# Stream numbers of keyed_rng: one per kind of draw.
_STREAM_TEST_SPLIT, _STREAM_SHOTS, _STREAM_VAL = 1, 2, 3


def keyed_rng(seed: int, stream: int, key: str) -> np.random.Generator:
    """A generator for one draw: ``seed`` (>= 0), a stream number and a class key (CRC-32 of its UTF-8)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    return np.random.default_rng([int(seed), int(stream), zlib.crc32(key.encode("utf-8"))])


def _by_class(items: Sequence[Item], num_classes: int) -> list[list[str]]:
    """Paths per label, each list sorted (so a draw does not depend on listing order)."""
    groups: list[list[str]] = [[] for _ in range(num_classes)]
    for path, label in items:
        groups[label].append(path)
    return [sorted(g) for g in groups]


def _permuted(paths: list[str], seed: int, stream: int, key: str) -> list[str]:
    order = keyed_rng(seed, stream, key).permutation(len(paths))
    return [paths[i] for i in order]


def stratified_split(
    items: Sequence[Item], class_keys: Sequence[str], fraction: float, seed: int, source: str
) -> tuple[list[Item], list[Item]]:
    """Split ``items`` into (train, test) per class: ``round(n * fraction)`` test images, clamped
    to 1..n-1 (half rounds up). Raises DataError naming a class with fewer than 2 images."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.test_fraction must be a number between 0 and 1 (exclusive), got {fraction!r}")
    train: list[Item] = []
    test: list[Item] = []
    for label, paths in enumerate(_by_class(items, len(class_keys))):
        if len(paths) < 2:
            raise DataError(
                f"{source}: class {class_keys[label]!r} has {len(paths)} image(s); splitting off a test set "
                "by data.test_fraction needs at least 2 per class: add images or give a test split"
            )
        n_test = min(max(math.floor(len(paths) * fraction + 0.5), 1), len(paths) - 1)
        drawn = _permuted(paths, seed, _STREAM_TEST_SPLIT, class_keys[label])
        test += [(p, label) for p in sorted(drawn[:n_test])]
        train += [(p, label) for p in sorted(drawn[n_test:])]
    return train, test


@dataclass(frozen=True)
class FewShotSplit:
    """The images one few-shot run sees; labels index ``classnames``."""

    class_keys: tuple[str, ...]
    classnames: tuple[str, ...]
    train: tuple[Item, ...]  # K per class
    val: tuple[Item, ...]  # up to val_shots per class
    test: tuple[Item, ...]  # the whole test split
    shots: int
    val_shots: int
    seed: int
    val_source: str  # "val" (the data set's val split) or "train" (training images not drawn as shots)
    short_val: tuple[str, ...] = ()  # class keys that got fewer than val_shots val images

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1 (images per class), got {value!r}")
    return int(value)


def few_shot_split(
    data: ClassificationData, shots: int, seed: int, val_shots: int | None = None
) -> FewShotSplit:
    """Draw ``shots`` training images per class and ``val_shots`` (default ``min(shots, 4)``) val images.

    Raises ConfigError for ``shots < 1`` and one DataError naming every class with fewer than
    ``shots`` training images. See the module docstring for the rules.
    """
    shots = _check_count("data.shots", shots)
    val_shots = _check_count("data.val_shots", min(shots, 4) if val_shots is None else val_shots)
    keys = data.class_keys
    groups = _by_class(data.train, data.num_classes)
    short = [(keys[c], len(g)) for c, g in enumerate(groups) if len(g) < shots]
    if short:
        fewest = min(n for _, n in short)
        raise DataError(
            f"{data.name}: {len(short)} class(es) have fewer than data.shots={shots} training images: "
            f"{few(f'{k!r} ({n})' for k, n in short)}. Lower data.shots to {fewest}, or add training images "
            "to those classes"
        )
    train: list[Item] = []
    val: list[Item] = []
    short_val: list[str] = []
    val_groups = None if data.val is None else _by_class(data.val, data.num_classes)
    for label, paths in enumerate(groups):
        drawn = _permuted(paths, seed, _STREAM_SHOTS, keys[label])
        train += [(p, label) for p in sorted(drawn[:shots])]
        if val_groups is None:
            picked = drawn[shots:shots + val_shots]
        else:
            picked = _permuted(val_groups[label], seed, _STREAM_VAL, keys[label])[:val_shots]
        val += [(p, label) for p in sorted(picked)]
        if len(picked) < val_shots:
            short_val.append(keys[label])
    return FewShotSplit(
        class_keys=keys,
        classnames=data.classnames,
        train=tuple(train),
        val=tuple(val),
        test=data.test,
        shots=shots,
        val_shots=val_shots,
        seed=int(seed),
        val_source="train" if data.val is None else "val",
        short_val=tuple(short_val),
    )


def base_new_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """(base, new) labels: the first ``ceil(n / 2)`` labels and the rest (Dassl ``subsample_classes``)."""
    if num_classes < 2:
        raise DataError(f"data.split=base2new needs at least 2 classes, the data set has {num_classes}")
    m = math.ceil(num_classes / 2)
    return list(range(m)), list(range(m, num_classes))


def subsample_classes(split: FewShotSplit, which: str) -> FewShotSplit:
    """``split`` restricted to its ``"base"`` or ``"new"`` classes (or ``"all"``), relabelled from 0."""
    if which == "all":
        return split
    if which not in ("base", "new"):
        raise ConfigError(f"class subset {which!r} is not one of all, base, new")
    base, new = base_new_classes(split.num_classes)
    keep = base if which == "base" else new
    relabel = {old: i for i, old in enumerate(keep)}

    def pick(items: tuple[Item, ...]) -> tuple[Item, ...]:
        return tuple((p, relabel[y]) for p, y in items if y in relabel)

    kept_keys = {split.class_keys[i] for i in keep}
    return FewShotSplit(
        class_keys=tuple(split.class_keys[i] for i in keep),
        classnames=tuple(split.classnames[i] for i in keep),
        train=pick(split.train),
        val=pick(split.val),
        test=pick(split.test),
        shots=split.shots,
        val_shots=split.val_shots,
        seed=split.seed,
        val_source=split.val_source,
        short_val=tuple(k for k in split.short_val if k in kept_keys),
    )


def harmonic_mean(base: float, new: float) -> float:
    """``2 * base * new / (base + new)`` (0 when both are 0), as CoCoOp reports base-to-new results."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)
