"""CLIP-LoRA's adapter maths (loralib LinearLoRA) from peft configured with ftclip's CLIP-LoRA defaults."""

from __future__ import annotations

import math

import peft
import torch
import torch.nn.functional as F
from torch import nn

from ftclip.tasks.fewshot.methods import CLIP_LORA


def _adapted(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(12, 12))
    return peft.inject_adapter_in_model(peft.LoraConfig(target_modules=["0"], **CLIP_LORA.peft_kwargs()), base)


def test_scaling_init_and_dropout_placement_match_clip_lora() -> None:
    model = _adapted()
    layer = model[0]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert a.shape == (CLIP_LORA.r, 12) and b.shape == (12, CLIP_LORA.r)
    assert layer.scaling["default"] == CLIP_LORA.alpha / math.sqrt(CLIP_LORA.r)  # rsLoRA, loralib/layers.py
    assert torch.count_nonzero(b) == 0 and a.abs().max() <= 1 / math.sqrt(12)  # B = 0, A Kaiming-uniform(a=sqrt(5))
    with torch.no_grad():
        b.normal_()  # as after training
    w, bias = layer.get_base_layer().weight, layer.get_base_layer().bias
    x = torch.randn(5, 12)
    s = CLIP_LORA.alpha / math.sqrt(CLIP_LORA.r)
    # LinearLoRA.forward in training: original output + dropout(x) @ (B A)^T * scaling
    model.train()
    torch.manual_seed(7)
    out = model(x)
    torch.manual_seed(7)
    dropped = F.dropout(x, CLIP_LORA.dropout, training=True)
    assert torch.allclose(out, x @ w.T + bias + dropped @ (b @ a).T * s, atol=1e-6)
    # in eval: no dropout, i.e. the merged weight W + s B A
    model.eval()
    assert torch.allclose(model(x), x @ (w + s * b @ a).T + bias, atol=1e-6)
