"""A trained few-shot classifier as an export stores it, and its logits: one function for the run's
evaluation, ``ftclip predict`` (runs and exports alike) and the model card's numpy snippet.

``meta["classifier"]`` says which kind, and the export's tensor files hold its parts:

* ``text`` -- ``logit_scale * cos(image, class)``: ``text_features.safetensors`` ``weights`` ``[C, D]``
  (unit rows: zero-shot prompts averaged over the templates, CoOp's learned context, or the adapted
  text tower) and ``logit_scale`` ``[]``;
* ``linear`` -- ``x W^T + b``: ``heads.safetensors`` ``weight`` ``[C, D]``, ``bias`` ``[C]``, where ``x`` is
  the image feature, L2-normalised when ``meta["normalize"]`` (LP++, fine-tuning's head) and raw
  otherwise (the CLIP linear probe);
* ``tip`` -- Tip-Adapter: the ``text`` logits plus ``alpha * exp(-beta * (1 - x K^T)) L`` with
  ``heads.safetensors`` ``cache_keys`` ``[N, D]``, ``cache_values`` ``[N, C]``, ``alpha`` ``[]``, ``beta`` ``[]``.

The image feature is open_clip's ``encode_image`` output (``feature: proj``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ftclip.errors import FtclipError
from ftclip.tasks.fewshot.heads import tip_adapter_logits

CLASSIFIERS = ("text", "linear", "tip")
_PARTS = {"text": {"text_features": ("weights", "logit_scale")},
          "linear": {"heads": ("weight", "bias")},
          "tip": {"text_features": ("weights", "logit_scale"), "heads": ("cache_keys", "cache_values", "alpha", "beta")}}


def classifier_logits(features: Tensor, tensors: dict[str, dict[str, Tensor]], meta: dict) -> Tensor:
    """Class logits ``[B, C]`` of ``encode_image`` features ``[B, D]`` (see the module docstring)."""
    kind = meta.get("classifier")
    if kind not in CLASSIFIERS:
        raise FtclipError(f"the model's classifier kind {kind!r} is not one of {', '.join(CLASSIFIERS)}; re-export the run")
    missing = [f"{part}.{name}" for part, names in _PARTS[kind].items() for name in names
               if name not in tensors.get(part, {})]
    if missing:
        raise FtclipError(f"a '{kind}' few-shot classifier needs {', '.join(missing)} among the export's tensors; "
                          "re-export the run")
    f = features.float()
    if kind == "linear":
        head = tensors["heads"]
        x = F.normalize(f, dim=-1) if meta.get("normalize", True) else f
        return x @ head["weight"].float().T + head["bias"].float()
    text = tensors["text_features"]
    weights, scale = text["weights"].float(), float(text["logit_scale"])
    if kind == "text":
        return scale * F.normalize(f, dim=-1) @ weights.T
    head = tensors["heads"]
    return tip_adapter_logits(f, weights, head["cache_keys"].float(), head["cache_values"].float(),
                              float(head["alpha"]), float(head["beta"]), scale)


def numpy_logits_lines(meta: dict, folder: str = "folder") -> list[str]:
    """Python lines that compute ``logits`` from ``f`` (``encode_image`` output as a numpy array ``[B, D]``)
    with numpy and safetensors alone, exactly as :func:`classifier_logits` does; ``folder`` is the
    name of a variable holding the export folder's path."""
    kind = meta.get("classifier")
    norm = "f = f / np.linalg.norm(f, axis=1, keepdims=True)"
    if kind == "linear":
        lines = [f'h = load_file(f"{{{folder}}}/heads.safetensors")']
        if meta.get("normalize", True):
            lines.append(norm)
        return lines + ['logits = f @ h["weight"].T + h["bias"]']
    lines = [f't = load_file(f"{{{folder}}}/text_features.safetensors")', norm]
    if kind == "text":
        return lines + ['logits = t["logit_scale"] * f @ t["weights"].T']
    return lines + [f'h = load_file(f"{{{folder}}}/heads.safetensors")',
                    'cache = np.exp(-h["beta"] * (1.0 - f @ h["cache_keys"].T)) @ h["cache_values"]',
                    'logits = t["logit_scale"] * f @ t["weights"].T + h["alpha"] * cache']


def model_card_section(meta: dict) -> str:
    """The few-shot part of an export's model card: what the classifier is and how to run it without ftclip."""
    names = list(meta.get("classnames", []))
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    what = {"text": "cosine similarity to the class text features, times the logit scale",
            "linear": "a linear head on the " + ("L2-normalised " if meta.get("normalize", True) else "raw ")
                      + "image feature",
            "tip": "Tip-Adapter: zero-shot text logits plus the few-shot cache term"}.get(meta.get("classifier"), "")
    lines = "\n".join(numpy_logits_lines(meta))
    return f"""
## Classify images (few-shot classifier)

Method `{meta.get('method')}`; classifier: {what}. Classes ({len(names)}): {shown}.
`ftclip predict /path/to/this/folder photos/ --out preds.csv` gives the same labels as this (ftclip's
evaluation preprocessing is the export's open_clip `preprocess`):

```python
import json
import numpy as np, open_clip, torch
from PIL import Image, ImageOps
from safetensors.numpy import load_file

folder = "/path/to/this/folder"
model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{{folder}}")
classnames = json.load(open(f"{{folder}}/ftclip_export.json"))["task_info"]["classnames"]
with torch.no_grad():
    image = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB")  # as ftclip reads it
    f = model.eval().encode_image(preprocess(image).unsqueeze(0)).numpy()
{lines}
print(classnames[int(logits.argmax(axis=1)[0])])
```
"""

