"""Linear heads on cached, frozen image features: the CLIP linear probe and LP++.

Linear probe (CLIP paper, Appendix A.3; CoOp ``lpclip/linear_probe.py``): multinomial logistic
regression with an L2 penalty, as scikit-learn's ``LogisticRegression(solver="lbfgs",
max_iter=1000, penalty="l2", C=C)`` fits it -- minimise ``sum_i CE_i + ||W||^2 / (2 C)`` over the
weights ``W`` and an unpenalised bias -- solved here with torch's L-BFGS (strong Wolfe line
search) in float64 from zero, on the features as given (CoOp's extractor does not normalise
them). C is chosen on val as CoOp does (:func:`search_c`): try the grid 1e6, 1e4, ..., 1e-6, then
8 halving steps in log10 space on ``[peak / 10, peak * 10]``, each comparing the two ends and
keeping the better half (ties to the left, i.e. the smaller C); the C of the last step wins.

LP++ (Huang et al., CVPR 2024; FereshteShakeri/FewShot-CLIP-Strong-Baseline
``methods/linear_probe_p2.py``): logits ``f W^T + b + alpha_c * (f . t_c)`` on normalised features
``f`` and zero-shot text weights ``t``, trained full-batch: ``W`` starts at the per-class *sum*
of the training features, ``alpha`` (one per class) at ``250 * mean_c mean_{i in c} f_i . t_c``;
SGD with momentum 0.9 and step ``4 N / lambda_max(F^T F)`` on ``W, b`` every epoch, and a plain
gradient step ``N / (4 max_c sum_i (f_i . t_c)^2)`` on ``alpha`` every 10 epochs with alpha's
gradient summed since the first epoch (the reference never zeroes it); 300 epochs; the epoch
with the best val accuracy (ties: the later) is kept. Deviations: ``b`` starts at 0 (the
reference: ``nn.Linear``'s random init), float32 instead of the reference's float16.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ftclip.errors import FtclipError

__all__ = [
    "LP_C_GRID",
    "LP_SEARCH_STEPS",
    "LinearHead",
    "fit_logistic_regression",
    "search_c",
    "linear_probe",
    "LPPlusPlus",
    "fit_lp_plus_plus",
]

LP_C_GRID: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
LP_SEARCH_STEPS = 8


@dataclass(frozen=True)
class LinearHead:
    weight: Tensor  # [C, D]
    bias: Tensor  # [C]

    def logits(self, features: Tensor) -> Tensor:
        return features.to(self.weight.dtype) @ self.weight.T + self.bias


def _check_xy(features: Tensor, labels: Tensor, num_classes: int, what: str) -> None:
    if features.ndim != 2 or labels.shape != (features.shape[0],) or features.shape[0] == 0:
        raise FtclipError(f"{what}: features must be [N, D] with N >= 1 labels, got {tuple(features.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise FtclipError(f"{what}: labels must lie in 0..{num_classes - 1}")


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(dim=1) == labels.to(logits.device)).double().mean())


def fit_logistic_regression(
    features: Tensor, labels: Tensor, num_classes: int, c: float, *, max_iter: int = 1000
) -> LinearHead:
    """The minimiser of ``sum_i CE(W x_i + b, y_i) + ||W||^2 / (2 c)`` (float64, L-BFGS from zero)."""
    _check_xy(features, labels, num_classes, "logistic regression")
    if not c > 0 or not math.isfinite(c):
        raise FtclipError(f"logistic regression needs C > 0, got {c}")
    x = features.detach().double()
    y = labels.detach().long().to(x.device)
    n, d = x.shape
    w = torch.zeros(num_classes, d, dtype=torch.float64, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    # The objective divided by n (scikit-learn >= 1.1 scales it the same way): same minimiser.
    reg = 1.0 / (2.0 * c * n)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
        history_size=10, line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + reg * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearHead(w.detach(), b.detach())


def search_c(
    score: Callable[[float], float], grid: Sequence[float] = LP_C_GRID, steps: int = LP_SEARCH_STEPS
) -> tuple[float, list[tuple[float, float]]]:
    """CoOp's C search (module docstring): ``(chosen C, [(C, score), ...] in the order tried)``.

    ``score(C)`` is the val accuracy of the probe fitted with ``C``; repeated values are scored once.
    """
    if not grid or steps < 0:
        raise FtclipError("the C search needs a non-empty grid and steps >= 0")
    seen: dict[float, float] = {}
    trace: list[tuple[float, float]] = []

    def at(c: float) -> float:
        if c not in seen:
            seen[c] = float(score(c))
            trace.append((c, seen[c]))
        return seen[c]

    scores = [at(c) for c in grid]
    peak = grid[max(range(len(grid)), key=lambda i: (scores[i], -i))]  # the first maximum
    if steps == 0:
        return peak, trace
    left, right = math.log10(peak) - 1.0, math.log10(peak) + 1.0
    chosen = peak
    for _ in range(steps):
        if at(10.0**left) < at(10.0**right):
            chosen = 10.0**right
            left = 0.5 * (left + right)
        else:
            chosen = 10.0**left
            right = 0.5 * (left + right)
    return chosen, trace


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    num_classes: int,
    *,
    grid: Sequence[float] = LP_C_GRID,
    steps: int = LP_SEARCH_STEPS,
    max_iter: int = 1000,
) -> tuple[LinearHead, float, list[tuple[float, float]]]:
    """Fit the probe for every C :func:`search_c` tries, scoring each on val; return the chosen
    C's head, that C and the search trace. The test split plays no part."""
    _check_xy(val_features, val_labels, num_classes, "linear probe val set")
    heads: dict[float, LinearHead] = {}

    def score(c: float) -> float:
        heads[c] = fit_logistic_regression(train_features, train_labels, num_classes, c, max_iter=max_iter)
        return _accuracy(heads[c].logits(val_features), val_labels)

    chosen, trace = search_c(score, grid, steps)
    return heads[chosen], chosen, trace


