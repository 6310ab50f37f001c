"""Zero-shot weights and Tip-Adapter against the reference code's computations on identical inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ftclip.tasks.fewshot.heads import (
    cosine_logits,
    tip_adapter_logits,
    tip_adapter_search,
    tip_cache,
    tip_search_grid,
    zeroshot_weights,
)


def _clip_classifier(text_features: torch.Tensor) -> torch.Tensor:
    """Tip-Adapter utils.clip_classifier after encode_text: per class, a loop over its templates."""
    weights = []
    for c in range(text_features.shape[1]):
        emb = text_features[:, c].clone()
        emb /= emb.norm(dim=-1, keepdim=True)
        e = emb.mean(dim=0)
        e /= e.norm()
        weights.append(e)
    return torch.stack(weights, dim=1)  # [D, C], as the reference keeps it


def _setup(seed: int = 0, c: int = 5, k: int = 4, d: int = 16, passes: int = 3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=g, dtype=torch.float64)
    text = centres + 5.0 * torch.randn(7, c, d, generator=g, dtype=torch.float64)  # a weak zero-shot classifier
    labels = torch.arange(c).repeat_interleave(k)
    train = centres[labels] + 0.8 * torch.randn(passes, c * k, d, generator=g, dtype=torch.float64)
    val_labels = torch.randint(0, c, (40,), generator=g)
    val = F.normalize(centres[val_labels] + 0.8 * torch.randn(40, d, generator=g, dtype=torch.float64), dim=-1)
    return text, labels, train, val, val_labels, c


def test_zeroshot_weights_match_the_reference_loop() -> None:
    text, *_ = _setup()
    assert torch.allclose(zeroshot_weights(text), _clip_classifier(text).T, atol=1e-12)
    w = zeroshot_weights(text)
    img = torch.randn(3, 16, dtype=torch.float64)
    ref = 100.0 * (img / img.norm(dim=-1, keepdim=True)) @ _clip_classifier(text)
    assert torch.allclose(cosine_logits(img, w), ref, atol=1e-10)


def test_cache_and_logits_match_the_reference() -> None:
    text, labels, train, val, _, c = _setup()
    keys, values = tip_cache(train, labels, c)
    # build_cache_model: stack the passes, mean, normalise, permute to [D, N]; one-hot values
    ref_keys = train.mean(dim=0)
    ref_keys /= ref_keys.norm(dim=-1, keepdim=True)
    ref_keys = ref_keys.permute(1, 0)
    assert torch.allclose(keys, ref_keys.T) and torch.equal(values, F.one_hot(labels).double())
    w = _clip_classifier(text)
    beta, alpha = 5.5, 1.17
    affinity = val @ ref_keys
    ref = 100.0 * val @ w + ((-1) * (beta - beta * affinity)).exp() @ F.one_hot(labels).double() * alpha
    out = tip_adapter_logits(val, zeroshot_weights(text), keys, values, alpha, beta)
    assert torch.allclose(out, ref, atol=1e-10)


def _search_hp(scale, step, keys_dn, values, features, labels, w_dc):
    """Tip-Adapter utils.search_hp, verbatim apart from the printing."""
    beta_list = [i * (scale[0] - 0.1) / step[0] + 0.1 for i in range(step[0])]
    alpha_list = [i * (scale[1] - 0.1) / step[1] + 0.1 for i in range(step[1])]
    best_acc, best_beta, best_alpha = 0, 0, 0
    for beta in beta_list:
        for alpha in alpha_list:
            affinity = features @ keys_dn
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
            tip_logits = 100.0 * features @ w_dc + cache_logits * alpha
            acc = 100 * float((tip_logits.argmax(1) == labels).sum()) / labels.shape[0]
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha, best_acc


def test_search_matches_the_reference_grid_and_tie_rule() -> None:
    text, labels, train, val, val_labels, c = _setup(seed=3)
    keys, values = tip_cache(train, labels, c)
    w = zeroshot_weights(text)
    found = tip_adapter_search(val, val_labels, w, keys, values, search_scale=(7.0, 3.0), search_step=(30, 10))
    beta, alpha, acc = _search_hp((7.0, 3.0), (30, 10), keys.T, values, val, val_labels, w.T)
    assert (found.beta, found.accuracy * 100) == pytest.approx((beta, acc))
    assert found.alpha == pytest.approx(alpha)
    assert tip_search_grid(12, 200)[0] == pytest.approx(0.1) and tip_search_grid(12, 200)[-1] < 12
