"""Each few-shot method's defaults as its reference code has them (one place; docs/methods/fewshot.md
gives the sources line by line). Values a recipe may change become schema defaults; the rest
are facts the wiring must reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftclip.errors import ConfigError

__all__ = [
    "CoOpDefaults",
    "COOP",
    "coop_epochs",
    "ClipLoraDefaults",
    "CLIP_LORA",
    "TipAdapterDefaults",
    "tip_adapter_defaults",
    "LinearProbeDefaults",
    "LINEAR_PROBE",
    "LPPlusPlusDefaults",
    "LP_PLUS_PLUS",
    "FlypDefaults",
    "FLYP",
]


def _check_shots(shots: int) -> int:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ConfigError(f"data.shots must be an integer >= 1, got {shots!r}")
    return shots


@dataclass(frozen=True)
class CoOpDefaults:  # KaiyangZhou/CoOp train.py extend_cfg, configs/trainers/CoOp/*.yaml, Dassl defaults
    n_ctx: int = 16
    init: str | None = None  # None: N(0, 0.02); "a photo of a" is the paper's other setting
    class_specific: bool = False
    position: str = "end"
    init_std: float = 0.02
    optimizer: str = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4  # Dassl OPTIM.WEIGHT_DECAY (CoOp's configs do not change it)
    batch_size: int = 32
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5  # constant during the warm-up
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop, bicubic, + horizontal flip p=0.5
    logit_scale: str = "model"  # CLIP's own exp(logit_scale) (frozen), i.e. 100 for OpenAI weights


COOP = CoOpDefaults()


def coop_epochs(shots: int, dataset: str | None = None) -> int:
    """CoOp's epochs: 50 for 1 shot, 100 for 2-4, 200 for 8 and more; ImageNet 50 at every K."""
    shots = _check_shots(shots)
    if dataset == "ImageNet" or shots == 1:
        return 50
    return 100 if shots <= 4 else 200


@dataclass(frozen=True)
class ClipLoraDefaults:  # MaxZanella/CLIP-LoRA run_utils.py, lora.py, main.py, loralib/
    r: int = 2
    alpha: float = 1.0
    rslora: bool = True  # scaling alpha / sqrt(r) (loralib/layers.py), not alpha / r
    dropout: float = 0.25  # on the adapter's input only, a separate mask per projection
    projections: tuple[str, ...] = ("q", "k", "v")  # separate adapters, no output projection, no MLP
    encoders: tuple[str, ...] = ("image", "text")
    blocks: str = "all"
    optimizer: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 1e-2  # the first release had 1e2 (fixed in commit 37a196d)
    betas: tuple[float, float] = (0.9, 0.999)
    iterations_per_shot: int = 500  # total iterations = 500 * K, cosine per iteration
    min_lr: float = 1e-6
    batch_size: int = 32
    logit_scale: float = 100.0  # a constant, not the model's logit_scale
    template: str = "a photo of a {}."
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop(224, bicubic) + flip p=0.5

    def iterations(self, shots: int) -> int:
        return self.iterations_per_shot * _check_shots(shots)

    def peft_kwargs(self) -> dict:
        """Keyword arguments of ``peft.LoraConfig`` that reproduce CLIP-LoRA's adapter maths."""
        return {"r": self.r, "lora_alpha": self.alpha, "lora_dropout": self.dropout, "use_rslora": self.rslora}


CLIP_LORA = ClipLoraDefaults()


@dataclass(frozen=True)
class TipAdapterDefaults:  # gaopengcuhk/Tip-Adapter main.py, utils.py, configs/<data set>.yaml
    augment_passes: int = 10  # cache keys: mean over 10 augmented passes
    crop_scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop(224, bicubic) + flip p=0.5
    init_beta: float = 1.0
    init_alpha: float = 2.0
    search_scale: tuple[float, float] = (12.0, 10.0)  # (beta, alpha)
    search_step: tuple[int, int] = (200, 20)
    lr: float = 1e-3  # Tip-Adapter-F: AdamW(eps=1e-4), default weight decay 0.01
    eps: float = 1e-4
    epochs: int = 20
    batch_size: int = 256
    logit_scale: float = 100.0


# (init_alpha, search_scale, epochs) per data set, from the reference configs.
_TIP_CONFIGS: dict[str, tuple[float, tuple[float, float], int]] = {
    "Caltech101": (3.0, (12.0, 5.0), 20),
    "DescribableTextures": (2.0, (13.0, 13.0), 20),
    "EuroSAT": (2.0, (12.0, 10.0), 100),
    "FGVCAircraft": (5.0, (30.0, 30.0), 20),
    "Food101": (1.17, (10.0, 10.0), 20),
    "ImageNet": (1.17, (7.0, 3.0), 20),
    "OxfordFlowers": (10.0, (50.0, 50.0), 20),
    "OxfordPets": (1.17, (7.0, 3.0), 20),
    "StanfordCars": (3.0, (20.0, 10.0), 20),
    "SUN397": (1.17, (12.0, 10.0), 20),
    "UCF101": (3.0, (7.0, 3.0), 20),
}


def tip_adapter_defaults(dataset: str | None = None) -> TipAdapterDefaults:
    """The reference's settings for a Dassl data set; for any other data set ftclip's choice, the
    median of the 11 reference values (init_alpha 2, search scales 12 and 10, 20 epochs)."""
    if dataset in _TIP_CONFIGS:
        alpha, scale, epochs = _TIP_CONFIGS[dataset]
        return TipAdapterDefaults(init_alpha=alpha, search_scale=scale, epochs=epochs)
    return TipAdapterDefaults()


@dataclass(frozen=True)
class LinearProbeDefaults:  # KaiyangZhou/CoOp lpclip/linear_probe.py, lpclip/feat_extractor.py
    c_grid: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
    search_steps: int = 8
    max_iter: int = 1000
    normalize: bool = False  # the extractor caches clip_model.visual(x) unnormalised, test-time preprocessing


LINEAR_PROBE = LinearProbeDefaults()


@dataclass(frozen=True)
class LPPlusPlusDefaults:  # FereshteShakeri/FewShot-CLIP-Strong-Baseline methods/linear_probe_p2.py, configs/base.yaml
    epochs: int = 300
    alpha_every: int = 10
    alpha_init_scale: float = 250.0
    crop_scale: tuple[float, float] = (0.5, 1.0)  # the one training pass the features come from


LP_PLUS_PLUS = LPPlusPlusDefaults()


@dataclass(frozen=True)
class FlypDefaults:  # locuslab/FLYP README (ImageNet command), src/models/flyp_loss.py, src/args.py
    lr: float = 1e-5
    weight_decay: float = 0.1  # AdamW
    warmup_steps: int = 500
    min_lr: float = 0.0
    batch_size: int = 512  # ImageNet; 256 for the transfer sets in the README
    epochs: int = 10
    logit_scale: str = "model"  # open_clip ClipLoss with the model's learned (trained) logit scale


FLYP = FlypDefaults()
