"""Linear probe (L2 logistic regression + CoOp's C search) and LP++ against their reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ftclip.tasks.fewshot.linear_probe import (
    LP_C_GRID,
    fit_logistic_regression,
    fit_lp_plus_plus,
    linear_probe,
    search_c,
)


def _features(seed: int = 0, c: int = 4, n_per: int = 6, d: int = 10, noise: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.arange(c).repeat_interleave(n_per)
    x = centres[y] + noise * torch.randn(len(y), d, generator=g, dtype=torch.float64)
    return x, y, centres


@pytest.mark.parametrize("c", [1e-2, 1.0, 100.0])
def test_logistic_regression_solves_the_l2_objective(c: float) -> None:
    x, y, _ = _features()
    head = fit_logistic_regression(x, y, 4, c)
    # optimality of sum_i CE_i + ||W||^2 / (2C): X^T (P - Y) + W / C = 0 and sum_i (P - Y) = 0 (bias unpenalised)
    p = torch.softmax(x @ head.weight.T + head.bias, dim=1)
    r = p - F.one_hot(y, 4).double()
    # (scikit-learn stops at 1e-4 on the gradient of the objective / N, i.e. 2.4e-3 here)
    assert (r.T @ x + head.weight / c).abs().max() < 1e-4
    assert r.sum(dim=0).abs().max() < 1e-4


def _coop_search(score, grid, num_step):
    """CoOp lpclip/linear_probe.py's search with `score(C)` in place of fit-and-predict."""
    acc_list = [score(cw) for cw in grid]
    c_peak = grid[int(np.argmax(acc_list))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final = None
    for _ in range(num_step):
        acc_left, acc_right = score(c_left), score(c_right)
        if acc_left < acc_right:
            c_final = c_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final = c_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final


@pytest.mark.parametrize("peak", [0.37, 3e3, 2e-5])
def test_c_search_follows_coop(peak: float) -> None:
    def score(c: float) -> float:  # a bumpy, quantised val accuracy around log10(peak)
        return round(1.0 - 0.1 * abs(np.log10(c) - np.log10(peak)) + 0.02 * np.sin(7 * np.log10(c)), 2)

    chosen, trace = search_c(score, LP_C_GRID, 8)
    assert chosen == pytest.approx(_coop_search(score, LP_C_GRID, 8), rel=1e-9)
    assert [c for c, _ in trace[:7]] == list(LP_C_GRID) and len({c for c, _ in trace}) == len(trace)


def test_c_search_ties_take_the_first_grid_value_and_the_left_end() -> None:
    chosen, trace = search_c(lambda c: 0.5, LP_C_GRID, 3)
    assert trace[:7] == [(c, 0.5) for c in LP_C_GRID]
    assert chosen == pytest.approx(_coop_search(lambda c: 0.5, LP_C_GRID, 3))  # 1e6 is the peak, left wins ties


def test_linear_probe_returns_the_head_fitted_at_the_chosen_c() -> None:
    x, y, centres = _features(seed=1, d=3)  # overlapping classes: every C converges in a few iterations
    g = torch.Generator().manual_seed(2)
    yv = torch.arange(4).repeat_interleave(3)
    xv = centres[yv] + 1.5 * torch.randn(len(yv), 3, generator=g, dtype=torch.float64)
    head, c, trace = linear_probe(x, y, xv, yv, 4, steps=2)
    ref = fit_logistic_regression(x, y, 4, c)
    assert torch.allclose(head.weight, ref.weight) and torch.allclose(head.bias, ref.bias)
    assert dict(trace)[c] == float((head.logits(xv).argmax(1) == yv).double().mean())


def _lp_pp_reference(features, labels, text_weights_dc, val_features, val_labels, epochs):
    """linear_probe_p2.LinearProbe_P2.forward on cached features (bias zero-initialised, float32)."""
    n, c = features.shape[0], text_weights_dc.shape[1]
    one_hot = F.one_hot(labels, c).float()
    classifier = nn.Linear(features.shape[1], c, bias=True)
    classifier.weight.data = one_hot.T @ features  # compute_centroids: per-class sum
    classifier.bias.data.zero_()
    lr_temp = 4 * n / float(np.linalg.eigh((features.T @ features).double().numpy())[0].max())
    alpha_tilde = (one_hot * (features @ text_weights_dc) / one_hot.sum(0, keepdim=True)).sum(0)
    alpha_vec = (250 * alpha_tilde.mean() * torch.ones(1, c)).requires_grad_(True)
    lr_alpha = n / (max(torch.sum((features @ text_weights_dc) ** 2, dim=0)) * 4)
    optimizer = torch.optim.SGD(classifier.parameters(), lr_temp, momentum=0.9)
    best_acc, best = 0.0, None
    for epoch in range(epochs):
        logits = classifier(features) + torch.ones(n, 1) @ alpha_vec * (features @ text_weights_dc)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
        logits_val = classifier(val_features) + torch.ones(val_features.shape[0], 1) @ alpha_vec * (val_features @ text_weights_dc)
        acc_val = float((logits_val.argmax(1) == val_labels).float().mean())
        if acc_val >= best_acc:
            best_acc = acc_val
            best = (classifier.weight.detach().clone(), classifier.bias.detach().clone(), alpha_vec.detach().clone()[0], epoch)
    return best, best_acc


def test_lp_plus_plus_matches_the_reference_loop() -> None:
    x, y, centres = _features(seed=4, c=5, n_per=4, d=12, noise=2.0)
    x = F.normalize(x.float(), dim=-1)
    g = torch.Generator().manual_seed(5)
    text = F.normalize(centres.float() + 2.0 * torch.randn(5, 12, generator=g), dim=-1)
    yv = torch.arange(5).repeat_interleave(4)
    xv = F.normalize(centres.float()[yv] + 2.0 * torch.randn(20, 12, generator=g), dim=-1)
    head, epoch, acc = fit_lp_plus_plus(x, y, text, xv, yv, epochs=40)
    (w, b, alpha, ref_epoch), ref_acc = _lp_pp_reference(x, y, text.T, xv, yv, epochs=40)
    assert epoch == ref_epoch and acc == pytest.approx(ref_acc)
    assert torch.allclose(head.weight, w, atol=1e-5) and torch.allclose(head.bias, b, atol=1e-5)
    assert torch.allclose(head.alpha, alpha, atol=1e-4)
    assert not torch.allclose(alpha, torch.full_like(alpha, float(alpha[0]))) or epoch < 9  # alpha moved per class
    # as one linear head on normalised features (what the module stores and exports): the same logits
    linear = head.as_linear()
    ref_logits = xv @ w.T + b + alpha * (xv @ text.T)  # the reference's classifier(f) + alpha (f . t)
    assert torch.allclose(F.normalize(xv, dim=-1) @ linear.weight.T + linear.bias, ref_logits, atol=1e-4)
