"""The one place that builds a CLIP backbone: open_clip model + tokenizer + preprocessing.

``Backbone`` wraps an ``open_clip`` CLIP model (kept as ``self.model`` so its state dict
is open_clip's own format, which is what export writes) and adds what fine-tuning needs:

* any open_clip tower (ViT, ResNet, timm trunks; CLIP and custom text towers, see ftclip/towers.py),
* non-square inputs (e.g. 256x128) with the pretrained positional grid resized: bilinearly for
  open_clip ViTs and ResNet attention pools (:func:`ftclip.towers.set_resnet_variant`), with timm's
  own ``set_input_size`` for timm ViT trunks,
* preprocessing from the model: the pretrained tag's mean/std/interpolation, else what all of the
  architecture's tags agree on (MobileCLIP: mean 0, std 1, bilinear; SigLIP: 0.5 / 0.5), else CLIP's,
* the text tower run on injected token embeddings (prompt learning), causal or bidirectional,
* named parameter groups (``image``, ``text``, ``logit_scale``, ``logit_bias``) for freezing per stage.

Weights come from an open_clip pretrained tag (from its local cache; there is no network at
run time) or a local file: an open_clip state dict (``.pt``/``.pth``/``.bin``), a
``.safetensors`` file, or an OpenAI TorchScript ``.pt``.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from ftclip import towers
from ftclip.config import INTERPOLATIONS, check_interpolation
from ftclip.errors import ConfigError, FtclipError
from ftclip.tiny_models import MODEL_CONFIG_DIR, PREPROCESS  # registers ftclip-tiny-{vit,rn,mobileclip}
from ftclip.towers import resize_grid_embedding

__all__ = ["Backbone", "MODEL_CONFIG_DIR", "Preprocess", "check_model_config", "fit_image_size", "load_weights",
           "model_image_kind", "model_preprocess", "resize_grid_embedding"]

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
        self.tower_fit: dict | None = None  # what open_clip cannot rebuild from its config (fit_image_size)

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
        kind = _vision_kind(model_cfg.get("vision_cfg", {}))
        # open_clip ViTs are built at the input size; ResNet and timm towers at their native size, then fitted
        # to the input (fit_image_size); the weights' positional grids are resized to the model's as they load
        force = ((height, width) if height != width else height) if kind == "vit" else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)  # open_clip warns "no pretrained weights": we load them below
            try:
                model = open_clip.create_model(
                    name, pretrained=None, force_image_size=force, force_quick_gelu=bool(quick_gelu)
                )
            finally:
                logging.disable(logging.NOTSET)
        fitted = fit_image_size(model.visual, (height, width), resnet_last_stride(cfg))
        if weights is not None:
            load_weights(model, weights)
        preprocess = model_preprocess(cfg, tag_cfg)
        try:
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # Hugging Face tokenizers (SigLIP) load from the hub or its local cache
            raise FtclipError(f"the tokenizer of {name} cannot be loaded ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); SigLIP-style models need their "
                              "Hugging Face tokenizer in the local cache (HF_HOME)") from None
        backbone = cls(model, tokenizer, name, preprocess, bool(quick_gelu))
        backbone.tower_fit = fitted
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return backbone

    # ------------------------------------------------------------------ groups
    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """``image`` (the vision tower), ``text`` (the text tower), ``logit_scale`` and, where the model has
        one (SigLIP), ``logit_bias``.

        LoRA parameters (``lora_`` in the name) form ``image.lora`` / ``text.lora`` instead.
        """
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"image": [], "text": [], "logit_scale": []}
        for name, param in self.model.named_parameters():
            if name.startswith("logit_"):
                tower = name
            else:
                tower = "image" if name.startswith("visual.") else "text"
                if "lora_" in name:
                    tower = f"{tower}.lora"
            groups.setdefault(tower, []).append((f"model.{name}", param))
        return groups

    # ------------------------------------------------------------------ image side
    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def image_kind(self) -> str:
        """``vit``, ``resnet`` or ``timm`` (ftclip/towers.py)."""
        return towers.image_kind(self.model.visual)

    @property
    def embed_dim(self) -> int:
        """Width of the shared image-text embedding (``encode_image`` / ``encode_text`` outputs)."""
        return towers.text_projection_dim(self.model)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    @property
    def vision_width(self) -> int:
        """Width of the pooled image feature before the projection."""
        return towers.vision_width(self.visual, self.name)

    # ------------------------------------------------------------------ text side
    @property
    def text(self) -> nn.Module:
        """The module holding the text tower's parts (``model`` or ``model.text``)."""
        return towers.text_module(self.model, self.name)

    @property
    def text_width(self) -> int:
        return int(self.text.token_embedding.weight.shape[1])

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.text.token_embedding.weight.device)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text.token_embedding(tokens)

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per row of ``tokens``, the position the text tower pools (end-of-text, last or first token)."""
        return towers.pool_index(self.model, tokens)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def encode_text_embeddings(self, embeddings: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """The text tower on token embeddings ``[B, L, width]``; feature taken at ``eot_index`` ([B],
        :meth:`pool_index` of the tokens the embeddings stand for). Causal and bidirectional towers."""
        return towers.encode_text_embeddings(self.model, embeddings, eot_index)

    def metadata(self) -> dict:
        """What a checkpoint or export needs to rebuild this backbone exactly."""
        meta = {
            "model_name": self.name,
            "quick_gelu": self.quick_gelu,
            "image_size": list(self.preprocess.image_size),
            "mean": list(self.preprocess.mean),
            "std": list(self.preprocess.std),
            "interpolation": self.preprocess.interpolation,
            "image_tower": self.image_kind,
        }
        if self.image_kind == "resnet":
            meta["resnet_last_stride"] = towers.resnet_last_stride(self.visual)
        return meta


def model_image_kind(name: str) -> str:
    """The image tower kind (vit, resnet, timm) open_clip's config of ``name`` builds, without building it."""
    return _vision_kind((open_clip.get_model_config(name) or {}).get("vision_cfg", {}))


