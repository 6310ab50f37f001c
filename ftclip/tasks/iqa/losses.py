"""Loss functions and the quality score of antonym-prompt image quality (QualiCLIP / CLIP-IQA).

Pure functions on tensors (see docs/methods/qualiclip.md and docs/methods/clip_iqa.md).

* :func:`qualiclip_losses` -- QualiCLIP's three margin ranking losses
  (Agnolucci, Galteri, Bertini, arXiv:2403.11176); see ``docs/iqa_method.md``.
* :func:`mos_loss` -- supervised MOS regression / ranking / correlation (CLIP-IQA+ style).
* :func:`quality_score` -- CLIP-IQA antonym score (Wang, Chan, Loy, AAAI 2023).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ftclip.checks import check_margin, require_dim
from ftclip.errors import ConfigError

__all__ = ["QUALICLIP_MARGIN_CONS", "QUALICLIP_MARGIN_RANK", "MOS_LOSS_KINDS", "mos_loss", "qualiclip_losses",
           "quality_logit", "quality_score"]

#: QualiCLIP ranking margin ``m_rank`` of the paper's Eqs. (2) and (3) (L_pos, L_neg):
#: 6.75e-2, chosen by the authors with a grid search on validation sets (stated by the
#: first author in github.com/miccunifi/QualiCLIP issue #10).
QUALICLIP_MARGIN_RANK: float = 0.0675

#: Consistency tolerance ``m_cons`` of L_cons. ftclip's own choice (the paper's value could
#: not be verified while writing this module): the two crops' similarities to a prompt may
#: differ by up to 0.0025 -- about 1/27 of the ranking margin -- without penalty.
QUALICLIP_MARGIN_CONS: float = 0.0025

MOS_LOSS_KINDS: tuple[str, ...] = ("mse", "rank", "plcc")



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
    check_margin("margin_rank", margin_rank)
    check_margin("margin_cons", margin_cons)

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
        ``"mse"``  -- ``mean((pred - mos01)^2)``: MSE against MOS / 100, CLIP-IQA+'s main term (pyiqa adds a PLCC term).
        ``"rank"`` -- pairwise margin ranking over all pairs with different MOS:
                      ``mean_{(i,j): mos_i > mos_j} relu(pred_j - pred_i + margin)``
                      (invariant to ``mos_range``; returns 0 when every MOS is equal).
        ``"plcc"`` -- ``1 - pearson(pred, mos)`` (invariant to affine maps of either;
                      needs at least 2 samples). pyiqa's ``PLCCLoss`` is half of it,
                      ``(1 - pearson) / 2``: its CLIP-IQA+ setting (MSE + PLCCLoss, weights 1)
                      is ``losses: {mse: 1.0, plcc: 0.5}`` here.

    Args:
        pred: [B] predicted scores.
        mos: [B] opinion scores.
        kind: one of :data:`MOS_LOSS_KINDS`.
        mos_range: optional ``(lo, hi)`` with ``hi > lo``.
        margin: ranking margin for ``"rank"`` (>= 0).
    """
    if kind not in MOS_LOSS_KINDS:
        raise ConfigError(f"unknown MOS loss kind {kind!r}; choose one of {', '.join(MOS_LOSS_KINDS)}")
    require_dim("pred", pred, 1)
    if mos.shape != pred.shape:
        raise ValueError(f"mos must have the shape of pred {tuple(pred.shape)}, got {tuple(mos.shape)}")
    check_margin("margin", margin)
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


def quality_logit(
    image_feats: torch.Tensor,
    pos_text: torch.Tensor,
    neg_text: torch.Tensor,
    logit_scale: float = 100.0,
) -> torch.Tensor:
    r"""The log-odds ``log(score / (1 - score))`` of :func:`quality_score`, float64, never saturated.

    With ``z_p = s * (cos(x, t+_p) - cos(x, t-_p))`` the per-pair log-odds::

        logit = logsumexp_p(log sigmoid(z_p)) - logsumexp_p(log sigmoid(-z_p))

    (``score = mean_p sigmoid(z_p)`` and ``1 - score = mean_p sigmoid(-z_p)``; for one pair
    ``logit = z``). It is strictly increasing in every ``z_p``, so it ranks images as the score
    does, but stays distinct where the score rounds to exactly 0 or 1: float32 ``sigmoid``
    saturates beyond ``|z| ~ 17`` (a cosine margin of 0.17 at ``s = 100``), float64 beyond ~37.
    Rank metrics (SRCC) are computed from it.
    """
    if pos_text.dim() == 1:
        pos_text = pos_text[None]
    if neg_text.dim() == 1:
        neg_text = neg_text[None]
    require_dim("image_feats", image_feats, 2)
    require_dim("pos_text", pos_text, 2)
    if neg_text.shape != pos_text.shape:
        raise ValueError(
            f"neg_text must have the shape of pos_text {tuple(pos_text.shape)}, got {tuple(neg_text.shape)}"
        )
    if image_feats.shape[1] != pos_text.shape[1]:
        raise ValueError(
            f"image_feats and prompt features must have the same width, got "
            f"{tuple(image_feats.shape)} and {tuple(pos_text.shape)}"
        )
    x = F.normalize(image_feats.double(), dim=-1)
    cos_pos = x @ F.normalize(pos_text.double(), dim=-1).t()  # [B, P]
    cos_neg = x @ F.normalize(neg_text.double(), dim=-1).t()
    z = float(logit_scale) * (cos_pos - cos_neg)
    return torch.logsumexp(F.logsigmoid(z), dim=-1) - torch.logsumexp(F.logsigmoid(-z), dim=-1)


def quality_score(
    image_feats: torch.Tensor,
    pos_text: torch.Tensor,
    neg_text: torch.Tensor,
    logit_scale: float = 100.0,
) -> torch.Tensor:
    r"""Antonym-prompt quality score of CLIP-IQA / QualiCLIP, in [0, 1] (higher is better), float64.

    With all features L2-normalised inside, for each prompt pair ``p``::

        q_bp  = exp(s * cos(x_b, t+_p)) / (exp(s * cos(x_b, t+_p)) + exp(s * cos(x_b, t-_p)))
        score = mean_p q_bp

    computed as ``sigmoid(quality_logit(...))`` in float64: the same value, but strictly
    increasing in the logit margin until ``|logit| ~ 37`` (float32 softmax rounds every image
    with a cosine margin above ~0.17 to exactly 1.0 at ``s = 100``).

    Source: CLIP-IQA (Wang, Chan, Loy, AAAI 2023), one pair ("Good photo." / "Bad photo."),
    ``s = 100``; QualiCLIP's released model averages 7 pairs, with ``s = 100`` in its own
    ``hubconf.py`` (pyiqa's port of QualiCLIP divides CLIP's logits by a temperature of 2
    instead, an effective ``s = 50``). ftclip's default is 100 (the authors' code);
    ``strategies.antonym.logit_scale`` sets it, ``null`` uses the model's own ``logit_scale``.

    Args:
        image_feats: [B, D] image features.
        pos_text: [P, D] positive prompt features (a single [D] vector is one pair).
        neg_text: [P, D] negative prompt features, row-aligned with ``pos_text``.
        logit_scale: ``s``.

    Returns:
        [B] scores (float64).
    """
    return torch.sigmoid(quality_logit(image_feats, pos_text, neg_text, logit_scale))
