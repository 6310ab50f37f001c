"""Image-quality metrics: SRCC and PLCC between predicted scores and mean opinion scores (MOS).

``plcc`` is the plain Pearson correlation of the raw predictions, *without* a logistic fit (as
pyiqa reports by default); ``plcc_logistic`` first maps the predictions through a fitted
4-parameter logistic, as some papers do. Say which one a table reports.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import OptimizeWarning, curve_fit
from torch import Tensor
from torchmetrics.functional.regression import pearson_corrcoef, spearman_corrcoef

from ftclip.errors import FtclipError

ArrayLike = Tensor | np.ndarray | Sequence[float]


def srcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Spearman rank correlation (ties get their mean rank); NaN with a warning if an input is constant."""
    p, t = _pair(pred, target)
    if _constant(p, t):
        return math.nan
    return float(spearman_corrcoef(p, t))


def plcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Pearson linear correlation of the raw predictions, without a logistic fit (pyiqa's default)."""
    p, t = _pair(pred, target)
    if _constant(p, t):
        return math.nan
    return float(pearson_corrcoef(p, t))


def plcc_logistic(pred: ArrayLike, target: ArrayLike) -> float:
    """Pearson correlation after fitting ``target ~ (b1 - b2) / (1 + exp(-(pred - b3) / |b4|)) + b2``.

    The 4-parameter logistic is fitted by least squares (``scipy.optimize.curve_fit``); if the fit
    fails or gives non-finite values, a warning is issued and the plain :func:`plcc` is returned.
    """
    p, t = _pair(pred, target)
    if _constant(p, t):
        return math.nan
    x, y = p.numpy(), t.numpy()
    rising = float(pearson_corrcoef(p, t)) >= 0
    guess = [y.max(), y.min(), float(np.median(x)), float(x.std()) / 2 or 1.0]
    if not rising:
        guess[0], guess[1] = guess[1], guess[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            params, _ = curve_fit(_logistic4, x, y, p0=guess, maxfev=20000)
        fitted = _logistic4(x, *params)
        if not np.all(np.isfinite(fitted)) or np.ptp(fitted) == 0:
            raise RuntimeError("degenerate logistic fit")
    except (RuntimeError, ValueError, OptimizeWarning) as err:
        warnings.warn(f"4-parameter logistic fit failed ({err}); returning PLCC without the fit.", stacklevel=2)
        return float(pearson_corrcoef(p, t))
    return float(pearson_corrcoef(torch.from_numpy(fitted), t))


def evaluate_iqa(pred: ArrayLike, mos: ArrayLike, logit: ArrayLike | None = None) -> dict[str, Any]:
    """``{"srcc", "plcc" (no logistic fit), "num_images"}`` for predicted scores against MOS.

    ``logit``: the scores' log-odds (:func:`ftclip.tasks.iqa.losses.quality_logit`). SRCC is a rank
    statistic, so it is computed from them when given: they order the images as the scores do,
    without the ties a saturated score (exactly 0 or 1) would leave. PLCC is the scores'.
    """
    p, t = _pair(pred, mos, names=("pred", "mos"))
    ranked = p if logit is None else _pair(logit, mos, names=("logit", "mos"))[0]
    return {"srcc": srcc(ranked, t), "plcc": plcc(p, t), "num_images": p.numel()}


def _logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    z = np.clip(-(x - b3) / (abs(b4) + 1e-12), -500.0, 500.0)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def _pair(pred: ArrayLike, target: ArrayLike, names: tuple[str, str] = ("pred", "target")) -> tuple[Tensor, Tensor]:
    """Both inputs as 1-D float64 CPU tensors of equal length >= 2, all finite."""
    out = []
    for name, value in zip(names, (pred, target)):
        t = torch.from_numpy(np.asarray(value)) if isinstance(value, np.ndarray) else torch.as_tensor(value)
        shape = tuple(t.shape)
        t = t.detach().to("cpu", torch.float64)
        if t.ndim == 2 and 1 in shape:
            t = t.flatten()
        if t.ndim != 1:
            raise FtclipError(f"{name} must be a 1-D list of scores, one per image; got shape {shape}.")
        if not bool(torch.isfinite(t).all()):
            raise FtclipError(f"{name} contains NaN or infinite scores; check the model outputs / label file.")
        out.append(t)
    p, t = out
    if p.numel() != t.numel():
        raise FtclipError(
            f"{names[0]} has {p.numel()} scores but {names[1]} has {t.numel()}; pass one score per image for both."
        )
    if p.numel() < 2:
        raise FtclipError(f"correlation needs at least 2 images; got {p.numel()}.")
    return p, t


def _constant(p: Tensor, t: Tensor) -> bool:
    """True (with a warning) if either input has no spread, which leaves correlation undefined."""
    if bool((p == p[0]).all()) or bool((t == t[0]).all()):
        warnings.warn("predictions or targets are constant; correlation is undefined (NaN).", stacklevel=3)
        return True
    return False
