"""The one place that builds a CLIP backbone: open_clip model + tokenizer + preprocessing.

``Backbone`` wraps an ``open_clip`` CLIP model (kept as ``self.model`` so its state dict
is open_clip's own format, which is what export writes) and adds what fine-tuning needs:

* non-square inputs (e.g. 256x128) with the pretrained positional grid resized bilinearly,
* the text tower run on injected token embeddings (prompt learning),
* named parameter groups (``image``, ``text``, ``logit_scale``) for freezing per stage.

Weights come from an open_clip pretrained tag (from its local cache; there is no network at
run time) or a local file: an open_clip state dict (``.pt``/``.pth``/``.bin``), a
``.safetensors`` file, or an OpenAI TorchScript ``.pt``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from ftclip.config import INTERPOLATIONS, check_interpolation
from ftclip.errors import ConfigError, FtclipError

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)  # ftclip-tiny-vit, ftclip-tiny-rn (tests and demos)

_OPENAI_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class Preprocess:
    """What an image must look like on the way in; recorded with every checkpoint and export."""

    image_size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # PIL resize kernel of evaluation / inference / the export (squash to image_size)
    train_interpolation: str = "bicubic"  # PIL resize kernel of the training transforms
    interpolation_source: str = "default"  # where ``interpolation`` came from (see resolve_interpolation)

    def describe(self) -> str:
        h, w = self.image_size
        train = "" if self.train_interpolation == self.interpolation else f", training {self.train_interpolation}"
        return (f"input {h}x{w}: PIL {self.interpolation} resize ({self.interpolation_source}){train}; "
                f"mean {list(self.mean)}, std {list(self.std)}")


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Any supported weight file -> a flat state dict in open_clip naming."""
    if not path.is_file():
        raise FtclipError(f"model.pretrained: file {path} does not exist")
    if path.stat().st_size == 0:
        raise FtclipError(f"model.pretrained: file {path} is empty (0 bytes); re-download or re-export it")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # an OpenAI TorchScript archive is not a plain pickle
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except Exception as exc:
        raise FtclipError(
            f"model.pretrained: cannot read weights from {path} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "expected an open_clip state dict, a .safetensors file or an OpenAI TorchScript .pt"
        ) from None
    if isinstance(state, torch.jit.ScriptModule):
        state = state.state_dict()
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise FtclipError(f"model.pretrained: {path} holds no state dict")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    for key in _OPENAI_JIT_EXTRA_KEYS:
        state.pop(key, None)
    return dict(state)


def resize_grid_embedding(pos: torch.Tensor, new_grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """Resize a ViT positional embedding ``[prefix + h*w, C]`` to ``new_grid`` bilinearly.

    The old grid is taken to be square (as every released CLIP checkpoint is) unless its
    token count equals ``new_grid``'s. Prefix (class) positions are kept unchanged.
    """
    prefix, grid = pos[:num_prefix], pos[num_prefix:]
    if grid.shape[0] == new_grid[0] * new_grid[1]:
        return pos
    side = int(round(math.sqrt(grid.shape[0])))
    if side * side != grid.shape[0]:
        raise FtclipError(
            f"cannot resize a positional embedding of {grid.shape[0]} grid tokens (not a square grid) to {new_grid}"
        )
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([prefix, grid], dim=0)


def _known_model(name: str) -> None:
    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower().split("-")[0] in m.lower()][:8]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise ConfigError(
            f"model.name '{name}' is not an open_clip model.{hint} `python -c \"import open_clip; "
            f"print(open_clip.list_models())\"` lists them all."
        )


def _cached_tag_file(cfg: dict, cache_dir: str | None) -> Path | None:
    """The weight file of a pretrained tag if open_clip's caches already hold it (no network)."""
    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url", "")
    if url:
        candidate = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if candidate.is_file():
            return candidate
    return None


