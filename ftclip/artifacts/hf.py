"""Hugging Face exports of an open_clip CLIP model: a transformers ``CLIPModel`` folder and the
diffusers text-encoder layout, each verified in a fresh process that never imports ftclip.

:func:`export_hf` writes (see docs/export.md, "Hugging Face transformers and diffusers")::

    <out>/hf/
      config.json, model.safetensors        CLIPModel (both towers, projections, logit_scale)
      vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json
      preprocessor_config.json              CLIPImageProcessor: resize to H x W (no crop), mean/std
      text_encoder/config.json, model.safetensors   CLIPTextModel for diffusers (--text-layer)
      tokenizer/                            the tokenizer files, padded as the Stable Diffusion version expects

It takes a plain open_clip ``CLIP`` model and the backbone metadata (``model_name``, ``image_size``,
``mean``, ``std``, ``interpolation``, ``quick_gelu``). Models transformers' CLIP classes cannot
express (ResNet or timm towers, non-square inputs, custom or bidirectional text towers, ...) are
refused by :func:`check_hf_compatible` with the reasons, before anything is written.

Facts this rests on (transformers 5.24, open_clip 3.3, diffusers' SD converter):

* Weights are written with the hub's key names (``text_model.*``, ``vision_model.*``), which
  transformers 4.x and 5.x both load; the fused ``in_proj`` of open_clip splits into q, k, v rows.
* Text pooling: open_clip takes the token at ``argmax(ids)`` (the first end-of-text, 49407, the
  largest id); ``CLIPTextModel`` with ``eos_token_id=49407`` takes the first position equal to
  49407: the same token for every sequence the tokenizer makes.
* Text layers: SD 1.x conditions on OpenAI ViT-L/14's last layer after the final LayerNorm
  (``last_hidden_state`` of the full ``CLIPTextModel``). SD 2.x conditions on OpenCLIP ViT-H/14's
  penultimate block followed by ``ln_final``; diffusers expresses that as a ``CLIPTextModel`` with
  one layer fewer (its converter drops ``resblocks.23`` and the projection) whose
  ``final_layer_norm`` is ``ln_final``, so its ``last_hidden_state`` is ``ln_final(block L-1)``.
* Padding: open_clip pads with id 0 (``!``). SD 1.x's tokenizer pads with ``<|endoftext|>``, SD
  2.x's (OpenCLIP-trained) with ``!``; the ``tokenizer/`` folder follows the chosen version. A
  transformers tokenizer whose pad token is ``!`` treats every ``!`` in a prompt as that special
  token (id 0, where open_clip's BPE gives 256 or merges ``!!``), as SD 2.x's own tokenizer does;
  the ``CLIPModel`` folder's tokenizer therefore pads with ``<|endoftext|>``. Padding never changes
  text features (causal mask, pooled at the first end-of-text), only the states after it.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ftclip.errors import FtclipError

HF_DIR = "hf"
TEXT_ENCODER_DIR = "text_encoder"
TOKENIZER_DIR = "tokenizer"
TEXT_LAYERS = ("last", "penultimate")

MIN_COSINE = 0.999  # transformers vs open_clip, per row (feature vector or token state)
MAX_ABS_DIFF = 1e-4  # float32, scaled by the reference's magnitude when it exceeds 1
VERIFY_TIMEOUT_S = 900

BOS_ID, EOS_ID, BANG_ID = 49406, 49407, 0  # open_clip's start/end tokens; "!" is id 0, open_clip's padding
BOS, EOS, BANG = "<|startoftext|>", "<|endoftext|>", "!"
VOCAB_SIZE = 49408
PAD_BY_LAYER = {"last": EOS, "penultimate": BANG}  # what SD 1.x / SD 2.x tokenizers pad with
_RESAMPLE = {"bicubic": 3, "bilinear": 2}  # PIL codes CLIPImageProcessor stores

# The forgetting check's prompts: what Stable Diffusion users type (subjects, styles, scenes).
FORGETTING_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolor painting of a fox in a snowy forest",
    "a portrait of an old fisherman, dramatic lighting, 85mm",
    "a cozy living room with a fireplace and a sleeping cat",
    "an oil painting of a lighthouse during a storm",
    "a close-up photo of a red rose covered in dew",
    "a futuristic city skyline at night, neon lights, rain",
    "a bowl of ramen on a wooden table, food photography",
    "a pencil sketch of a dragon curled around a castle tower",
    "a golden retriever puppy playing in autumn leaves",
    "a minimalist poster of a mountain range at sunrise",
    "an isometric illustration of a tiny island with a cabin",
    "a vintage car parked on a cobblestone street in Paris",
    "a macro shot of a butterfly on a lavender flower",
    "a medieval knight in shining armor, digital art",
    "a snowy mountain village at dusk with warm windows",
    "a bustling market in Marrakech, vibrant colors",
    "a steaming cup of coffee next to an open book",
    "a surreal landscape with floating islands and waterfalls",
    "a black and white photo of a jazz musician playing saxophone",
)
# Prompts for the tokenizer and text checks: the above plus case, spacing, punctuation, accents,
# digits, contractions, emoji and one longer than the context (truncated).
VERIFY_PROMPTS = FORGETTING_PROMPTS[:6] + (
    "A PHOTO of   a Dog!!",
    "don't, can't; won't: (maybe) \"quoted\" -- fine?",
    "Café, naïve résumé & co.",
    "1234 numbers 5.6 and 7th",
    "an emoji \U0001F431 cat, #hashtag @user",
    "  leading\tand trailing\nwhitespace  ",
    " ".join(["a long prompt"] * 40),
)


# ---------------------------------------------------------------------------------------- checks
def _transformers():
    try:
        import transformers
    except ImportError:
        raise FtclipError("--format hf needs transformers: pip install 'ftclip[hf]'") from None
    return transformers


def _layer_norm(module: nn.Module, where: str, reasons: list[str]) -> float | None:
    if not isinstance(module, nn.LayerNorm) or module.weight is None or module.bias is None:
        reasons.append(f"{where} is {type(module).__name__}, not a LayerNorm with weight and bias")
        return None
    return float(module.eps)


def _activation(module: nn.Module) -> str | None:
    from open_clip.transformer import QuickGELU

    if isinstance(module, QuickGELU):
        return "quick_gelu"
    if type(module) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}.get(module.approximate)
    return None


def _check_tower(transformer: nn.Module, where: str, reasons: list[str]) -> dict[str, Any]:
    """Every block must be open_clip's plain pre-norm block (fused MHA with biases, LayerNorms, an MLP)."""
    from open_clip.transformer import ResidualAttentionBlock

    blocks = list(getattr(transformer, "resblocks", []))
    if not blocks:
        reasons.append(f"{where} has no transformer blocks")
        return {}
    if not getattr(transformer, "batch_first", True):
        reasons.append(f"{where} is not batch-first")
    problems: dict[str, list[int]] = {}  # one reason per kind of problem, with the blocks that have it
    acts, eps, heads, hidden = set(), set(), set(), set()
    for i, block in enumerate(blocks):
        if type(block) is not ResidualAttentionBlock:
            problems.setdefault(f"is {type(block).__name__} (qk-norm, scaled cosine or other custom attention); "
                                "transformers' CLIPEncoderLayer is the plain pre-norm block", []).append(i)
            continue
        attn = block.attn
        if (not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or attn.in_proj_bias is None
                or attn.bias_k is not None or attn.add_zero_attn):
            problems.setdefault("attention is not a fused nn.MultiheadAttention with q/k/v and output biases "
                                "(merge LoRA adapters before exporting)", []).append(i)
            continue
        if not isinstance(block.ls_1, nn.Identity) or not isinstance(block.ls_2, nn.Identity):
            problems.setdefault("uses layer scale (ls_init_value), which CLIPEncoderLayer has no place for", []).append(i)
        if hasattr(block, "ln_1_kv"):
            problems.setdefault("is a cross-attention block", []).append(i)
        norms = [_layer_norm(getattr(block, ln), ln, []) for ln in ("ln_1", "ln_2")]
        if None in norms:
            problems.setdefault("ln_1/ln_2 are not LayerNorms with weight and bias", []).append(i)
        act = _activation(getattr(block.mlp, "gelu", None))
        if act is None:
            problems.setdefault("the MLP activation is not QuickGELU or GELU", []).append(i)
        heads.add(attn.num_heads)
        eps.update(norms)
        acts.add(act)
        hidden.add(int(block.mlp.c_fc.out_features))
    for problem, where_blocks in problems.items():
        span = f"{where_blocks[0]}" + (f" (and {len(where_blocks) - 1} more)" if len(where_blocks) > 1 else "")
        reasons.append(f"{where} block {span}: {problem}")
    if problems:
        return {}
    if len(acts) > 1 or len(eps) > 1 or len(heads) > 1 or len(hidden) > 1:
        reasons.append(f"{where}: blocks differ in activation, LayerNorm eps, heads or MLP width "
                       "(one value each in a transformers config)")
        return {}
    return {"layers": len(blocks), "hidden_act": acts.pop(), "layer_norm_eps": eps.pop(),
            "num_attention_heads": heads.pop(), "intermediate_size": hidden.pop()}


