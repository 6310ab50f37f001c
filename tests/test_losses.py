"""Each loss of the re-ID and IQA tasks equals a plain reference (explicit loops, numpy, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ftclip.errors import ConfigError
from ftclip.tasks.iqa.losses import (QUALICLIP_MARGIN_CONS, QUALICLIP_MARGIN_RANK, mos_loss, qualiclip_losses,
                                     quality_logit, quality_score)
from ftclip.tasks.reid.losses import batch_hard_triplet_loss, i2t_loss, id_loss, stage1_supcon_loss, supcon_loss

ATOL = 1e-6


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _log_softmax_row(row: np.ndarray) -> np.ndarray:
    m = row.max()
    return row - m - math.log(sum(math.exp(v - m) for v in row))


def _assert_grad_flows(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.grad is not None
        assert torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


# --------------------------------------------------------------------------- supcon


def _supcon_ref(z: np.ndarray, t: np.ndarray, y: np.ndarray, ty: np.ndarray, temp: float) -> float:
    rows = []
    for i in range(z.shape[0]):
        logits = np.array([float(np.dot(z[i], t[j])) / temp for j in range(t.shape[0])])
        logp = _log_softmax_row(logits)
        pos = [j for j in range(t.shape[0]) if y[i] == ty[j]]
        if pos:
            rows.append(sum(logp[j] for j in pos) / len(pos))
    return -sum(rows) / len(rows)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_supcon_matches_reference(temperature: float) -> None:
    z = _rand(8, 6, seed=1).requires_grad_()
    t = _rand(10, 6, seed=2).requires_grad_()
    y = torch.tensor([0, 1, 2, 0, 1, 3, 3, 2])
    ty = torch.tensor([0, 0, 1, 2, 3, 1, 2, 3, 0, 4])
    loss = supcon_loss(z, t, y, ty, temperature=temperature)
    ref = _supcon_ref(z.detach().numpy(), t.detach().numpy(), y.numpy(), ty.numpy(), temperature)
    assert loss.item() == pytest.approx(ref, abs=ATOL)
    loss.backward()
    _assert_grad_flows(z, t)


def test_supcon_skips_rows_without_positive() -> None:
    z, t = _rand(4, 3, seed=3), _rand(3, 3, seed=4)
    y, ty = torch.tensor([0, 1, 9, 2]), torch.tensor([0, 1, 2])  # label 9 has no positive
    loss = supcon_loss(z, t, y, ty)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(_supcon_ref(z.numpy(), t.numpy(), y.numpy(), ty.numpy(), 1.0), abs=ATOL)


def test_stage1_supcon_is_both_directions() -> None:
    img, txt = _rand(6, 4, seed=5), _rand(6, 4, seed=6)
    y = torch.tensor([0, 1, 0, 2, 1, 2])
    expected = _supcon_ref(img.numpy(), txt.numpy(), y.numpy(), y.numpy(), 1.0) + _supcon_ref(
        txt.numpy(), img.numpy(), y.numpy(), y.numpy(), 1.0
    )
    assert stage1_supcon_loss(img, txt, y).item() == pytest.approx(expected, abs=ATOL)


# --------------------------------------------------------------------------- id / i2t


def _label_smooth_ce_ref(logits: np.ndarray, targets: np.ndarray, eps: float) -> float:
    """CLIP-ReID CrossEntropyLabelSmooth: q = (1 - eps) onehot + eps / K; mean over the batch."""
    n, k = logits.shape
    total = 0.0
    for i in range(n):
        logp = _log_softmax_row(logits[i])
        for c in range(k):
            q = (1.0 - eps) * (1.0 if c == targets[i] else 0.0) + eps / k
            total += -q * logp[c]
    return total / n


@pytest.mark.parametrize("eps", [0.1, 0.0, 0.3])
def test_id_loss_matches_label_smooth_reference(eps: float) -> None:
    logits = _rand(7, 5, seed=7).requires_grad_()
    targets = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    loss = id_loss(logits, targets, label_smoothing=eps)
    assert loss.item() == pytest.approx(_label_smooth_ce_ref(logits.detach().numpy(), targets.numpy(), eps), abs=ATOL)
    loss.backward()
    _assert_grad_flows(logits)


def test_i2t_loss_matches_reference() -> None:
    img = _rand(6, 8, seed=8).requires_grad_()
    text = _rand(4, 8, seed=9)
    labels = torch.tensor([0, 3, 1, 1, 2, 3])
    logits = np.array([[float(np.dot(img.detach().numpy()[i], text.numpy()[c])) for c in range(4)] for i in range(6)])
    loss = i2t_loss(img, text, labels, label_smoothing=0.1)
    assert loss.item() == pytest.approx(_label_smooth_ce_ref(logits, labels.numpy(), 0.1), abs=ATOL)
    loss.backward()
    _assert_grad_flows(img)


@pytest.mark.parametrize("eps", [-0.1, 1.0])
def test_id_loss_rejects_bad_label_smoothing(eps: float) -> None:
    with pytest.raises(ConfigError, match="label_smoothing"):
        id_loss(_rand(2, 3), torch.tensor([0, 1]), label_smoothing=eps)


# --------------------------------------------------------------------------- triplet


def _triplet_ref(x: np.ndarray, y: np.ndarray, margin: float) -> float:
    n = x.shape[0]

    def dist(i: int, j: int) -> float:
        return math.sqrt(max(sum((x[i, d] - x[j, d]) ** 2 for d in range(x.shape[1])), 1e-12))

    total = 0.0
    for i in range(n):
        d_ap = max(dist(i, j) for j in range(n) if y[j] == y[i])
        negatives = [dist(i, j) for j in range(n) if y[j] != y[i]]
        if negatives:
            total += max(d_ap - min(negatives) + margin, 0.0)
    return total / n


@pytest.mark.parametrize("margin", [0.3, 0.0, 5.0])
def test_triplet_matches_reference(margin: float) -> None:
    x = _rand(12, 5, seed=10).requires_grad_()
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4])  # ID 4 is a singleton: only itself is positive
    loss = batch_hard_triplet_loss(x, y, margin=margin)
    assert loss.item() == pytest.approx(_triplet_ref(x.detach().numpy(), y.numpy(), margin), abs=ATOL)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_triplet_gradient_nonzero_and_no_negatives_is_zero() -> None:
    x = _rand(8, 4, seed=11).requires_grad_()
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    batch_hard_triplet_loss(x, y, margin=10.0).backward()  # large margin: every anchor active
    _assert_grad_flows(x)

    z = _rand(4, 4, seed=12).requires_grad_()
    loss = batch_hard_triplet_loss(z, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_triplet_rejects_negative_margin() -> None:
    with pytest.raises(ConfigError, match="margin"):
        batch_hard_triplet_loss(_rand(2, 2), torch.tensor([0, 1]), margin=-0.1)


# --------------------------------------------------------------------------- QualiCLIP


def _qualiclip_ref(sp: np.ndarray, sn: np.ndarray, m_rank: float, m_cons: float) -> dict[str, float]:
    b_count, crops, levels = sp.shape
    cons_p = [max(abs(sp[b, 0, lv] - sp[b, 1, lv]) - m_cons, 0.0) for b in range(b_count) for lv in range(levels)]
    cons_n = [max(abs(sn[b, 0, lv] - sn[b, 1, lv]) - m_cons, 0.0) for b in range(b_count) for lv in range(levels)]
    pos, neg = [], []
    for b in range(b_count):
        for c in range(crops):
            for i in range(levels):
                for j in range(i + 1, levels):  # level i less degraded than level j
                    pos.append(max(sp[b, c, j] - sp[b, c, i] + m_rank, 0.0))
                    neg.append(max(sn[b, c, i] - sn[b, c, j] + m_rank, 0.0))
    cons = sum(cons_p) / len(cons_p) + sum(cons_n) / len(cons_n)
    out = {"cons": cons, "pos": sum(pos) / len(pos), "neg": sum(neg) / len(neg)}
    out["total"] = out["cons"] + out["pos"] + out["neg"]
    return out


@pytest.mark.parametrize(
    ("levels", "m_rank", "m_cons"), [(5, QUALICLIP_MARGIN_RANK, QUALICLIP_MARGIN_CONS), (3, 0.1, 0.0)]
)
def test_qualiclip_losses_match_reference(levels: int, m_rank: float, m_cons: float) -> None:
    sp = (0.05 * _rand(4, 2, levels, seed=13) + 0.2).requires_grad_()
    sn = (0.05 * _rand(4, 2, levels, seed=14) + 0.2).requires_grad_()
    out = qualiclip_losses(sp, sn, margin_rank=m_rank, margin_cons=m_cons)
    ref = _qualiclip_ref(sp.detach().numpy(), sn.detach().numpy(), m_rank, m_cons)
    assert set(out) == {"cons", "pos", "neg", "total"}
    for key in ref:
        assert out[key].item() == pytest.approx(ref[key], abs=ATOL), key
    sp.retain_grad()
    sn.retain_grad()
    out["total"].backward()
    _assert_grad_flows(sp, sn)


def test_qualiclip_losses_zero_when_ordered_and_consistent() -> None:
    levels = torch.arange(5, dtype=torch.float64)
    sp = (0.5 - 0.1 * levels).expand(3, 2, 5)  # falls by 0.1 > m_rank per level, crops equal
    sn = (0.1 + 0.1 * levels).expand(3, 2, 5)
    out = qualiclip_losses(sp, sn)
    assert all(v.item() == 0.0 for v in out.values())
    flipped = qualiclip_losses(sp.flip(-1), sn.flip(-1))
    assert flipped["pos"].item() > 0 and flipped["neg"].item() > 0 and flipped["cons"].item() == 0.0


def test_qualiclip_losses_bad_input() -> None:
    with pytest.raises(ConfigError, match="at least 2 degradation levels"):
        qualiclip_losses(_rand(2, 2, 1), _rand(2, 2, 1))
    with pytest.raises(ValueError, match=r"\[B, 2, L\]"):
        qualiclip_losses(_rand(2, 3, 4), _rand(2, 3, 4))
    with pytest.raises(ConfigError, match="margin_rank"):
        qualiclip_losses(_rand(2, 2, 3), _rand(2, 2, 3), margin_rank=-1.0)


# --------------------------------------------------------------------------- MOS


def test_mos_loss_mse_matches_reference() -> None:
    pred = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(15)).requires_grad_()
    mos = torch.tensor([12.0, 55.0, 80.0, 33.0, 99.0, 61.0], dtype=torch.float64)
    loss = mos_loss(pred, mos, "mse", mos_range=(0.0, 100.0))
    ref = sum((float(p) - float(m) / 100.0) ** 2 for p, m in zip(pred.detach(), mos)) / 6
    assert loss.item() == pytest.approx(ref, abs=ATOL)
    loss.backward()
    _assert_grad_flows(pred)
    assert mos_loss(pred, mos / 100.0).item() == pytest.approx(ref, abs=ATOL)  # default: mse, mos in [0, 1]


@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_mos_loss_rank_matches_reference(margin: float) -> None:
    pred = torch.rand(7, dtype=torch.float64, generator=torch.Generator().manual_seed(16)).requires_grad_()
    mos = torch.tensor([3.1, 2.0, 4.5, 2.0, 1.2, 3.9, 4.5], dtype=torch.float64)  # with ties
    p, m = pred.detach().numpy(), mos.numpy()
    terms = [max(p[j] - p[i] + margin, 0.0) for i in range(7) for j in range(7) if m[i] > m[j]]
    loss = mos_loss(pred, mos, "rank", margin=margin)
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=ATOL)
    loss.backward()
    _assert_grad_flows(pred)
    assert mos_loss(pred, torch.ones(7, dtype=torch.float64), "rank").item() == 0.0


def test_mos_loss_plcc_matches_reference() -> None:
    pred = torch.rand(9, dtype=torch.float64, generator=torch.Generator().manual_seed(17)).requires_grad_()
    mos = torch.rand(9, dtype=torch.float64, generator=torch.Generator().manual_seed(18)) * 4 + 1
    loss = mos_loss(pred, mos, "plcc", mos_range=(1.0, 5.0))
    assert loss.item() == pytest.approx(1.0 - np.corrcoef(pred.detach().numpy(), mos.numpy())[0, 1], abs=ATOL)
    loss.backward()
    _assert_grad_flows(pred)


def test_mos_loss_bad_options() -> None:
    pred, mos = torch.rand(3), torch.rand(3)
    with pytest.raises(ConfigError, match="unknown MOS loss kind 'l1'.*mse, rank, plcc"):
        mos_loss(pred, mos, "l1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mos_range"):
        mos_loss(pred, mos, mos_range=(5.0, 1.0))
    with pytest.raises(ValueError, match="shape"):
        mos_loss(pred, torch.rand(4))


# --------------------------------------------------------------------------- quality score


def test_quality_score_matches_softmax_formula() -> None:
    img = _rand(5, 8, seed=19).requires_grad_()
    pos, neg = _rand(3, 8, seed=20), _rand(3, 8, seed=21)

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    x, tp, tn = img.detach().numpy(), pos.numpy(), neg.numpy()
    expected = []
    for b in range(5):
        probs = []
        for p in range(3):
            ep, en = math.exp(100.0 * cos(x[b], tp[p])), math.exp(100.0 * cos(x[b], tn[p]))
            probs.append(ep / (ep + en))
        expected.append(sum(probs) / 3)
    score = quality_score(img, pos, neg, logit_scale=100.0)
    assert score.shape == (5,)
    np.testing.assert_allclose(score.detach().numpy(), expected, atol=ATOL)
    assert ((score >= 0) & (score <= 1)).all()
    score.sum().backward()
    _assert_grad_flows(img)


def test_quality_score_single_pair_and_scale_invariance() -> None:
    img, pos, neg = _rand(4, 6, seed=22), _rand(6, seed=23), _rand(6, seed=24)
    one = quality_score(img, pos, neg, logit_scale=10.0)
    assert one.shape == (4,)
    torch.testing.assert_close(one, quality_score(3.0 * img, 2.0 * pos[None], neg[None], logit_scale=10.0))
    with pytest.raises(ValueError, match="neg_text"):
        quality_score(img, _rand(2, 6), _rand(3, 6))


def test_quality_logit_is_the_log_odds_of_the_score() -> None:
    img, pos, neg = _rand(6, 8, seed=25), _rand(3, 8, seed=26), _rand(3, 8, seed=27)
    x = torch.nn.functional.normalize(img.double(), dim=-1)
    z = 10.0 * (x @ torch.nn.functional.normalize(pos.double(), dim=-1).t()
                - x @ torch.nn.functional.normalize(neg.double(), dim=-1).t())
    score = torch.sigmoid(z).mean(dim=1)  # plain: mean over pairs of the positive's probability
    logit = quality_logit(img, pos, neg, logit_scale=10.0)
    assert logit.dtype == torch.float64
    torch.testing.assert_close(logit, torch.log(score) - torch.log1p(-score), rtol=0, atol=1e-12)
    torch.testing.assert_close(quality_score(img, pos, neg, logit_scale=10.0), score, rtol=0, atol=1e-15)


def test_saturated_scores_keep_their_order_in_the_logit() -> None:
    """Cosine margins 0.30 / 0.31 / 0.32 at s = 100: float32 softmax gives 1.0 three times; the log-odds don't."""
    pos, neg = torch.eye(3)[0], torch.eye(3)[1]
    margins = torch.tensor([0.30, 0.31, 0.32], dtype=torch.float64)
    cp, cn = 0.5 + margins / 2, 0.5 - margins / 2
    img = torch.stack([cp, cn, (1 - cp ** 2 - cn ** 2).sqrt()], dim=1).float()
    float32 = (100.0 * torch.stack([img @ pos, img @ neg], -1)).softmax(-1)[:, 0]
    assert float32.tolist() == [1.0, 1.0, 1.0]  # what the score used to be: three ties
    logit = quality_logit(img, pos, neg, logit_scale=100.0)
    torch.testing.assert_close(logit, 100.0 * margins, rtol=0, atol=1e-4)  # one pair: the logit margin itself
    score = quality_score(img, pos, neg, logit_scale=100.0)
    assert bool((score.diff() > 0).all()) and bool((score < 1.0).all())  # strictly monotone in the margin
