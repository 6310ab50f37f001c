"""Loss functions of CLIP-ReID (Li, Sun, Li, AAAI 2023; reference code Syliz517/CLIP-ReID).

Pure functions on tensors: no modules, no state, no device moves. Each docstring gives the
formula and its source (see docs/methods/clip_reid.md). Tensor-shape contract violations raise
``ValueError`` (programming errors); bad option values from a recipe raise
:class:`ftclip.errors.ConfigError`.

* :func:`supcon_loss` / :func:`stage1_supcon_loss` -- stage 1 prompt learning.
* :func:`id_loss` -- label-smoothed identity cross-entropy (stage 2).
* :func:`batch_hard_triplet_loss` -- batch-hard triplet on Euclidean distance (stage 2).
* :func:`i2t_loss` -- image-to-text cross-entropy against fixed per-ID text features (stage 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ftclip.checks import check_label_smoothing, check_margin, require_dim
from ftclip.errors import ConfigError

__all__ = ["batch_hard_triplet_loss", "i2t_loss", "id_loss", "stage1_supcon_loss", "supcon_loss"]


# --------------------------------------------------------------------------- CLIP-ReID


def supcon_loss(
    features: torch.Tensor,
    targets_features: torch.Tensor,
    labels: torch.Tensor,
    target_labels: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    r"""Supervised contrastive loss of CLIP-ReID stage 1 (one direction).

    With ``z = features`` [N, D], ``t = targets_features`` [M, D]::

        logits_ij = <z_i, t_j> / temperature          (raw dot product, no L2 normalisation)
        P_ij      = 1 if labels_i == target_labels_j else 0
        loss      = -mean_i ( sum_j P_ij * log_softmax_j(logits_i)_j / sum_j P_ij )

    Source: CLIP-ReID ``SupConLoss`` (Syliz517/CLIP-ReID), temperature 1.0 in stage 1.
    Rows without any positive cannot be scored; they are left out of the mean (the
    reference would return NaN). In CLIP-ReID every row has at least one positive.

    Args:
        features: [N, D] anchors (image features for image->text).
        targets_features: [M, D] candidates (text features for image->text).
        labels: [N] integer labels of ``features``.
        target_labels: [M] integer labels of ``targets_features``.
        temperature: divides the logits; must be > 0.

    Returns:
        Scalar loss.
    """
    require_dim("features", features, 2)
    require_dim("targets_features", targets_features, 2)
    if features.shape[1] != targets_features.shape[1]:
        raise ValueError(
            f"features and targets_features must have the same width, got "
            f"{tuple(features.shape)} and {tuple(targets_features.shape)}"
        )
    if labels.shape != (features.shape[0],) or target_labels.shape != (targets_features.shape[0],):
        raise ValueError(
            f"labels must be [{features.shape[0]}] and target_labels [{targets_features.shape[0]}], got "
            f"{tuple(labels.shape)} and {tuple(target_labels.shape)}"
        )
    if not temperature > 0.0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")

    logits = features @ targets_features.t() / temperature
    log_prob = F.log_softmax(logits, dim=1)
    mask = (labels[:, None] == target_labels[None, :]).to(log_prob.dtype)
    num_pos = mask.sum(dim=1)
    has_pos = num_pos > 0
    mean_log_prob_pos = (mask * log_prob).sum(dim=1) / num_pos.clamp(min=1.0)
    return -(mean_log_prob_pos * has_pos).sum() / has_pos.sum().clamp(min=1)


def stage1_supcon_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """CLIP-ReID stage-1 total: ``supcon(image->text) + supcon(text->image)``.

    ``image_features`` [N, D] and ``text_features`` [N, D] are row-aligned (row i of both
    belongs to identity ``labels[i]``), as in the reference's training loop.
    """
    return supcon_loss(image_features, text_features, labels, labels, temperature) + supcon_loss(
        text_features, image_features, labels, labels, temperature
    )


def id_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    r"""Identity cross-entropy with label smoothing (CLIP-ReID ``CrossEntropyLabelSmooth``).

    ``q = (1 - eps) * onehot(y) + eps / K``; ``loss = mean_i sum_k -q_ik log_softmax(logits_i)_k``.

    ``F.cross_entropy(..., label_smoothing=eps)`` computes exactly this target distribution
    (``(1 - eps) * nll + eps * mean_k(-log p_k)``), so it is used directly;
    ``tests/test_losses.py`` checks it against the explicit formula.

    Args:
        logits: [N, K] classifier outputs.
        targets: [N] class indices in [0, K).
        label_smoothing: eps in [0, 1); reference default 0.1.
    """
    require_dim("logits", logits, 2)
    if targets.shape != (logits.shape[0],):
        raise ValueError(f"targets must be [{logits.shape[0]}], got {tuple(targets.shape)}")
    check_label_smoothing(label_smoothing)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    r"""Batch-hard triplet loss on unnormalised Euclidean distance (CLIP-ReID ``TripletLoss``).

    ::

        d_ij  = sqrt(clamp(|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>, min=1e-12))
        d_ap  = max_{j: y_j == y_i} d_ij      (hardest positive; includes i itself)
        d_an  = min_{j: y_j != y_i} d_ij      (hardest negative)
        loss  = mean_i relu(d_ap_i - d_an_i + margin)

    Source: CLIP-ReID ``euclidean_dist`` + ``hard_example_mining`` + ``MarginRankingLoss``,
    margin 0.3. Unlike the reference, anchors need not have equal numbers of positives;
    an anchor with no negative in the batch contributes 0.
    """
    require_dim("features", features, 2)
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must be [{features.shape[0]}], got {tuple(labels.shape)}")
    check_margin("margin", margin)

    sq = features.pow(2).sum(dim=1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * (features @ features.t())).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(d_ap - d_an + margin).mean()


def i2t_loss(
    image_proj: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    r"""Image-to-text cross-entropy of CLIP-ReID stage 2.

    ``logits = image_proj @ text_features^T`` (raw dot product, no normalisation, no scale),
    then :func:`id_loss` with the same label smoothing.

    Args:
        image_proj: [N, D] projected image features.
        text_features: [C, D] fixed per-identity text features (one row per training ID).
        labels: [N] identity indices in [0, C).
    """
    require_dim("image_proj", image_proj, 2)
    require_dim("text_features", text_features, 2)
    if image_proj.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image_proj and text_features must have the same width, got "
            f"{tuple(image_proj.shape)} and {tuple(text_features.shape)}"
        )
    return id_loss(image_proj @ text_features.t(), labels, label_smoothing)
