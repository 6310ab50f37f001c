"""Loss functions for CLIP-ReID and antonym-prompt image quality (QualiCLIP / CLIP-IQA).

Every function here is a pure function on tensors: no modules, no state, no device
moves. Each docstring gives the formula and where it comes from. Tensor-shape
contract violations raise ``ValueError`` (they are programming errors); bad option
values that come from a recipe (an unknown ``kind``, a negative margin, label
smoothing outside [0, 1)) raise :class:`ftclip.errors.ConfigError`.

Re-identification (CLIP-ReID, Li et al. AAAI 2023; reference code Syliz517/CLIP-ReID)
    * :func:`supcon_loss` / :func:`stage1_supcon_loss` -- stage 1 prompt learning.
    * :func:`id_loss` -- label-smoothed identity cross-entropy (stage 2).
    * :func:`batch_hard_triplet_loss` -- batch-hard triplet on Euclidean distance (stage 2).
    * :func:`i2t_loss` -- image-to-text cross-entropy against fixed per-ID text features (stage 2).

Image quality
    * :func:`qualiclip_losses` -- QualiCLIP's three margin ranking losses
      (Agnolucci, Galteri, Bertini, arXiv:2403.11176); see ``docs/iqa_method.md``.
    * :func:`mos_loss` -- supervised MOS regression / ranking / correlation (CLIP-IQA+ style).
    * :func:`quality_score` -- CLIP-IQA antonym score (Wang, Chan, Loy, AAAI 2023).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ftclip.errors import ConfigError

__all__ = [
    "QUALICLIP_MARGIN_CONS",
    "QUALICLIP_MARGIN_RANK",
    "MOS_LOSS_KINDS",
    "batch_hard_triplet_loss",
    "i2t_loss",
    "id_loss",
    "mos_loss",
    "qualiclip_losses",
    "quality_score",
    "stage1_supcon_loss",
    "supcon_loss",
]

#: QualiCLIP ranking margin ``m_rank`` of the paper's Eqs. (2) and (3) (L_pos, L_neg):
#: 6.75e-2, chosen by the authors with a grid search on validation sets (stated by the
#: first author in github.com/miccunifi/QualiCLIP issue #10).
QUALICLIP_MARGIN_RANK: float = 0.0675

#: Consistency tolerance ``m_cons`` of L_cons. ftclip's own choice (the paper's value could
#: not be verified while writing this module): the two crops' similarities to a prompt may
#: differ by up to 0.0025 -- about 1/27 of the ranking margin -- without penalty.
QUALICLIP_MARGIN_CONS: float = 0.0025

MOS_LOSS_KINDS: tuple[str, ...] = ("mse", "rank", "plcc")


# --------------------------------------------------------------------------- helpers


def _check_margin(name: str, value: float) -> None:
    if not value >= 0.0:  # also rejects NaN
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")


def _check_label_smoothing(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {value!r}")


def _require_dim(name: str, tensor: torch.Tensor, dim: int) -> None:
    if tensor.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-D tensor, got shape {tuple(tensor.shape)}")


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
    _require_dim("features", features, 2)
    _require_dim("targets_features", targets_features, 2)
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
    _require_dim("logits", logits, 2)
    if targets.shape != (logits.shape[0],):
        raise ValueError(f"targets must be [{logits.shape[0]}], got {tuple(targets.shape)}")
    _check_label_smoothing(label_smoothing)
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
    _require_dim("features", features, 2)
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels must be [{features.shape[0]}], got {tuple(labels.shape)}")
    _check_margin("margin", margin)

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
    _require_dim("image_proj", image_proj, 2)
    _require_dim("text_features", text_features, 2)
    if image_proj.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image_proj and text_features must have the same width, got "
            f"{tuple(image_proj.shape)} and {tuple(text_features.shape)}"
        )
    return id_loss(image_proj @ text_features.t(), labels, label_smoothing)


# --------------------------------------------------------------------------- image quality


def qualiclip_losses(
    sim_pos: torch.Tensor,
    sim_neg: torch.Tensor,
    margin_rank: float = QUALICLIP_MARGIN_RANK,
    margin_cons: float = QUALICLIP_MARGIN_CONS,
) -> dict[str, torch.Tensor]:
    r"""QualiCLIP's three margin ranking losses on prompt similarities.

    ``sim_pos[b, c, l]`` / ``sim_neg[b, c, l]`` are the cosine similarities between crop
    ``c`` (of the 2 overlapping crops of image ``b``) degraded at level ``l`` (index 0 =
    least degraded, increasing intensity along the last axis) and the positive /
    negative antonym prompt. With ``m_r = margin_rank``, ``m_c = margin_cons``::

        L_cons = mean_{b,l} [ relu(|sp[b,0,l] - sp[b,1,l]| - m_c) + relu(|sn[b,0,l] - sn[b,1,l]| - m_c) ]
        L_pos  = mean_{b,c,i<j} relu(sp[b,c,j] - sp[b,c,i] + m_r)   (less degraded -> closer to T_p)
        L_neg  = mean_{b,c,i<j} relu(sn[b,c,i] - sn[b,c,j] + m_r)   (more degraded -> closer to T_n)
        total  = L_cons + L_pos + L_neg

    Each term is a margin ranking hinge ``max(0, -y (x1 - x2) + m)``: for L_pos
    ``x1 = sp_i, x2 = sp_j, y = 1, m = m_r``; for L_cons ``x1 = |sp^1 - sp^2|, x2 = 0,
    y = -1, m = -m_c`` (the crops may differ by up to ``m_c`` for free).

    Source: Agnolucci, Galteri, Bertini, "Quality-Aware Image-Text Alignment for
    Opinion-Unaware Image Quality Assessment", arXiv:2403.11176 (training code not
    released). ``m_rank = 0.0675`` is the paper's value; ``m_cons`` is ftclip's choice.
    The paper writes sums; here every loss is a mean over its terms so that its scale
    does not depend on the batch size or the number of levels (see docs/iqa_method.md).

    Returns:
        ``{"cons": L_cons, "pos": L_pos, "neg": L_neg, "total": sum of the three}``,
        all scalars.
    """
    if sim_pos.dim() != 3 or sim_pos.shape[1] != 2:
        raise ValueError(f"sim_pos must be [B, 2, L] (2 crops), got shape {tuple(sim_pos.shape)}")
    if sim_neg.shape != sim_pos.shape:
        raise ValueError(
            f"sim_neg must have the shape of sim_pos {tuple(sim_pos.shape)}, got {tuple(sim_neg.shape)}"
        )
    num_levels = sim_pos.shape[2]
    if num_levels < 2:
        raise ConfigError(f"QualiCLIP ranking needs at least 2 degradation levels, got {num_levels}")
    _check_margin("margin_rank", margin_rank)
    _check_margin("margin_cons", margin_cons)

    cons = (
        F.relu((sim_pos[:, 0] - sim_pos[:, 1]).abs() - margin_cons).mean()
        + F.relu((sim_neg[:, 0] - sim_neg[:, 1]).abs() - margin_cons).mean()
    )
    # all level pairs i < j (i less degraded than j)
    i_idx, j_idx = torch.triu_indices(num_levels, num_levels, offset=1, device=sim_pos.device)
    pos = F.relu(sim_pos[..., j_idx] - sim_pos[..., i_idx] + margin_rank).mean()
    neg = F.relu(sim_neg[..., i_idx] - sim_neg[..., j_idx] + margin_rank).mean()
    return {"cons": cons, "pos": pos, "neg": neg, "total": cons + pos + neg}


def mos_loss(
    pred: torch.Tensor,
    mos: torch.Tensor,
    kind: Literal["mse", "rank", "plcc"] = "mse",
    *,
    mos_range: tuple[float, float] | None = None,
    margin: float = 0.0,
) -> torch.Tensor:
    r"""Supervised quality loss between predicted scores and mean opinion scores.

    ``mos_range = (lo, hi)`` maps ``mos`` to ``(mos - lo) / (hi - lo)`` first (e.g.
    ``(0, 100)`` for KonIQ-10k ``MOS_zscore``, ``(1, 5)`` for a 1-5 scale); ``None`` means
    ``mos`` is already in [0, 1]. ``pred`` is a score in [0, 1] (e.g. :func:`quality_score`).

    kinds:
        ``"mse"``  -- ``mean((pred - mos01)^2)``: the CLIP-IQA+ reference (MSE against MOS / 100).
        ``"rank"`` -- pairwise margin ranking over all pairs with different MOS:
                      ``mean_{(i,j): mos_i > mos_j} relu(pred_j - pred_i + margin)``
                      (invariant to ``mos_range``; returns 0 when every MOS is equal).
        ``"plcc"`` -- ``1 - pearson(pred, mos)`` (invariant to affine maps of either;
                      needs at least 2 samples).

    Args:
        pred: [B] predicted scores.
        mos: [B] opinion scores.
        kind: one of :data:`MOS_LOSS_KINDS`.
        mos_range: optional ``(lo, hi)`` with ``hi > lo``.
        margin: ranking margin for ``"rank"`` (>= 0).
    """
    if kind not in MOS_LOSS_KINDS:
        raise ConfigError(f"unknown MOS loss kind {kind!r}; choose one of {', '.join(MOS_LOSS_KINDS)}")
    _require_dim("pred", pred, 1)
    if mos.shape != pred.shape:
        raise ValueError(f"mos must have the shape of pred {tuple(pred.shape)}, got {tuple(mos.shape)}")
    _check_margin("margin", margin)
    mos = mos.to(pred.dtype)
    if mos_range is not None:
        lo, hi = (float(v) for v in mos_range)
        if not hi > lo:
            raise ConfigError(f"mos_range must be (low, high) with high > low, got {mos_range!r}")
        mos = (mos - lo) / (hi - lo)

    if kind == "mse":
        return F.mse_loss(pred, mos)
    if kind == "rank":
        better = (mos[:, None] > mos[None, :]).to(pred.dtype)  # better[i, j]: i should score higher
        hinge = F.relu(pred[None, :] - pred[:, None] + margin)
        return (hinge * better).sum() / better.sum().clamp(min=1.0)
    if pred.shape[0] < 2:
        raise ValueError("mos_loss(kind='plcc') needs at least 2 samples in the batch")
    pc = pred - pred.mean()
    mc = mos - mos.mean()
    eps = torch.finfo(pred.dtype).eps
    plcc = (pc * mc).sum() / (pc.pow(2).sum().sqrt() * mc.pow(2).sum().sqrt()).clamp(min=eps)
    return 1.0 - plcc


def quality_score(
    image_feats: torch.Tensor,
    pos_text: torch.Tensor,
    neg_text: torch.Tensor,
    logit_scale: float = 100.0,
) -> torch.Tensor:
    r"""Antonym-prompt quality score of CLIP-IQA / QualiCLIP, in [0, 1] (higher is better).

    With all features L2-normalised inside, for each prompt pair ``p``::

        q_bp  = exp(s * cos(x_b, t+_p)) / (exp(s * cos(x_b, t+_p)) + exp(s * cos(x_b, t-_p)))
        score = mean_p q_bp

    Source: CLIP-IQA (Wang, Chan, Loy, AAAI 2023), one pair ("Good photo." / "Bad photo."),
    ``s = 100``; QualiCLIP's released model averages 7 pairs.

    Args:
        image_feats: [B, D] image features.
        pos_text: [P, D] positive prompt features (a single [D] vector is one pair).
        neg_text: [P, D] negative prompt features, row-aligned with ``pos_text``.
        logit_scale: ``s``; 100 in both references.

    Returns:
        [B] scores.
    """
    if pos_text.dim() == 1:
        pos_text = pos_text[None]
    if neg_text.dim() == 1:
        neg_text = neg_text[None]
    _require_dim("image_feats", image_feats, 2)
    _require_dim("pos_text", pos_text, 2)
    if neg_text.shape != pos_text.shape:
        raise ValueError(
            f"neg_text must have the shape of pos_text {tuple(pos_text.shape)}, got {tuple(neg_text.shape)}"
        )
    if image_feats.shape[1] != pos_text.shape[1]:
        raise ValueError(
            f"image_feats and prompt features must have the same width, got "
            f"{tuple(image_feats.shape)} and {tuple(pos_text.shape)}"
        )
    x = F.normalize(image_feats, dim=-1)
    cos_pos = x @ F.normalize(pos_text, dim=-1).t()  # [B, P]
    cos_neg = x @ F.normalize(neg_text, dim=-1).t()
    logits = logit_scale * torch.stack((cos_pos, cos_neg), dim=-1)  # [B, P, 2]
    return logits.softmax(dim=-1)[..., 0].mean(dim=-1)
