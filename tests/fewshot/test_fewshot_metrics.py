"""Few-shot metrics against plain per-sample computations."""

from __future__ import annotations

import math

import pytest
import torch

from ftclip.errors import FtclipError
from ftclip.tasks.fewshot.metrics import (
    base_new_metrics,
    calibration_bins,
    classification_metrics,
    expected_calibration_error,
    retrieval_recall,
)


def _plain_ece(logits: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> float:
    """Guo et al.: bins ((m-1)/M, m/M], written as a loop over samples."""
    probs = torch.softmax(logits.double(), dim=1)
    total = len(targets)
    members: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for p, t in zip(probs, targets):
        conf, pred = float(p.max()), int(p.argmax())
        m = next(m for m in range(1, bins + 1) if (m - 1) / bins < conf <= m / bins)
        members[m - 1].append((conf, pred == int(t)))
    ece = 0.0
    for group in members:
        if group:
            acc = sum(c for _, c in group) / len(group)
            conf = sum(c for c, _ in group) / len(group)
            ece += len(group) / total * abs(acc - conf)
    return ece


def _data(n: int = 300, c: int = 12, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g) * scale
    logits[torch.arange(n), targets] += 2.0  # better than chance
    return logits, targets


def test_ece_matches_the_plain_definition_including_saturated_confidences() -> None:
    logits, targets = _data()
    assert expected_calibration_error(logits, targets) == pytest.approx(_plain_ece(logits, targets), abs=1e-12)
    sharp = logits.float() * 40.0  # CLIP-like logit scale: many confidences are exactly 1.0 in float32
    assert (torch.softmax(sharp.double(), 1).max(1).values == 1.0).any()
    assert expected_calibration_error(sharp, targets) == pytest.approx(_plain_ece(sharp, targets), abs=1e-12)
    bins = calibration_bins(logits, targets)
    assert int(bins["count"].sum()) == len(targets) and len(bins["edges"]) == 16


def test_ece_keeps_confidence_one_in_the_top_bin() -> None:
    # one sample at confidence exactly 1.0 (wrong), one at 0.9526 (right): both in (14/15, 1]
    logits = torch.tensor([[100.0, 0.0], [3.0, 0.0]])
    targets = torch.tensor([1, 0])
    conf_b = 1 / (1 + math.exp(-3))
    expected = abs(0.5 - (1.0 + conf_b) / 2)  # one bin: accuracy 1/2, mean confidence
    assert expected_calibration_error(logits, targets) == pytest.approx(expected, abs=1e-12)


def test_classification_metrics_against_plain_counts() -> None:
    logits, targets = _data()
    names = [f"class {i}" for i in range(12)]
    m = classification_metrics(logits, targets, names)
    pred = logits.argmax(1)
    assert m["accuracy"] == pytest.approx(float((pred == targets).double().mean()))
    top5 = logits.topk(5, dim=1).indices
    assert m["top5"] == pytest.approx(sum(int(t) in row.tolist() for t, row in zip(targets, top5)) / len(targets))
    f1s, recalls = [], []
    for c in range(12):
        tp = int(((pred == c) & (targets == c)).sum())
        fp = int(((pred == c) & (targets != c)).sum())
        fn = int(((pred != c) & (targets == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
        if tp + fn:
            recalls.append(tp / (tp + fn))
            assert m["per_class_accuracy"][names[c]] == pytest.approx(tp / (tp + fn))
    assert m["macro_f1"] == pytest.approx(sum(f1s) / len(f1s))
    assert m["balanced_accuracy"] == pytest.approx(sum(recalls) / len(recalls))
    assert m["ece"] == pytest.approx(_plain_ece(logits, targets))


def test_absent_classes_and_small_class_counts() -> None:
    logits, targets = _data(n=60, c=4)
    targets[targets == 3] = 0  # class 3 never occurs
    m = classification_metrics(logits, targets, ["a", "b", "c", "d"])
    assert "top5" not in m and m["per_class_accuracy"]["d"] is None
    pred = logits.argmax(1)
    recalls = [float(((pred == c) & (targets == c)).sum() / (targets == c).sum()) for c in range(3)]
    assert m["balanced_accuracy"] == pytest.approx(sum(recalls) / 3)
    with pytest.raises(FtclipError, match="3 class names for logits over 4"):
        classification_metrics(logits, targets, ["a", "b", "c"])


def test_base_new_summary() -> None:
    out = base_new_metrics(0.9, 0.6)
    assert out == {"base": 0.9, "new": 0.6, "hm": pytest.approx(2 * 0.9 * 0.6 / 1.5)}


def test_retrieval_recall_against_a_loop() -> None:
    g = torch.Generator().manual_seed(1)
    img = torch.randn(20, 8, generator=g)
    owner = torch.arange(40) % 20  # two captions per image
    txt = img[owner] + 0.9 * torch.randn(40, 8, generator=g)
    out = retrieval_recall(img, txt, owner, ks=(1, 5))
    sim = torch.nn.functional.normalize(img, dim=1) @ torch.nn.functional.normalize(txt, dim=1).T
    for k in (1, 5):
        i2t = sum(bool(set(sim[i].topk(k).indices.tolist()) & set((owner == i).nonzero().flatten().tolist()))
                  for i in range(20)) / 20
        t2i = sum(int(owner[j]) in sim[:, j].topk(k).indices.tolist() for j in range(40)) / 40
        assert out[f"i2t_r{k}"] == pytest.approx(i2t) and out[f"t2i_r{k}"] == pytest.approx(t2i)
    assert retrieval_recall(img, img)["i2t_r1"] == 1.0
    with pytest.raises(FtclipError, match="pass text_image"):
        retrieval_recall(img, txt)
    assert math.isclose(retrieval_recall(img, txt[:20], ks=(10,))["t2i_r10"], retrieval_recall(img, txt[:20], torch.arange(20), ks=(10,))["t2i_r10"])
