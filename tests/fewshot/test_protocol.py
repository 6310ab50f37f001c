"""The K-shot protocol: deterministic, stratified, nested, independent of other classes; base-to-new."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ftclip.errors import ConfigError, DataError
from ftclip.tasks.fewshot.dataset import build_data
from ftclip.tasks.fewshot.protocol import (
    base_new_classes,
    few_shot_split,
    harmonic_mean,
    subsample_classes,
)


def _data(counts: dict[str, int], val: dict[str, int] | None = None, test: int = 2):
    """A data set of fake paths (nothing is read): counts = training images per class key."""
    keys = sorted(counts)
    train = [(f"/d/train/{k}/{i:03d}.png", c) for c, k in enumerate(keys) for i in range(counts[k])]
    tst = [(f"/d/test/{k}/{i}.png", c) for c, k in enumerate(keys) for i in range(test)]
    vl = None if val is None else [(f"/d/val/{k}/{i}.png", c) for c, k in enumerate(keys) for i in range(val.get(k, 0))]
    return build_data("folder", Path("/d"), keys, keys, train, vl, tst, ("a photo of a {}.",), "test data")


def _per_class(items) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for p, y in items:
        out.setdefault(y, []).append(p)
    return out


def test_k_shots_per_class_deterministic_and_seeded() -> None:
    data = _data({"cat": 20, "dog": 9, "owl": 16})
    a, b = few_shot_split(data, 4, seed=1), few_shot_split(data, 4, seed=1)
    assert a == b
    assert {y: len(p) for y, p in _per_class(a.train).items()} == {0: 4, 1: 4, 2: 4}
    assert {y: len(p) for y, p in _per_class(a.val).items()} == {0: 4, 1: 4, 2: 4}  # min(K, 4) from the rest
    assert not set(a.train) & set(a.val) and set(a.train) | set(a.val) <= set(data.train)
    assert a.test == data.test and a.val_source == "train" and a.short_val == ()
    assert few_shot_split(data, 4, seed=2).train != a.train
    assert few_shot_split(data, 2, seed=1).val_shots == 2 and few_shot_split(data, 8, seed=1).val_shots == 4


def test_shots_are_nested_and_a_class_ignores_the_others() -> None:
    data = _data({"cat": 20, "dog": 16, "owl": 18})
    one, four, sixteen = (set(few_shot_split(data, k, seed=3).train) for k in (1, 4, 16))
    assert one < four < sixteen
    fewer = _data({"cat": 20, "owl": 18})  # 'dog' removed: labels shift, draws do not
    keep = {p for p, _ in few_shot_split(data, 4, seed=3).train if "/dog/" not in p}
    assert {p for p, _ in few_shot_split(fewer, 4, seed=3).train} == keep


def test_listing_order_does_not_change_the_draw() -> None:
    data = _data({"cat": 12, "dog": 12})
    shuffled = build_data("folder", data.root, data.class_keys, data.classnames, list(reversed(data.train)),
                          None, data.test, data.templates, "test data")
    assert few_shot_split(shuffled, 3, seed=0).train == few_shot_split(data, 3, seed=0).train


def test_val_from_the_given_val_split() -> None:
    data = _data({"cat": 8, "dog": 8}, val={"cat": 10, "dog": 2})
    s = few_shot_split(data, 8, seed=0)
    assert s.val_source == "val" and all("/val/" in p for p, _ in s.val)
    assert {y: len(p) for y, p in _per_class(s.val).items()} == {0: 4, 1: 2}
    assert s.short_val == ("dog",)


def test_fewer_than_k_images_and_bad_k_are_refused() -> None:
    data = _data({"cat": 20, "dog": 3, "owl": 5})
    with pytest.raises(DataError, match=r"2 class\(es\) have fewer than data.shots=8 .*'dog' \(3\), 'owl' \(5\)\. Lower data.shots to 3"):
        few_shot_split(data, 8, seed=0)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="data.shots must be an integer >= 1"):
            few_shot_split(data, bad, seed=0)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        few_shot_split(data, 1, seed=-1)


def test_val_may_run_short_when_a_class_has_exactly_k() -> None:
    s = few_shot_split(_data({"cat": 4, "dog": 6}), 4, seed=0)
    assert {y: len(p) for y, p in _per_class(s.val).items()} == {1: 2} and s.short_val == ("cat", "dog")


def test_base_to_new_split_as_dassl() -> None:
    for n in (2, 5, 10, 101):
        base, new = base_new_classes(n)
        assert base == list(range(math.ceil(n / 2))) and new == list(range(math.ceil(n / 2), n))
    data = _data({k: 3 for k in "abcde"})
    s = few_shot_split(data, 2, seed=0)
    b, n = subsample_classes(s, "base"), subsample_classes(s, "new")
    assert b.class_keys == ("a", "b", "c") and n.class_keys == ("d", "e")
    assert {y for _, y in n.test} == {0, 1} and all("/d/" in p or "/e/" in p for p, _ in n.test)
    assert set(b.train) == {(p, y) for p, y in s.train if y < 3}  # base K-shot set = the all-class one
    assert subsample_classes(s, "all") is s
    with pytest.raises(DataError, match="at least 2 classes"):
        base_new_classes(1)


def test_harmonic_mean() -> None:
    assert harmonic_mean(0.8, 0.6) == pytest.approx(2 * 0.8 * 0.6 / 1.4)
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(1.0, 0.0) == 0.0