def _check_vision(visual: nn.Module, meta: dict, reasons: list[str]) -> dict[str, Any]:
    from open_clip.transformer import VisionTransformer

    kind = type(visual).__name__
    if kind == "ModifiedResNet":
        reasons.append("the image tower is a ResNet (ModifiedResNet); transformers' CLIPVisionModel is a ViT")
        return {}
    if kind == "TimmModel":
        reasons.append("the image tower is a timm model (TimmModel); transformers' CLIPVisionModel is open_clip's plain ViT")
        return {}
    if not isinstance(visual, VisionTransformer):
        reasons.append(f"the image tower is {kind}, not open_clip's VisionTransformer")
        return {}
    (h, w), (ph, pw) = tuple(visual.image_size), tuple(visual.patch_size)
    if h != w or ph != pw or visual.grid_size[0] != visual.grid_size[1]:
        reasons.append(f"non-square input {h}x{w} (patch {ph}x{pw}, grid {visual.grid_size[0]}x{visual.grid_size[1]}): "
                       "CLIPVisionConfig has one image_size and one patch_size (square only); "
                       "the open_clip and ONNX exports carry it")
    if meta.get("image_size") and [int(s) for s in meta["image_size"]] != [h, w]:
        reasons.append(f"metadata image_size {list(meta['image_size'])} differs from the model's {[h, w]}")
    if visual.attn_pool is not None:
        reasons.append("the image tower uses attentional pooling (CoCa-style); CLIPVisionModel pools the class token")
    elif visual.pool_type != "tok":
        reasons.append(f"the image tower pools '{visual.pool_type}' (no class-token pooling); CLIPVisionModel "
                       "pools the class token")
    if isinstance(visual.ln_pre, nn.Identity):
        reasons.append("the image tower has no LayerNorm before its transformer (no_ln_pre); CLIPVisionModel has one")
    else:
        _layer_norm(visual.ln_pre, "ln_pre", reasons)
    _layer_norm(visual.ln_post, "ln_post", reasons)
    if visual.conv1.bias is not None:
        reasons.append("the patch embedding has a bias; CLIPVisionEmbeddings' has none")
    if visual.proj is None or not isinstance(visual.proj, nn.Parameter):
        reasons.append("the image tower has no projection matrix (visual.proj); CLIPModel needs visual_projection")
    tower = _check_tower(visual.transformer, "image tower", reasons)
    if not tower:
        return {}
    width = int(visual.class_embedding.shape[0])
    return {"hidden_size": width, "intermediate_size": tower["intermediate_size"],
            "num_hidden_layers": tower["layers"], "num_attention_heads": tower["num_attention_heads"],
            "num_channels": 3, "image_size": int(h), "patch_size": int(ph), "hidden_act": tower["hidden_act"],
            "layer_norm_eps": tower["layer_norm_eps"], "attention_dropout": 0.0,
            "projection_dim": int(visual.proj.shape[1]) if visual.proj is not None else 0}