def _tag_weights(name: str, tag: str, cache_dir: str | None, download: bool) -> tuple[Path, dict]:
    """Resolve an open_clip pretrained tag to a local file; the network only if ``download``."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ConfigError(
            f"model.pretrained '{tag}' is neither a file nor a pretrained tag of {name}"
            + (f" (its tags: {', '.join(tags)})" if tags else " (it has no pretrained tags)")
        )
    path = _cached_tag_file(cfg, cache_dir)
    if path is None and download:
        try:
            path = Path(open_clip.download_pretrained(cfg, cache_dir=cache_dir))
        except Exception as exc:
            raise FtclipError(f"downloading {name} pretrained='{tag}' failed: {exc}") from None
    if path is None or not path.is_file():
        source = cfg.get("hf_hub") or cfg.get("url") or "its open_clip source"
        raise FtclipError(
            f"weights for {name} pretrained='{tag}' are not in the local cache ({cache_dir or 'default cache'}). "
            f"Either fetch them where there is a network (`python -c \"import open_clip; open_clip.create_model('{name}', "
            f"pretrained='{tag}')\"` downloads {source}) and copy the cache here, or pass the file: "
            "model.pretrained=/path/to/open_clip_pytorch_model.bin (or add model.download=true on a machine with a network)"
        )
    return path, cfg


class Backbone(nn.Module):
    """An open_clip CLIP model with the hooks fine-tuning needs."""

    def __init__(self, model: nn.Module, tokenizer, name: str, preprocess: Preprocess, quick_gelu: bool):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.preprocess = preprocess
        self.quick_gelu = quick_gelu
        self.compiled = False  # set by StagedModule.compile_towers

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg) -> "Backbone":
        """Build from a ``ModelConfig`` (see ftclip/config.py)."""
        name = str(cfg.name)
        weights, tag_cfg = check_model_config(cfg)
        height, width = (int(s) for s in cfg.image_size)
        model_cfg = open_clip.get_model_config(name) or {}
        quick_gelu = cfg.quick_gelu
        if quick_gelu is None:
            quick_gelu = bool(tag_cfg.get("quick_gelu", model_cfg.get("quick_gelu", False)))
        image_size = (height, width) if height != width else height
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)  # open_clip warns "no pretrained weights": we load them below
            try:
                model = open_clip.create_model(
                    name, pretrained=None, force_image_size=image_size, force_quick_gelu=bool(quick_gelu)
                )
            finally:
                logging.disable(logging.NOTSET)
        if weights is not None:
            load_weights(model, weights)
        mean = tuple(cfg.mean) if cfg.mean else tuple(tag_cfg.get("mean", OPENAI_DATASET_MEAN))
        std = tuple(cfg.std) if cfg.std else tuple(tag_cfg.get("std", OPENAI_DATASET_STD))
        interpolation, source = resolve_interpolation(cfg, tag_cfg)
        train_interpolation = check_interpolation(str(cfg.train_interpolation or interpolation),
                                                  "model.train_interpolation")
        preprocess = Preprocess((height, width), mean, std, interpolation, train_interpolation, source)
        tokenizer = open_clip.get_tokenizer(name)
        backbone = cls(model, tokenizer, name, preprocess, bool(quick_gelu))
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return backbone

    # ------------------------------------------------------------------ groups
    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """``image`` (the vision tower), ``text`` (the text tower) and ``logit_scale``.

        LoRA parameters (``lora_`` in the name) form ``image.lora`` / ``text.lora`` instead.
        """
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"image": [], "text": [], "logit_scale": []}
        for name, param in self.model.named_parameters():
            tower = "image" if name.startswith("visual.") else "logit_scale" if name.startswith("logit_") else "text"
            if "lora_" in name:
                tower = f"{tower}.lora"
            groups.setdefault(tower, []).append((f"model.{name}", param))
        return groups

    # ------------------------------------------------------------------ image side
    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if self.model.text_projection is not None else 0

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    @property
    def vision_width(self) -> int:
        visual = self.visual
        if isinstance(visual, VisionTransformer):
            return int(visual.class_embedding.shape[0])
        if isinstance(visual, ModifiedResNet):
            return int(visual.attnpool.c_proj.in_features)
        raise ConfigError(f"model.name {self.name}: unsupported vision tower {type(visual).__name__}")

    # ------------------------------------------------------------------ text side
    @property
    def text_width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.model.token_embedding.weight.device)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.token_embedding(tokens)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def encode_text_embeddings(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """The text tower on token embeddings ``[B, L, width]``; feature taken at ``eot_index`` ([B])."""
        model = self.model
        cast = model.transformer.get_cast_dtype()
        length = embeddings.shape[1]
        x = embeddings.to(cast) + model.positional_embedding[:length].to(cast)
        mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None
        x = model.transformer(x, attn_mask=mask)
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]
        if model.text_projection is None:
            return x
        if isinstance(model.text_projection, nn.Linear):
            return model.text_projection(x)
        return x @ model.text_projection

    def metadata(self) -> dict:
        """What a checkpoint or export needs to rebuild this backbone exactly."""
        return {
            "model_name": self.name,
            "quick_gelu": self.quick_gelu,
            "image_size": list(self.preprocess.image_size),
            "mean": list(self.preprocess.mean),
            "std": list(self.preprocess.std),
            "interpolation": self.preprocess.interpolation,
        }


def resolve_interpolation(cfg, tag_cfg: dict) -> tuple[str, str]:
    """The evaluation resize kernel and where it came from: ``model.interpolation`` if set (it wins
    over the pretrained tag; the note says when the tag's differs), else the tag's, else bicubic."""
    tag = tag_cfg.get("interpolation")
    if cfg.interpolation:
        value = check_interpolation(str(cfg.interpolation))
        differs = f"; the pretrained tag '{cfg.pretrained}' says {tag}" if tag and tag != value else ""
        return value, f"model.interpolation{differs}"
    if tag:
        if tag not in INTERPOLATIONS:
            raise ConfigError(f"the pretrained tag '{cfg.pretrained}' of {cfg.name} resizes with '{tag}', which open_clip's "
                              f"inference preprocessing cannot record; set model.interpolation to one of "
                              f"{', '.join(INTERPOLATIONS)}")
        return str(tag), f"the pretrained tag '{cfg.pretrained}'"
    return "bicubic", "default"


def check_model_config(cfg) -> tuple[Path | None, dict]:
    """Cheap checks of a ``ModelConfig``, run before any data is read: the model name exists,
    the weights are at hand (file, or tag in the local cache), the image size fits the tower.

    Returns the weight file (or None) and the pretrained tag's open_clip config (or {}).
    """
    name = str(cfg.name)
    _known_model(name)
    height, width = (int(s) for s in cfg.image_size)
    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)):
        if height != width:
            raise ConfigError(
                f"model.image_size {[height, width]}: open_clip's ResNet towers ({name}) take square images only; "
                "use e.g. model.image_size=[224,224] or a ViT model"
            )
        if height % 32:
            raise ConfigError(f"model.image_size {[height, width]}: {name} needs a multiple of 32")
    elif vision.get("patch_size"):
        ph, pw = (vision["patch_size"],) * 2 if isinstance(vision["patch_size"], int) else vision["patch_size"]
        if height % ph or width % pw:
            raise ConfigError(
                f"model.image_size {[height, width]} is not a multiple of {name}'s patch size {ph}x{pw}; "
                f"use e.g. [{height // ph * ph}, {width // pw * pw}]"
            )
    if not cfg.pretrained:
        return None, {}
    candidate = Path(str(cfg.pretrained)).expanduser()
    if candidate.suffix in (".pt", ".pth", ".bin", ".safetensors") or candidate.exists():
        if not candidate.is_file():
            raise FtclipError(f"model.pretrained: file {candidate} does not exist")
        return candidate, {}
    return _tag_weights(name, str(cfg.pretrained), cfg.cache_dir, bool(cfg.download))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a weight file into an open_clip model, resizing the ViT positional grid if needed."""
    state = _read_weights(path)
    visual = getattr(model, "visual", None)
    key = "visual.positional_embedding"
    if isinstance(visual, VisionTransformer) and key in state:
        state[key] = resize_grid_embedding(state[key], tuple(visual.grid_size))
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (first: {wrong[0]})")
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise FtclipError(
            f"model.pretrained: {path} does not fit this model architecture: {'; '.join(parts)}. "
            "Is it a checkpoint of another model? Set model.name to the architecture it was trained with."
        )
    model.load_state_dict(state, strict=True)
