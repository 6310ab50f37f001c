"""SRCC/PLCC against scipy, logistic-fitted PLCC, and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ftclip.errors import FtclipError
from ftclip.tasks.iqa.metrics import evaluate_iqa, plcc, plcc_logistic, srcc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_srcc_plcc_match_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, 300)
    pred = 0.3 * mos + rng.normal(scale=0.5, size=300)
    assert srcc(pred, mos) == pytest.approx(stats.spearmanr(pred, mos).statistic, abs=1e-6)
    assert plcc(pred, mos) == pytest.approx(stats.pearsonr(pred, mos).statistic, abs=1e-6)


def test_srcc_with_ties_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    mos = rng.integers(1, 6, 200).astype(float)
    pred = np.round(mos + rng.normal(size=200))
    assert srcc(pred, mos) == pytest.approx(stats.spearmanr(pred, mos).statistic, abs=1e-6)


def test_evaluate_iqa_accepts_torch_and_lists() -> None:
    pred = torch.tensor([[0.1], [0.4], [0.35], [0.8]])  # a [N, 1] model output is accepted
    mos = [10.0, 30.0, 40.0, 70.0]
    result = evaluate_iqa(pred, mos)
    assert result["num_images"] == 4
    assert result["srcc"] == pytest.approx(0.8)
    assert result["plcc"] == pytest.approx(stats.pearsonr(pred.flatten().numpy(), mos).statistic, abs=1e-6)


def test_plcc_logistic_fits_a_monotone_nonlinearity() -> None:
    rng = np.random.default_rng(4)
    pred = rng.uniform(-3, 3, 400)
    mos = 1 + 4 / (1 + np.exp(-2 * pred)) + rng.normal(scale=0.05, size=400)
    assert plcc_logistic(pred, mos) > 0.99 > plcc(pred, mos)
    assert plcc_logistic(-pred, mos) > 0.99  # decreasing relation


def test_plcc_logistic_falls_back_with_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    import ftclip.tasks.iqa.metrics as iqa

    def failing_fit(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(iqa, "curve_fit", failing_fit)
    pred, mos = [0.1, 0.5, 0.2, 0.9], [1.0, 3.0, 2.5, 4.0]
    with pytest.warns(UserWarning, match="logistic fit failed"):
        assert plcc_logistic(pred, mos) == pytest.approx(plcc(pred, mos))


def test_constant_input_gives_nan_with_warning() -> None:
    with pytest.warns(UserWarning, match="constant"):
        assert math.isnan(plcc([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


@pytest.mark.parametrize(
    ("pred", "mos", "message"),
    [
        ([0.1, 0.2, 0.3], [1.0, 2.0], "pred has 3 scores but mos has 2"),
        ([0.1], [1.0], "at least 2 images; got 1"),
        ([], [], "at least 2 images; got 0"),
        (np.zeros((2, 3)), np.zeros(6), r"pred must be a 1-D .* shape \(2, 3\)"),
        ([0.1, float("nan")], [1.0, 2.0], "pred contains NaN"),
    ],
)
def test_bad_inputs_raise(pred, mos, message: str) -> None:
    with pytest.raises(FtclipError, match=message):
        evaluate_iqa(pred, mos)


def test_srcc_comes_from_the_log_odds_when_scores_saturate(tmp_path) -> None:
    """Scores pinned at 1.0 tie; their log-odds keep the order, and SRCC is computed from those."""
    from scipy.stats import spearmanr

    from ftclip.tasks.iqa.plots import plot_scatter

    mos = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    logits = [0.5, 18.0, 25.0, 21.0, 30.0, 40.0]
    scores = torch.sigmoid(torch.tensor(logits, dtype=torch.float32)).tolist()  # what float32 scoring gave
    assert scores[1:] == [1.0] * 5
    tied = evaluate_iqa(scores, mos)
    ranked = evaluate_iqa(scores, mos, logits)
    assert ranked["srcc"] == pytest.approx(spearmanr(logits, mos)[0])
    assert ranked["srcc"] != pytest.approx(tied["srcc"]) and ranked["plcc"] == tied["plcc"]
    out = plot_scatter(tmp_path / "s.png", scores, mos, logits, title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