def _check_tokenizer(meta: dict, context_length: int, reasons: list[str]) -> None:
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    try:
        tokenizer = open_clip.get_tokenizer(str(meta.get("model_name", "")), context_length=context_length)
    except Exception as exc:
        reasons.append(f"open_clip has no tokenizer for '{meta.get('model_name')}' ({type(exc).__name__})")
        return
    probe = ["A Photo, of the CAT's toy!!  (2 dogs)"]
    if (not isinstance(tokenizer, SimpleTokenizer) or tokenizer.reduction_fn is not None
            or not torch.equal(tokenizer(probe), SimpleTokenizer(context_length=context_length)(probe))):
        reasons.append(f"the tokenizer of {meta.get('model_name')} ({type(tokenizer).__name__}) is not open_clip's "
                       "standard CLIP BPE tokenizer (lower-cased, 49408 tokens), the one the export writes")


def _check_text(model: nn.Module, reasons: list[str]) -> dict[str, Any]:
    if model.attn_mask is None:
        reasons.append("the text tower is bidirectional (no causal mask); CLIPTextModel is causal")
    pool = getattr(model, "text_pool_type", "argmax")
    if not (pool == "argmax" or (pool == "eos" and getattr(model, "text_eos_id", None) == EOS_ID)):
        reasons.append(f"the text tower pools '{pool}'; CLIPTextModel pools the first end-of-text token "
                       "(open_clip 'argmax')")
    vocab = int(model.token_embedding.num_embeddings)
    if vocab != VOCAB_SIZE:
        reasons.append(f"the text tower has {vocab} token embeddings, not CLIP's BPE vocabulary of {VOCAB_SIZE}")
    proj = model.text_projection
    if proj is None:
        reasons.append("the text tower has no projection (text_projection); CLIPModel needs one")
    elif isinstance(proj, nn.Linear) and proj.bias is not None:
        reasons.append("the text projection has a bias; CLIPModel's text_projection has none")
    if getattr(model, "logit_bias", None) is not None:
        reasons.append("the model has a logit bias (sigmoid loss); CLIPModel's logits have none")
    _layer_norm(model.ln_final, "ln_final", reasons)
    tower = _check_tower(model.transformer, "text tower", reasons)
    if not tower or proj is None:
        return {}
    width = int(model.token_embedding.embedding_dim)
    proj_dim = int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])
    return {"vocab_size": vocab, "hidden_size": width, "intermediate_size": tower["intermediate_size"],
            "projection_dim": proj_dim, "num_hidden_layers": tower["layers"],
            "num_attention_heads": tower["num_attention_heads"],
            "max_position_embeddings": int(model.positional_embedding.shape[0]), "hidden_act": tower["hidden_act"],
            "layer_norm_eps": tower["layer_norm_eps"], "attention_dropout": 0.0,
            "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}


def check_hf_compatible(model: nn.Module, meta: dict) -> dict[str, dict[str, Any]]:
    """Raise :class:`FtclipError` naming every reason ``model`` cannot be a transformers ``CLIPModel``.

    Returns the architecture read from the modules (``{"text": ..., "vision": ...}``, the fields of
    ``CLIPTextConfig`` / ``CLIPVisionConfig``) when it can.
    """
    import open_clip

    name = meta.get("model_name", type(model).__name__)
    reasons: list[str] = []
    vision = _check_vision(model.visual, meta, reasons) if hasattr(model, "visual") else {}
    if type(model) is not open_clip.CLIP:
        text_tower = getattr(model, "text", None)
        kind = type(text_tower).__name__
        why = ("a Hugging Face text model (HFTextEncoder)" if kind == "HFTextEncoder"
               else "bidirectional (no causal mask)" if getattr(text_tower, "attn_mask", 0) is None
               else f"a {kind} kept under model.text")
        reasons.append(f"{type(model).__name__}: its text tower is {why}; this export converts open_clip.CLIP's "
                       "standard causal text transformer, the one CLIPTextModel expresses")
        text = {}
    else:
        text = _check_text(model, reasons)
        if text:
            _check_tokenizer(meta, text["max_position_embeddings"], reasons)
    if vision and text and meta.get("quick_gelu") is not None:
        gelu = "quick_gelu" if meta["quick_gelu"] else "gelu"
        if {vision["hidden_act"], text["hidden_act"]} != {gelu}:
            reasons.append(f"metadata quick_gelu={meta['quick_gelu']} but the towers use "
                           f"{vision['hidden_act']} / {text['hidden_act']}")
    if any(len(meta.get(key) or ()) != 3 for key in ("mean", "std")):
        reasons.append(f"the metadata needs the run's mean and std (3 values each), got {meta.get('mean')} / "
                       f"{meta.get('std')}")
    interpolation = meta.get("interpolation", "bicubic")
    if interpolation not in _RESAMPLE:
        reasons.append(f"interpolation '{interpolation}' has no CLIPImageProcessor equivalent (bicubic, bilinear)")
    if reasons:
        listed = "; ".join(f"({i}) {r}" for i, r in enumerate(reasons, 1)) if len(reasons) > 1 else reasons[0]
        raise FtclipError(f"--format hf: {name} cannot be written as a transformers CLIPModel: {listed}")
    return {"text": text, "vision": vision}


# ---------------------------------------------------------------------------------------- conversion
def _split_block(prefix: str, block: nn.Module) -> dict[str, torch.Tensor]:
    """One open_clip residual block -> CLIPEncoderLayer keys (fused in_proj rows are q, k, v)."""
    q, k, v = block.attn.in_proj_weight.chunk(3, dim=0)
    qb, kb, vb = block.attn.in_proj_bias.chunk(3, dim=0)
    return {
        f"{prefix}.self_attn.q_proj.weight": q, f"{prefix}.self_attn.q_proj.bias": qb,
        f"{prefix}.self_attn.k_proj.weight": k, f"{prefix}.self_attn.k_proj.bias": kb,
        f"{prefix}.self_attn.v_proj.weight": v, f"{prefix}.self_attn.v_proj.bias": vb,
        f"{prefix}.self_attn.out_proj.weight": block.attn.out_proj.weight,
        f"{prefix}.self_attn.out_proj.bias": block.attn.out_proj.bias,
        f"{prefix}.layer_norm1.weight": block.ln_1.weight, f"{prefix}.layer_norm1.bias": block.ln_1.bias,
        f"{prefix}.layer_norm2.weight": block.ln_2.weight, f"{prefix}.layer_norm2.bias": block.ln_2.bias,
        f"{prefix}.mlp.fc1.weight": block.mlp.c_fc.weight, f"{prefix}.mlp.fc1.bias": block.mlp.c_fc.bias,
        f"{prefix}.mlp.fc2.weight": block.mlp.c_proj.weight, f"{prefix}.mlp.fc2.bias": block.mlp.c_proj.bias,
    }


def text_state_dict(model: nn.Module, layers: int | None = None) -> dict[str, torch.Tensor]:
    """The text tower as ``CLIPTextModel`` weights (hub key names ``text_model.*``), its first ``layers`` blocks."""
    blocks = list(model.transformer.resblocks)[:layers]
    state = {"text_model.embeddings.token_embedding.weight": model.token_embedding.weight,
             "text_model.embeddings.position_embedding.weight": model.positional_embedding,
             "text_model.final_layer_norm.weight": model.ln_final.weight,
             "text_model.final_layer_norm.bias": model.ln_final.bias}
    for i, block in enumerate(blocks):
        state.update(_split_block(f"text_model.encoder.layers.{i}", block))
    return state


def clip_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model as ``CLIPModel`` weights (hub key names), float32, contiguous copies."""
    visual = model.visual
    proj = model.text_projection
    state = text_state_dict(model)
    state.update({
        "text_projection.weight": proj.weight if isinstance(proj, nn.Linear) else proj.t(),
        "vision_model.embeddings.class_embedding": visual.class_embedding,
        "vision_model.embeddings.patch_embedding.weight": visual.conv1.weight,
        "vision_model.embeddings.position_embedding.weight": visual.positional_embedding,
        "vision_model.pre_layrnorm.weight": visual.ln_pre.weight, "vision_model.pre_layrnorm.bias": visual.ln_pre.bias,
        "vision_model.post_layernorm.weight": visual.ln_post.weight,
        "vision_model.post_layernorm.bias": visual.ln_post.bias,
        "visual_projection.weight": visual.proj.t(),
        "logit_scale": model.logit_scale.reshape(()),
    })
    for i, block in enumerate(visual.transformer.resblocks):
        state.update(_split_block(f"vision_model.encoder.layers.{i}", block))
    return _plain(state)


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in state.items()}


def hf_configs(arch: dict[str, dict[str, Any]], logit_scale: float, text_layer: str = "last") -> tuple[Any, Any]:
    """The explicit ``CLIPConfig`` (CLIPModel folder) and ``CLIPTextConfig`` (diffusers ``text_encoder/``) for the
    architecture :func:`check_hf_compatible` returned."""
    transformers = _transformers()
    text = dict(arch["text"], pad_token_id=EOS_ID)
    config = transformers.CLIPConfig(text_config=text, vision_config=arch["vision"],
                                     projection_dim=arch["text"]["projection_dim"], logit_scale_init_value=logit_scale)
    config.architectures = ["CLIPModel"]
    layers = text["num_hidden_layers"] - (1 if text_layer == "penultimate" else 0)
    encoder = transformers.CLIPTextConfig(**dict(text, num_hidden_layers=layers,
                                                 pad_token_id=_pad_id(PAD_BY_LAYER[text_layer])))
    encoder.architectures = ["CLIPTextModel"]
    for cfg in (config, encoder):
        cfg.dtype = "float32"
    return config, encoder


def text_token_states(model: nn.Module, tokens: torch.Tensor, text_layer: str = "last") -> torch.Tensor:
    """open_clip's per-token text states ``[B, L, width]``: after all blocks (``last``) or all but the
    last (``penultimate``, as SD 2.x), then ``ln_final``."""
    blocks = list(model.transformer.resblocks)
    if text_layer == "penultimate":
        blocks = blocks[:-1]
    length = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
    for block in blocks:
        x = block(x, attn_mask=mask)
    return model.ln_final(x)


# ---------------------------------------------------------------------------------------- tokenizer
def bpe_vocabulary() -> tuple[list[str], list[str]]:
    """open_clip's own BPE vocabulary (its ``bpe_simple_vocab_16e6.txt.gz``) as HF vocab order and merges."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # the slice open_clip's SimpleTokenizer uses
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    if len(vocab) != VOCAB_SIZE or len(set(vocab)) != VOCAB_SIZE:
        raise FtclipError(f"open_clip's BPE file {default_bpe()} gives {len(vocab)} tokens, not {VOCAB_SIZE}")
    return vocab, merges


def build_tokenizer(pad_token: str, context_length: int = 77):
    """A transformers ``CLIPTokenizer`` over open_clip's BPE vocabulary, padding with ``pad_token``."""
    transformers = _transformers()
    vocab, merges = bpe_vocabulary()
    return transformers.CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)},
                                      merges=[tuple(m.split()) for m in merges], bos_token=BOS, eos_token=EOS,
                                      unk_token=EOS, pad_token=pad_token, model_max_length=context_length)