@dataclass(frozen=True)
class LPPlusPlus:
    weight: Tensor  # [C, D]
    bias: Tensor  # [C]
    alpha: Tensor  # [C]
    text_weights: Tensor  # [C, D], the zero-shot classifier

    def logits(self, features: Tensor) -> Tensor:
        f = F.normalize(features.to(self.weight.dtype), dim=-1)
        return f @ self.weight.T + self.bias + self.alpha * (f @ self.text_weights.T)

    def as_linear(self) -> LinearHead:
        """The same logits as one linear head on normalised features: ``f (W + alpha T)^T + b``."""
        return LinearHead(self.weight + self.alpha.unsqueeze(1) * self.text_weights, self.bias)


def fit_lp_plus_plus(
    features: Tensor,
    labels: Tensor,
    text_weights: Tensor,
    val_features: Tensor,
    val_labels: Tensor,
    *,
    epochs: int = 300,
    alpha_every: int = 10,
) -> tuple[LPPlusPlus, int, float]:
    """Train LP++ as its reference does (module docstring); return the best-val head, its
    (0-based) epoch and val accuracy. Features are normalised here; ``text_weights`` ``[C, D]``."""
    num_classes = text_weights.shape[0]
    _check_xy(features, labels, num_classes, "LP++")
    _check_xy(val_features, val_labels, num_classes, "LP++ val set")
    x = F.normalize(features.detach().float(), dim=-1)
    y = labels.detach().long().to(x.device)
    t = text_weights.detach().float().to(x.device)
    xv = F.normalize(val_features.detach().float().to(x.device), dim=-1)
    n = x.shape[0]
    onehot = F.one_hot(y, num_classes).float()
    ft = x @ t.T  # [N, C] text logits
    gram = x.double().T @ x.double() if x.shape[1] <= n else x.double() @ x.double().T  # same top eigenvalue
    lr_w = 4.0 * n / float(torch.linalg.eigvalsh(gram)[-1])
    per_class = (onehot * ft).sum(dim=0) / onehot.sum(dim=0).clamp(min=1)
    alpha = torch.full((num_classes,), 250.0 * float(per_class.mean()), device=x.device)
    lr_alpha = n / (4.0 * float((ft * ft).sum(dim=0).max()))
    w = (onehot.T @ x).requires_grad_(True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    alpha.requires_grad_(True)
    opt = torch.optim.SGD([w, b], lr=lr_w, momentum=0.9)
    alpha_grad = torch.zeros_like(alpha)
    best: tuple[LPPlusPlus, int, float] | None = None
    with torch.enable_grad():
        for epoch in range(epochs):
            loss = F.cross_entropy(x @ w.T + b + alpha * ft, y)
            gw, gb, ga = torch.autograd.grad(loss, [w, b, alpha])
            w.grad, b.grad = gw, gb
            opt.step()
            alpha_grad += ga
            if (epoch + 1) % alpha_every == 0:
                with torch.no_grad():
                    alpha -= lr_alpha * alpha_grad
            head = LPPlusPlus(w.detach().clone(), b.detach().clone(), alpha.detach().clone(), t)
            acc = _accuracy(head.logits(xv), val_labels)
            if best is None or acc >= best[2]:
                best = (head, epoch, acc)
    if best is None:
        raise FtclipError(f"LP++ needs epochs >= 1, got {epochs}")
    return best