def _vision_kind(vision_cfg: dict) -> str:
    """The image tower kind an open_clip model config builds (vit, resnet, timm)."""
    if vision_cfg.get("timm_model_name"):
        return "timm"
    if isinstance(vision_cfg.get("layers"), (list, tuple)):
        return "resnet"
    return "vit"


def resnet_last_stride(cfg) -> int:
    """``model.resnet_last_stride`` (re-ID recipes default to CLIP-ReID's 1, other tasks to open_clip's 2)."""
    value = getattr(cfg, "resnet_last_stride", None)
    return 2 if value is None else int(value)


def fit_image_size(visual: nn.Module, image_size: tuple[int, int], last_stride: int = 2) -> dict | None:
    """Fit a freshly built image tower to ``(height, width)``, in place, before the weights load.

    open_clip ViTs are already built at the size; a ResNet gets :func:`ftclip.towers.set_resnet_variant`
    (last-stage stride, attention-pool grid); a timm ViT trunk with a fixed patch grid gets timm's
    ``set_input_size`` (its positional embedding resampled by timm); convolutional timm trunks take any size.

    Returns what plain open_clip cannot rebuild from a model config alone -- ``{"image_size": [h, w]}`` plus
    ``"resnet_last_stride"`` for a ResNet -- or None. Export writes it into ``open_clip_config.json`` as
    ``ftclip_tower``, and export loading calls this function with it.
    """
    kind = towers.image_kind(visual)
    size = (int(image_size[0]), int(image_size[1]))
    if kind == "resnet":
        towers.set_resnet_variant(visual, size, last_stride)
        if last_stride != 2 or size[0] != size[1]:
            return {"image_size": list(size), "resnet_last_stride": int(last_stride)}
    elif kind == "timm":
        patch = getattr(visual.trunk, "patch_embed", None)
        fixed = getattr(patch, "img_size", None)
        visual.image_size = size
        if fixed is not None and not getattr(patch, "dynamic_img_size", False) and tuple(fixed) != size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                logging.disable(logging.INFO)  # timm logs the resampling
                try:
                    visual.set_input_size(size)
                finally:
                    logging.disable(logging.NOTSET)
            return {"image_size": list(size)}
    return None


def model_preprocess(cfg, tag_cfg: dict | None = None) -> Preprocess:
    """Input size, mean/std and resize kernels of a ``ModelConfig``, without building the model.

    Each of mean, std and the evaluation kernel is the recipe's (``model.mean``/``std``/
    ``interpolation``) where set, else the pretrained tag's, else what every pretrained tag of the
    architecture agrees on (or ftclip's tiny models' own: ``tiny_models.PREPROCESS``), else CLIP's
    (OpenAI mean/std, bicubic) -- never CLIP's over a model's own. The training kernel is
    ``model.train_interpolation``, else the evaluation one.
    """
    name = str(cfg.name)
    if tag_cfg is None:  # a pretrained tag's config (no file access); {} for a weight file or none
        tag_cfg = (open_clip.get_pretrained_cfg(name, str(cfg.pretrained)) or {}) if cfg.pretrained else {}
    family = _family_preprocess(name)

    def stat(key: str, default) -> tuple[float, ...]:
        value = getattr(cfg, key, None)
        return tuple(float(v) for v in (value if value else tag_cfg.get(key, family.get(key, default))))

    interpolation, source = resolve_interpolation(cfg, tag_cfg, family.get("interpolation"))
    train_interpolation = check_interpolation(str(getattr(cfg, "train_interpolation", None) or interpolation),
                                              "model.train_interpolation")
    height, width = (int(s) for s in cfg.image_size)
    return Preprocess((height, width), stat("mean", OPENAI_DATASET_MEAN), stat("std", OPENAI_DATASET_STD),
                      interpolation, train_interpolation, source)