def write_tokenizer(folder: Path, pad_token: str, context_length: int) -> None:
    """vocab.json, merges.txt (for slow tokenizers and transformers 4.x), tokenizer.json, tokenizer_config.json,
    special_tokens_map.json."""
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(pad_token, context_length).save_pretrained(str(folder))
    vocab, merges = bpe_vocabulary()
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def open_clip_ids(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """open_clip token ids with every position after the first end-of-text set to ``pad_id``."""
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    after = positions > (tokens == EOS_ID).int().argmax(dim=1, keepdim=True)
    return tokens.masked_fill(after, pad_id)


def _pad_id(pad_token: str) -> int:
    return BANG_ID if pad_token == BANG else EOS_ID


def image_processor(meta: dict, size: int):
    """``CLIPImageProcessor`` doing ftclip's evaluation preprocessing: resize the whole image to size x size
    (no shortest-edge resize, no crop), scale to [0, 1], normalise with the run's mean/std."""
    return _transformers().CLIPImageProcessor(
        do_resize=True, size={"height": size, "width": size}, resample=_RESAMPLE[meta.get("interpolation", "bicubic")],
        do_center_crop=False, crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[float(x) for x in meta["mean"]], image_std=[float(x) for x in meta["std"]],
        do_convert_rgb=True)


# ---------------------------------------------------------------------------------------- forgetting
def forgetting_check(model: nn.Module, reference: nn.Module, text_layer: str = "last",
                     prompts: tuple[str, ...] = FORGETTING_PROMPTS) -> dict[str, Any]:
    """How far the text tower's per-token states (the ones Stable Diffusion conditions on, for
    ``text_layer``) moved from ``reference``'s (the pretrained weights) on ``prompts``.

    Cosine similarity per token position; positions after the end-of-text token are padded as the
    chosen SD version's tokenizer pads. Returns the figures and a markdown paragraph for the model card.
    """
    from open_clip.tokenizer import SimpleTokenizer

    ours, theirs = text_state_dict(model), text_state_dict(reference)
    mismatched = [k for k in ours.keys() | theirs.keys() if k not in ours or k not in theirs
                  or ours[k].shape != theirs[k].shape]
    if mismatched:
        raise FtclipError(f"the forgetting check's reference text tower does not match the exported one "
                          f"({mismatched[0]}, ...); give the pretrained weights of the same architecture")
    length = int(model.positional_embedding.shape[0])
    tokens = open_clip_ids(SimpleTokenizer(context_length=length)(list(prompts)), _pad_id(PAD_BY_LAYER[text_layer]))
    with torch.no_grad():
        device = model.token_embedding.weight.device
        got = text_token_states(model, tokens.to(device), text_layer).float().cpu()
        device = reference.token_embedding.weight.device
        want = text_token_states(reference, tokens.to(device), text_layer).float().cpu()
    cosine = F.cosine_similarity(got, want, dim=-1)  # [P, L]
    eot = (tokens == EOS_ID).int().argmax(dim=1)
    own = torch.arange(length).expand_as(tokens) <= eot[:, None]  # start token .. end-of-text
    per_prompt = torch.stack([cosine[i][own[i]].mean() for i in range(len(prompts))])
    figures = {
        "text_layer": text_layer,
        "prompts": len(prompts),
        "pad_token": PAD_BY_LAYER[text_layer],
        "mean_cosine_all_positions": float(cosine.mean()),
        "mean_cosine_prompt_tokens": float(cosine[own].mean()),
        "min_prompt_mean_cosine": float(per_prompt.min()),
        "end_of_text_mean_cosine": float(cosine[torch.arange(len(prompts)), eot].mean()),
    }
    figures["markdown"] = forgetting_markdown(figures)
    return figures


def _layer_words(text_layer: str) -> str:
    return ("the last layer after the final LayerNorm (SD 1.x)" if text_layer == "last"
            else "the penultimate block followed by the final LayerNorm (SD 2.x)")


def forgetting_markdown(figures: dict[str, Any] | None, reason: str = "") -> str:
    """The model card's paragraph on text-tower drift; ``figures`` None says why it was not measured."""
    head = "### Text tower drift (for Stable Diffusion users)\n\n"
    why = ("Contrastive fine-tuning supervises only the end-of-text token's feature, but Stable Diffusion "
           "conditions on every token's state.")
    if figures is None:
        return f"{head}{why} Not measured for this export: {reason}.\n"
    return (f"{head}{why} On {figures['prompts']} fixed prompts (listed in ftclip's `FORGETTING_PROMPTS`), "
            f"the exported text tower's per-token states from {_layer_words(figures['text_layer'])} have a mean "
            f"cosine similarity of **{figures['mean_cosine_all_positions']:.4f}** to the pretrained weights' over "
            f"all positions (padded with `{figures['pad_token']}`), {figures['mean_cosine_prompt_tokens']:.4f} over "
            f"the prompts' own tokens (lowest prompt {figures['min_prompt_mean_cosine']:.4f}), and "
            f"{figures['end_of_text_mean_cosine']:.4f} at the end-of-text token. 1.0000 means the states did not "
            "move; the further below, the more a diffusion model trained on the pretrained encoder sees "
            "conditioning it was not trained on.\n")


# ---------------------------------------------------------------------------------------- verification
_VERIFY_SCRIPT = r'''
import importlib.abc, json, sys
class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ftclip":
            raise ImportError("the transformers check must not import ftclip")
sys.meta_path.insert(0, _Refuse())
from pathlib import Path
import numpy as np
import torch, transformers
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor, CLIPTextModel, CLIPTokenizer

hf, work = Path(sys.argv[1]), Path(sys.argv[2])
spec = json.loads((work / "spec.json").read_text())
t = load_file(str(work / "expected.safetensors"))

def compare(got, want):
    got, want = got.float().reshape(-1, want.shape[-1]), want.float().reshape(-1, want.shape[-1])
    if got.shape != want.shape:
        return {"shape": list(got.shape), "expected_shape": list(want.shape)}
    return {"max_abs_diff": float((got - want).abs().max()), "magnitude": float(want.abs().max()),
            "min_cosine": float(torch.nn.functional.cosine_similarity(got, want, dim=-1).min())}

def pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output

def loading(info):
    return {k: sorted(str(x) for x in v) for k, v in info.items() if v}

def token_rows(tokenizer, prompts, want):
    ids = tokenizer(prompts, padding="max_length", max_length=want.shape[1], truncation=True,
                    return_tensors="pt")["input_ids"]
    return [prompts[i] for i in range(len(prompts)) if not torch.equal(ids[i], want[i])]

report = {"transformers": transformers.__version__, "torch": torch.__version__}
with torch.no_grad():
    model, info = CLIPModel.from_pretrained(str(hf), output_loading_info=True)
    model.eval()
    report["loading"] = {"CLIPModel": loading(info)}
    report["image_features"] = compare(pooled(model.get_image_features(pixel_values=t["images"])), t["image_features"])
    report["text_features"] = compare(pooled(model.get_text_features(input_ids=t["tokens"])), t["text_features"])
    report["last_hidden_state"] = compare(model.text_model(input_ids=t["tokens"]).last_hidden_state, t["states_last"])
    report["logit_scale_abs_diff"] = float((model.logit_scale.detach() - t["logit_scale"]).abs())
    encoder, info = CLIPTextModel.from_pretrained(str(hf / "text_encoder"), output_loading_info=True)
    encoder.eval()
    report["loading"]["text_encoder"] = loading(info)
    report["text_encoder_last_hidden_state"] = compare(encoder(input_ids=t["tokens"]).last_hidden_state,
                                                       t["states_layer"])
processor = CLIPProcessor.from_pretrained(str(hf))
report["tokenizer_mismatches"] = token_rows(processor.tokenizer, spec["prompts"], t["ids_hf"])
sd = CLIPTokenizer.from_pretrained(str(hf / "tokenizer"))
report["diffusers_tokenizer_mismatches"] = token_rows(sd, spec["sd_prompts"], t["ids_sd"])
pixels = processor.image_processor(images=[t["raw_image"].numpy()], return_tensors="pt")["pixel_values"]
report["image_processor"] = compare(pixels[0], t["raw_pixels"])
other = processor.image_processor(images=[t["raw_other"].numpy()], return_tensors="pt")["pixel_values"]
report["image_processor_output_size"] = list(other.shape[-2:])
report["image_size"] = spec["image_size"]
report["ftclip_imported"] = any(name.split(".")[0] == "ftclip" for name in sys.modules)
print("HF_VERIFY " + json.dumps(report))
'''


def _expected(model: nn.Module, meta: dict, text_layer: str, context_length: int) -> tuple[dict, dict]:
    """Fixed inputs and open_clip's outputs on them (float32, CPU), and the spec the script reads."""
    from open_clip.tokenizer import SimpleTokenizer

    size = int(model.visual.image_size[0])
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, size, size, generator=gen)
    tokenizer = SimpleTokenizer(context_length=context_length)
    tokens = tokenizer(list(VERIFY_PROMPTS))
    # SD 2.x's tokenizer turns every "!" into its pad token (see the module docstring): compare it without them
    sd_prompts = [p for p in VERIFY_PROMPTS if BANG not in p] if PAD_BY_LAYER[text_layer] == BANG else list(VERIFY_PROMPTS)
    sd_tokens = tokenizer(sd_prompts)
    raw = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8)
    mean, std = torch.tensor(meta["mean"]).view(3, 1, 1), torch.tensor(meta["std"]).view(3, 1, 1)
    device = model.visual.conv1.weight.device
    with torch.no_grad():
        expected = {
            "images": images, "tokens": tokens,
            "image_features": model.encode_image(images.to(device)),
            "text_features": model.encode_text(tokens.to(device)),
            "states_last": text_token_states(model, tokens.to(device), "last"),
            "states_layer": text_token_states(model, tokens.to(device), text_layer),
            "logit_scale": model.logit_scale.detach().reshape(()),
            "ids_hf": open_clip_ids(tokens, EOS_ID),
            "ids_sd": open_clip_ids(sd_tokens, _pad_id(PAD_BY_LAYER[text_layer])),
            "raw_image": raw, "raw_pixels": (raw.permute(2, 0, 1).float() / 255 - mean) / std,
            "raw_other": torch.randint(0, 256, (size + 37, size // 2 + 5, 3), generator=gen, dtype=torch.uint8),
        }
    expected = {k: (v.detach().cpu().contiguous() if v.dtype in (torch.long, torch.uint8) else
                    v.detach().to("cpu", torch.float32).contiguous()) for k, v in expected.items()}
    return expected, {"prompts": list(VERIFY_PROMPTS), "sd_prompts": sd_prompts, "image_size": [size, size]}


def _run_verification(hf_dir: Path, expected: dict, spec: dict, timeout: float) -> dict:
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="ftclip-hf-verify-") as work:
        save_file(expected, os.path.join(work, "expected.safetensors"))
        Path(work, "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
                   TOKENIZERS_PARALLELISM="false")
        try:
            done = subprocess.run([sys.executable, "-c", _VERIFY_SCRIPT, str(hf_dir), work], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise FtclipError(f"--format hf: the transformers check did not finish in {timeout:.0f} s; "
                              "nothing was written") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("HF_VERIFY ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise FtclipError(f"--format hf: loading the export in transformers failed in a fresh process "
                          f"(exit {done.returncode}): {' | '.join(tail)}; nothing was written")
    return json.loads(lines[-1][len("HF_VERIFY "):])


def verification_failures(report: dict) -> list[str]:
    """What in the fresh-process report breaks the export's promises (empty when it passed)."""
    bad = []
    for part, missing in report.get("loading", {}).items():
        if missing:
            bad.append(f"{part} loaded with {', '.join(f'{k} {v[:3]}' for k, v in missing.items())}")
    for name in ("image_features", "text_features", "last_hidden_state", "text_encoder_last_hidden_state",
                 "image_processor"):
        fig = report.get(name, {})
        if "max_abs_diff" not in fig:
            bad.append(f"{name}: shape {fig.get('shape')} vs {fig.get('expected_shape')}")
            continue
        tol = MAX_ABS_DIFF * max(1.0, fig["magnitude"])
        if not (fig["max_abs_diff"] < tol and fig["min_cosine"] >= MIN_COSINE):
            bad.append(f"{name}: max abs diff {fig['max_abs_diff']:.3g} (tolerance {tol:.3g}), "
                       f"min cosine {fig['min_cosine']:.6f} (needs >= {MIN_COSINE})")
    if not report.get("logit_scale_abs_diff", 1.0) < MAX_ABS_DIFF:
        bad.append(f"logit_scale differs by {report.get('logit_scale_abs_diff')}")
    for name in ("tokenizer_mismatches", "diffusers_tokenizer_mismatches"):
        if report.get(name):
            bad.append(f"{name.replace('_mismatches', '')} differs from open_clip on {report[name][:2]}")
    if report.get("image_processor_output_size") != report.get("image_size"):
        bad.append(f"the image processor makes {report.get('image_processor_output_size')} from a non-square image, "
                   f"not {report.get('image_size')}")
    if report.get("ftclip_imported", True):
        bad.append("the check imported ftclip")
    return bad


# ---------------------------------------------------------------------------------------- export
def _finish_files(folder: Path) -> None:
    """fsync every file and give files/folders the modes open() and mkdir() would (mkdtemp makes 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def export_hf(model: nn.Module, meta: dict, out: str | Path, text_layer: str = "last",
              reference: nn.Module | None = None, no_reference_reason: str = "no pretrained reference weights were given",
              timeout: float = VERIFY_TIMEOUT_S) -> dict[str, Any]:
    """Write ``<out>/hf/`` (CLIPModel folder + diffusers ``text_encoder/`` and ``tokenizer/``) from the open_clip
    ``model`` (float32, LoRA merged), verify it in a fresh transformers process, then rename it into place.
    ``out`` is the export being assembled (``export_run``'s temporary folder), so ``<out>/hf`` must not exist yet.

    ``reference`` (the pretrained weights of the same architecture) enables the forgetting check; without it
    the model card says ``no_reference_reason``.
    Returns what the export manifest records: files, configuration summary, verification figures,
    forgetting figures and the model-card section (``model_card``).
    """
    if text_layer not in TEXT_LAYERS:
        raise FtclipError(f"--text-layer '{text_layer}' is not one of {', '.join(TEXT_LAYERS)}")
    _transformers()
    arch = check_hf_compatible(model, meta)
    if text_layer == "penultimate" and arch["text"]["num_hidden_layers"] < 2:
        raise FtclipError("--text-layer penultimate needs a text tower of at least 2 layers")
    wrong = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if wrong:
        raise FtclipError(f"--format hf exports float32 weights; the model holds {', '.join(wrong)} (call model.float())")
    out = Path(out)
    final = out / HF_DIR
    if final.exists():
        raise FtclipError(f"{final} already exists; export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    context_length = arch["text"]["max_position_embeddings"]
    was_training = model.training
    model.eval()
    try:
        expected, spec = _expected(model, meta, text_layer, context_length)
        forgetting = forgetting_check(model, reference.eval(), text_layer) if reference is not None else None
        clip_config, encoder_config = hf_configs(arch, float(model.logit_scale.detach().reshape(())), text_layer)
        state = clip_state_dict(model)
    finally:
        model.train(was_training)

    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(prefix=f".{HF_DIR}.tmp-", dir=out))
    try:
        clip_config.save_pretrained(str(tmp))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del state  # a float32 copy of the whole model: not kept while transformers loads it
        write_tokenizer(tmp, EOS, context_length)
        image_processor(meta, arch["vision"]["image_size"]).save_pretrained(str(tmp))
        encoder_dir = tmp / TEXT_ENCODER_DIR
        encoder_dir.mkdir()
        encoder_config.save_pretrained(str(encoder_dir))
        layers = encoder_config.num_hidden_layers
        save_file(_plain(text_state_dict(model, layers)), str(encoder_dir / "model.safetensors"),
                  metadata={"format": "pt"})
        write_tokenizer(tmp / TOKENIZER_DIR, PAD_BY_LAYER[text_layer], context_length)

        verification = _run_verification(tmp, expected, spec, timeout)
        failures = verification_failures(verification)
        if failures:
            raise FtclipError(f"--format hf: the transformers export does not reproduce open_clip ({'; '.join(failures)}); "
                              "nothing was written")
        _finish_files(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    report = {
        "folder": HF_DIR,
        "text_layer": text_layer,
        "text_encoder_layers": layers,
        "hidden_act": {"text": arch["text"]["hidden_act"], "vision": arch["vision"]["hidden_act"]},
        "image_size": arch["vision"]["image_size"],
        "patch_size": arch["vision"]["patch_size"],
        "text_width": arch["text"]["hidden_size"],
        "pad_token": {"CLIPModel": EOS, TOKENIZER_DIR: PAD_BY_LAYER[text_layer]},
        "files": sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file()),
        "verification": dict(verification, min_cosine_required=MIN_COSINE, max_abs_diff_allowed=MAX_ABS_DIFF),
        "forgetting": ({k: v for k, v in forgetting.items() if k != "markdown"} if forgetting is not None
                       else {"measured": False, "reason": no_reference_reason}),
    }
    report["model_card"] = model_card_section(report, forgetting["markdown"] if forgetting is not None else
                                              forgetting_markdown(None, report["forgetting"]["reason"]))
    return report


def model_card_section(report: dict, forgetting_md: str) -> str:
    """The model card's Hugging Face section: loading, what the text layer means, figures, drift."""
    v = report["verification"]
    layer = report["text_layer"]
    sd = "stable-diffusion-v1-5/stable-diffusion-v1-5" if layer == "last" else "stabilityai/stable-diffusion-2-1"
    meaning = ("the last layer after the final LayerNorm, as SD 1.x uses it" if layer == "last" else
               f"the penultimate block of the tower followed by its final LayerNorm, as SD 2.x uses it "
               f"(`text_encoder/` keeps {report['text_encoder_layers']} of the tower's layers; its `pooler_output` is "
               "not the CLIP text feature: use the `hf/` CLIPModel for that)")
    size = report["image_size"]
    return f"""## Load it with transformers / diffusers

`hf/` is a transformers `CLIPModel` folder (weights, config, tokenizer, image processor):

```python
from transformers import CLIPModel, CLIPProcessor
model = CLIPModel.from_pretrained("/path/to/this/folder/hf")
processor = CLIPProcessor.from_pretrained("/path/to/this/folder/hf")
inputs = processor(text=["a photo of a cat"], images=[image], return_tensors="pt", padding=True)
image_features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output  # 4.x: no .pooler_output
```

`hf/text_encoder/` + `hf/tokenizer/` follow the diffusers layout. Its `last_hidden_state` is {meaning}.
It fits a Stable Diffusion UNet only if the text width ({report['text_width']}) is the UNet's cross-attention
width (768 for SD 1.x, 1024 for SD 2.x):

```python
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextModel, CLIPTokenizer
pipe = StableDiffusionPipeline.from_pretrained("{sd}",
    text_encoder=CLIPTextModel.from_pretrained("/path/to/this/folder/hf/text_encoder"),
    tokenizer=CLIPTokenizer.from_pretrained("/path/to/this/folder/hf/tokenizer"))
```

The image processor resizes to {size}x{size} without cropping and normalises as ftclip evaluates;
it resizes with torchvision (antialiased) where ftclip uses OpenCV, so features from raw images can
differ slightly. The tokenizer matches open_clip's up to the end-of-text token; it pads with
`{report['pad_token']['CLIPModel']}` (`tokenizer/`: `{report['pad_token'][TOKENIZER_DIR]}`).

Verified at export, in a fresh process with transformers {v['transformers']}, against open_clip:
image features max abs diff {v['image_features']['max_abs_diff']:.3g} (min cosine {v['image_features']['min_cosine']:.6f}),
text features {v['text_features']['max_abs_diff']:.3g} ({v['text_features']['min_cosine']:.6f}), per-token text states
{v['last_hidden_state']['max_abs_diff']:.3g}, `text_encoder/` states {v['text_encoder_last_hidden_state']['max_abs_diff']:.3g}.

{forgetting_md}"""
