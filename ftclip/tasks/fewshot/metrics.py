"""Classification metrics of one evaluation: fractions in [0, 1] (papers print them x 100).

* ``accuracy`` (top-1) and ``top5`` (only with more than 5 classes): torchmetrics
  ``multiclass_accuracy`` (micro average);
* ``macro_f1``: torchmetrics ``multiclass_f1_score(average="macro")`` -- the mean F1 over the
  classes that occur in the targets or the predictions (scikit-learn's ``f1_score(average="macro")``);
* ``balanced_accuracy``: the mean over the classes present in the targets of their recall
  (scikit-learn's ``balanced_accuracy_score``); ``per_class_accuracy`` is that recall per class
  name (None for a class with no test image);
* ``ece``: expected calibration error with 15 equal-width confidence bins
  ``((m-1)/15, m/15]`` (Guo et al., ICML 2017; Naeini et al., AAAI 2015):
  ``sum_m |B_m| / N * |acc(B_m) - conf(B_m)|``, confidence = the top softmax probability of the
  logits as given (so it depends on the logit scale: CLIP's is 100). Written out here rather
  than taken from torchmetrics ``multiclass_calibration_error``, whose bins are ``[lower, upper)``
  plus a bin of its own for confidences of exactly 1.0 -- frequent with a logit scale of 100 --
  so it differs from the usual definition whenever those and the rest of the top bin err in
  opposite directions (tested). :func:`calibration_bins` gives the per-bin numbers a
  reliability diagram plots.

:func:`retrieval_recall` is image <-> text retrieval R@K for contrastive (FLYP-style) fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from ftclip.errors import FtclipError
from ftclip.tasks.fewshot.protocol import harmonic_mean

__all__ = [
    "ECE_BINS",
    "calibration_bins",
    "expected_calibration_error",
    "classification_metrics",
    "base_new_metrics",
    "retrieval_recall",
]

ECE_BINS = 15


def _check(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise FtclipError(
            f"metrics need logits [N, C] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if logits.shape[0] == 0:
        raise FtclipError("metrics need at least one sample; the evaluated split is empty")
    targets = targets.long()
    if int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]:
        raise FtclipError(f"targets must lie in 0..{logits.shape[1] - 1} (the number of classes)")
    return logits.detach().double(), targets.detach()


def calibration_bins(logits: Tensor, targets: Tensor, n_bins: int = ECE_BINS) -> dict[str, Tensor]:
    """Per confidence bin ``((m-1)/n_bins, m/n_bins]``: ``count``, mean ``accuracy`` and mean
    ``confidence`` (0 where a bin is empty), and the bin ``edges`` (n_bins + 1)."""
    logits, targets = _check(logits, targets)
    probs = F.softmax(logits, dim=1)
    confidence, pred = probs.max(dim=1)
    correct = (pred == targets).double()
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins).double()
    safe = count.clamp(min=1)
    return {
        "count": count,
        "accuracy": torch.bincount(index, weights=correct, minlength=n_bins) / safe,
        "confidence": torch.bincount(index, weights=confidence, minlength=n_bins) / safe,
        "edges": torch.linspace(0, 1, n_bins + 1, dtype=torch.float64),
    }


def expected_calibration_error(logits: Tensor, targets: Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins (see the module docstring)."""
    bins = calibration_bins(logits, targets, n_bins)
    weight = bins["count"] / bins["count"].sum()
    return float((weight * (bins["accuracy"] - bins["confidence"]).abs()).sum())


def classification_metrics(logits: Tensor, targets: Tensor, classnames: Sequence[str]) -> dict:
    """accuracy, top5 (more than 5 classes), macro_f1, balanced_accuracy, ece, per_class_accuracy."""
    logits, targets = _check(logits, targets)
    c = logits.shape[1]
    if len(classnames) != c:
        raise FtclipError(f"{len(classnames)} class names for logits over {c} classes")
    out: dict = {"accuracy": float(multiclass_accuracy(logits, targets, c, average="micro"))}
    if c > 5:
        out["top5"] = float(multiclass_accuracy(logits, targets, c, average="micro", top_k=5))
    out["macro_f1"] = float(multiclass_f1_score(logits, targets, c, average="macro"))
    recall = multiclass_accuracy(logits, targets, c, average=None)
    present = torch.bincount(targets, minlength=c) > 0
    out["balanced_accuracy"] = float(recall[present].mean())
    out["ece"] = expected_calibration_error(logits, targets)
    out["per_class_accuracy"] = {
        name: (float(r) if p else None) for name, r, p in zip(classnames, recall.tolist(), present.tolist())
    }
    return out


def base_new_metrics(base_accuracy: float, new_accuracy: float) -> dict[str, float]:
    """Base-to-new summary: ``base``, ``new`` and their harmonic mean ``hm``."""
    return {"base": base_accuracy, "new": new_accuracy, "hm": harmonic_mean(base_accuracy, new_accuracy)}


def retrieval_recall(
    image_features: Tensor,
    text_features: Tensor,
    text_image: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image -> text (``i2t_r{k}``) and text -> image (``t2i_r{k}``) recall at ``k`` by cosine similarity.

    ``text_image[j]`` is the image caption ``j`` belongs to (default: caption ``j`` of image ``j``).
    An image is a hit at ``k`` when one of its captions ranks in its top ``k``; a caption, when its
    image does. Ties count in the query's favour (only strictly higher scores outrank).
    """
    n_img, n_txt = image_features.shape[0], text_features.shape[0]
    if text_image is None:
        if n_img != n_txt:
            raise FtclipError(f"{n_img} images and {n_txt} captions: pass text_image to say which caption is whose")
        text_image = torch.arange(n_txt)
    text_image = text_image.long().to(image_features.device)
    if text_image.shape != (n_txt,) or int(text_image.min()) < 0 or int(text_image.max()) >= n_img:
        raise FtclipError("text_image must give, for every caption, the index of its image")
    own = torch.bincount(text_image, minlength=n_img)
    if bool((own == 0).any()):
        raise FtclipError(f"{int((own == 0).sum())} image(s) have no caption; every image needs one for i2t recall")
    sim = F.normalize(image_features.double(), dim=1) @ F.normalize(text_features.double(), dim=1).T  # [I, T]
    match = text_image.unsqueeze(0) == torch.arange(n_img, device=sim.device).unsqueeze(1)  # [I, T]
    best_own = sim.masked_fill(~match, float("-inf")).max(dim=1).values  # per image
    i2t_rank = (sim > best_own.unsqueeze(1)).sum(dim=1)
    own_score = sim[text_image, torch.arange(n_txt, device=sim.device)]  # per caption
    t2i_rank = (sim.T > own_score.unsqueeze(1)).sum(dim=1)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t_rank < k).double().mean())
        out[f"t2i_r{k}"] = float((t2i_rank < k).double().mean())
    return out