def _family_preprocess(name: str) -> dict:
    """mean/std/interpolation every pretrained tag of ``name`` agrees on (key left out where they differ)."""
    if name in PREPROCESS:
        return dict(PREPROCESS[name])
    cfgs = [open_clip.get_pretrained_cfg(name, tag) for tag in open_clip.list_pretrained_tags_by_model(name)]
    out = {}
    for key in ("mean", "std", "interpolation"):
        values = {tuple(c[key]) if isinstance(c.get(key), (list, tuple)) else c.get(key) for c in cfgs if key in c}
        if len(values) == 1:
            out[key] = values.pop()
    return out


def resolve_interpolation(cfg, tag_cfg: dict, family: str | None = None) -> tuple[str, str]:
    """The evaluation resize kernel and where it came from: ``model.interpolation`` if set (it wins
    over the pretrained tag; the note says when the tag's differs), else the tag's, else the
    architecture's own (``family``: what all its tags agree on, e.g. MobileCLIP's bilinear), else bicubic."""
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
    if family in INTERPOLATIONS:
        return str(family), f"{cfg.name}'s own (every pretrained tag of it)" if str(cfg.name) not in PREPROCESS \
            else f"{cfg.name}'s own"
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
    kind = _vision_kind(vision)
    if kind == "resnet":
        stride = resnet_last_stride(cfg)
        if stride not in towers.RESNET_STRIDES:
            raise ConfigError(f"model.resnet_last_stride must be 1 (CLIP-ReID's ResNet variant) or 2 "
                              f"(open_clip's), got {stride}")
        if height != width and stride != 1:
            raise ConfigError(
                f"model.image_size {[height, width]}: open_clip's ResNet towers ({name}) take square images (the "
                "attention pool's grid is square); non-square input needs CLIP-ReID's ResNet variant, "
                "model.resnet_last_stride=1 (the re-ID default), whose attention-pool grid is resized to the "
                "input. Use e.g. model.image_size=[224,224], or a ViT model"
            )
        step = 16 if stride == 1 else 32
        if height % step or width % step:
            raise ConfigError(f"model.image_size {[height, width]}: {name} with last stride {stride} needs "
                              f"multiples of {step}, e.g. [{max(step, height // step * step)}, "
                              f"{max(step, width // step * step)}]")
    elif kind == "vit" and vision.get("patch_size"):
        ph, pw = (vision["patch_size"],) * 2 if isinstance(vision["patch_size"], int) else vision["patch_size"]
        if height % ph or width % pw:
            raise ConfigError(
                f"model.image_size {[height, width]} is not a multiple of {name}'s patch size {ph}x{pw}; "
                f"use e.g. [{height // ph * ph}, {width // pw * pw}]"
            )
    elif kind == "timm" and (height % 32 or width % 32):
        raise ConfigError(f"model.image_size {[height, width]}: {name}'s timm trunk ({vision['timm_model_name']}) "
                          f"needs multiples of 32, e.g. [{max(32, height // 32 * 32)}, {max(32, width // 32 * 32)}]")
    if not cfg.pretrained:
        return None, {}
    candidate = Path(str(cfg.pretrained)).expanduser()
    if candidate.suffix in (".pt", ".pth", ".bin", ".safetensors") or candidate.exists():
        if not candidate.is_file():
            raise FtclipError(f"model.pretrained: file {candidate} does not exist")
        return candidate, {}
    return _tag_weights(name, str(cfg.pretrained), cfg.cache_dir, bool(cfg.download))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a weight file into an open_clip model (already fitted to its input size), resizing a square
    positional grid of the file to the model's: open_clip ViT and ResNet attention pool bilinearly, timm ViT
    trunks with timm's ``resample_abs_pos_embed``. A file of the same grid loads as it is."""
    state = _read_weights(path)
    visual = getattr(model, "visual", None)
    kind = towers.image_kind(visual) if visual is not None else ""
    if kind == "vit" and "visual.positional_embedding" in state:
        key = "visual.positional_embedding"
        state[key] = resize_grid_embedding(state[key], tuple(visual.grid_size))
    elif kind == "resnet" and "visual.attnpool.positional_embedding" in state:
        key = "visual.attnpool.positional_embedding"
        size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
        state[key] = resize_grid_embedding(state[key], towers.resnet_grid(size, towers.resnet_last_stride(visual)))
    elif kind == "timm" and "visual.trunk.pos_embed" in state:
        trunk, key = visual.trunk, "visual.trunk.pos_embed"
        if tuple(state[key].shape) != tuple(trunk.pos_embed.shape):
            from timm.layers import resample_abs_pos_embed

            prefix = 0 if getattr(trunk, "no_embed_class", False) else int(getattr(trunk, "num_prefix_tokens", 0))
            state[key] = resample_abs_pos_embed(state[key], new_size=list(trunk.patch_embed.grid_size),
                                                num_prefix_tokens=prefix, verbose=False)
    for scalar in ("logit_scale", "logit_bias"):  # SigLIP keeps its sigmoid-loss bias
        own = getattr(model, scalar, None)
        if scalar in state and isinstance(own, torch.Tensor) and state[scalar].ndim != own.ndim:
            state[scalar] = state[scalar].reshape(own.shape)
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
