"""WiSE-FT interpolation of state dicts, and the LoRA form (scaling the adapter delta)."""

from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

from ftclip.errors import FtclipError
from ftclip.tasks.fewshot.methods import CLIP_LORA
from ftclip.tasks.fewshot.wise import WISE_ALPHAS, scale_lora_delta, wise_interpolate


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "visual.proj": torch.randn(4, 3, generator=g),
        "head.weight": torch.randn(5, 3, generator=g),
        "bn.num_batches_tracked": torch.tensor(7),
    }


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_interpolation_is_the_reference_formula(alpha: float) -> None:
    zs, ft = _state(0), _state(1)
    out = wise_interpolate(zs, ft, alpha)
    for key in ("visual.proj", "head.weight"):
        assert torch.equal(out[key], (1 - alpha) * zs[key] + alpha * ft[key])
    assert out["bn.num_batches_tracked"].dtype == torch.int64 and int(out["bn.num_batches_tracked"]) == 7
    if alpha == 0.0:
        assert all(torch.equal(out[k], zs[k]) for k in zs)


def test_mismatched_models_are_refused() -> None:
    zs, ft = _state(0), _state(1)
    with pytest.raises(FtclipError, match="only in the fine-tuned one: \\['extra'\\]"):
        wise_interpolate(zs, {**ft, "extra": torch.zeros(1)}, 0.5)
    with pytest.raises(FtclipError, match="head.weight has shape"):
        wise_interpolate(zs, {**ft, "head.weight": torch.zeros(2, 3)}, 0.5)
    with pytest.raises(FtclipError, match="non-float tensor bn.num_batches_tracked differs"):
        wise_interpolate(zs, {**ft, "bn.num_batches_tracked": torch.tensor(8)}, 0.5)
    with pytest.raises(FtclipError, match="alpha must be a number in \\[0, 1\\]"):
        wise_interpolate(zs, ft, 1.5)
    assert WISE_ALPHAS[0] == 0.0 and WISE_ALPHAS[-1] == 1.0 and len(WISE_ALPHAS) == 11


def test_scaling_the_lora_delta_is_interpolating_merged_weights() -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(8, 6))
    w0 = base[0].weight.detach().clone()
    model = peft.inject_adapter_in_model(peft.LoraConfig(target_modules=["0"], **CLIP_LORA.peft_kwargs()), base)
    with torch.no_grad():
        model[0].lora_B["default"].weight.normal_()  # a trained adapter
    adapters = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    model[0].merge()
    w_ft = model[0].get_base_layer().weight.detach().clone()
    for alpha in (0.25, 0.7):
        model[0].unmerge()
        model.load_state_dict(scale_lora_delta(adapters, alpha), strict=False)
        model[0].merge()
        merged = model[0].get_base_layer().weight.detach()
        expected = wise_interpolate({"w": w0}, {"w": w_ft}, alpha)["w"]
        assert torch.allclose(merged, expected, atol=1e-6)
    with pytest.raises(FtclipError, match="no 'lora_B' tensor"):
        scale_lora_delta({"w": w0}, 0.5)
