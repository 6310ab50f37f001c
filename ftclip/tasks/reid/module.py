"""CLIP-ReID as a LightningModule: stage ``prompts`` then stage ``image`` (see docs/methods/clip_reid.md).

Stage ``prompts``: both encoders frozen. At fit start the projected image feature of every
training image (test transform, no SIE) is computed once and kept on the device; each step takes a
batch of cached features, builds the per-identity prompts' text features and minimises
SupCon(image->text) + SupCon(text->image) at temperature 1 on raw dot products.

Stage ``image``: the per-identity text features are computed once (no grad) into a fixed
[num_ids, embed_dim] matrix; the image tower (or its LoRA), the BNNecks/classifiers and SIE
train with ID (label-smoothed CE over both classifiers) + batch-hard triplet (over the three
pre-BN features) + image-to-text CE against the fixed text features.

Evaluation: L2-normalised concatenation of the pre-BN final and projected features,
squared Euclidean distance, Market-1501 protocol.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ftclip.errors import FtclipError
from ftclip.strategies.prompts import IdPrompts
from ftclip.tasks.base import StagedModule
from ftclip.tasks.reid.features import ReidFeatures, check_reid_tower, reid_features
from ftclip.tasks.reid.heads import ReidHead
from ftclip.tasks.reid.losses import batch_hard_triplet_loss, i2t_loss, id_loss, stage1_supcon_loss
from ftclip.tasks.reid.metrics import evaluate_reid

DEFAULT_TEMPLATE = "A photo of a X X X X {}."


class ReidModule(StagedModule):

    def __init__(self, cfg, num_ids: int, num_cameras: int, vehicle: bool = False):
        super().__init__(cfg)
        strategies = cfg.strategies
        template = strategies.prompts.template or DEFAULT_TEMPLATE.format("vehicle" if vehicle else "person")
        self.prompts = IdPrompts(self.backbone, num_ids, template, strategies.prompts.placeholder,
                                 strategies.prompts.init_std)
        head_cfg = strategies.head
        check_reid_tower(self.backbone, sie=bool(head_cfg.sie))
        self.head = ReidHead(self.backbone.vision_width, self.backbone.embed_dim, num_ids,
                             num_cameras if head_cfg.sie else 0, head_cfg.sie_coefficient)
        self.num_ids = num_ids
        self.info = {"num_ids": num_ids, "num_cameras": num_cameras, "vehicle": vehicle}
        # rebuilt at every fit start from frozen weights, never stored in checkpoints
        self.register_buffer("image_cache", torch.empty(0), persistent=False)
        self.register_buffer("label_cache", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("id_text_features", torch.empty(0), persistent=False)
        self._val_outputs: list[dict[str, torch.Tensor]] = []
        self.last_eval: dict | None = None  # the last evaluation's CMC and rank lists, for on_stage_end's plots

    def parameter_groups(self):
        groups = super().parameter_groups()
        groups["prompts"] = [(f"prompts.{n}", p) for n, p in self.prompts.named_parameters()]
        groups["head"] = [(f"head.{n}", p) for n, p in self.head.named_parameters()]
        return groups

    # ------------------------------------------------------------------ features
    def features(self, images: torch.Tensor, camids: torch.Tensor | None) -> ReidFeatures:
        offset = self.head.sie(camids) if self.head.sie is not None and camids is not None else None
        return self._reid_features(self.backbone, images, offset)

    _reid_features = staticmethod(reid_features)

    def compile_towers(self) -> None:
        """Also compile the re-ID feature function (``trainer.compile``); see StagedModule.compile_towers."""
        if not self.backbone.compiled:
            self._reid_features = torch.compile(reid_features)
        super().compile_towers()

    def embed(self, images: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """The evaluation feature (``eval.feature``), L2-normalised."""
        feats = self.features(images, camids)
        kind = self.cfg.eval.feature
        parts = {"final+proj": [feats.final, feats.proj], "final": [feats.final], "proj": [feats.proj]}[kind]
        return F.normalize(torch.cat(parts, dim=1).float(), dim=1)

    @torch.no_grad()
    def build_image_cache(self, loader) -> None:
        """Stage 1's image features: the projected class token of every training image (test transform),
        without camera embeddings even when SIE is on -- the reference encodes its cache without camera
        ids, and SIE's vectors are untrained at that point."""
        feats, labels = [], []
        for batch in loader:
            images = batch["image"].to(self.device, non_blocking=True)
            feats.append(self.features(images, None).proj.float())
            labels.append(batch["pid"].to(self.device))
        self.image_cache = torch.cat(feats)
        self.label_cache = torch.cat(labels)

    @torch.no_grad()
    def build_id_text_features(self, batch_size: int = 512) -> None:
        ids = torch.arange(self.num_ids, device=self.device)
        self.id_text_features = torch.cat(
            [self.prompts.text_features(self.backbone, chunk).float() for chunk in ids.split(batch_size)]
        )

    def on_fit_start(self) -> None:
        kind = self.stage_cfg.kind
        if kind == "prompts":
            self.build_image_cache(self.trainer.datamodule.cache_dataloader())
        elif kind == "image":
            self.build_id_text_features()
            if self.cfg.data.device_cache:
                self._attach_image_cache(self.trainer.datamodule)

    # ------------------------------------------------------------------ data.device_cache
    def _attach_image_cache(self, datamodule) -> None:
        """Put the decoded uint8 training images on the device (pinned CPU memory if they do not fit)."""
        cache = datamodule.train_image_cache()
        try:
            self._train_images = cache.to(self.device, non_blocking=True)
        except torch.cuda.OutOfMemoryError:
            self._train_images = cache  # gather on the CPU, send uint8 batches
        self._augment = datamodule.device_augment()

    def on_fit_end(self) -> None:
        self._train_images = None  # free the device memory before evaluation

    def cached_batch_images(self, batch) -> torch.Tensor:
        """``data.device_cache``: the augmented images of a batch of indices, made on the device."""
        images = getattr(self, "_train_images", None)
        if images is None:
            raise RuntimeError("data.device_cache: the training image cache is not attached (on_fit_start)")
        index = batch["index"]
        picked = images[index.to(images.device)].to(index.device, non_blocking=True)
        seed = batch["seed"]  # a Python int once on_before_batch_transfer has run
        generator = self._augment.generator(picked.device, int(seed[0]) if torch.is_tensor(seed) else int(seed))
        return self._augment(picked, generator=generator)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """``data.device_cache``: read the batch's augmentation seed while it is still on the CPU; read
        after the transfer to the GPU it would make the host wait for the GPU at every step."""
        if isinstance(batch, dict) and torch.is_tensor(batch.get("seed")):
            batch["seed"] = int(batch["seed"][0])
        return batch

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        if self.stage_cfg.kind == "prompts":
            loss, parts = self._prompt_step(batch["index"].to(self.device))
        else:
            loss, parts = self._image_step(batch)
        self.check_finite(loss)
        size = len(batch["index"])
        self.log("train/loss", loss, prog_bar=self.progress_bar_shown, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=size)
        return loss

    def _prompt_step(self, index: torch.Tensor):
        image = self.image_cache[index]
        labels = self.label_cache[index]
        text = self.prompts.text_features(self.backbone, labels).float()
        loss = stage1_supcon_loss(image, text, labels, temperature=1.0)
        return loss, {"supcon": loss.detach()}

    def _image_step(self, batch):
        images = batch["image"] if "image" in batch else self.cached_batch_images(batch)
        pids = batch["pid"]
        feats = self.features(images, batch["camid"])
        _, logits = self.head.neck(feats.final)
        _, logits_proj = self.head.neck_proj(feats.proj)
        smoothing = 0.1
        parts = {
            "id": id_loss(logits.float(), pids, smoothing) + id_loss(logits_proj.float(), pids, smoothing),
            "triplet": sum(batch_hard_triplet_loss(f.float(), pids, margin=self.triplet_margin)
                           for f in (feats.last, feats.final, feats.proj)),
            "i2t": i2t_loss(feats.proj.float(), self.id_text_features, pids, smoothing),
        }
        loss = sum(self.loss_weight(name) * value for name, value in parts.items())
        return loss, {k: v.detach() for k, v in parts.items()}

    @property
    def triplet_margin(self) -> float:
        return float(self.stage_cfg.losses.get("triplet_margin", 0.3))

    # ------------------------------------------------------------------ export hooks (the task contract)
    export_text_encoder = False  # the text side is the fixed per-ID features, not the text tower

    def export_info(self) -> dict:
        return {"feature": str(self.cfg.eval.feature), "metric": str(self.cfg.eval.metric),
                "template": self.prompts.template, "num_ids": self.num_ids,
                "sie": self.head.sie is not None,
                "sie_coefficient": float(self.head.sie.coefficient) if self.head.sie is not None else 0.0}

    @torch.no_grad()
    def export_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        self.build_id_text_features()
        return {"text_features": {"id_text_features": self.id_text_features.detach().float().cpu()},
                "prompts": {"ctx": self.prompts.ctx.detach().cpu()},
                "heads": {k: v.detach().cpu() for k, v in self.head.state_dict().items()}}

    @torch.no_grad()
    def load_export_tensors(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        """An export's prompts (``ctx``) and heads back into this module (``ftclip eval EXPORT``)."""
        ctx, heads = tensors.get("prompts", {}).get("ctx"), tensors.get("heads", {})
        if ctx is None or not heads:
            raise FtclipError("the export lacks prompts.safetensors (ctx) or heads.safetensors; re-export the run")
        if tuple(ctx.shape) != tuple(self.prompts.ctx.shape):
            raise FtclipError(f"the export's prompts are {list(ctx.shape)}, this model's {list(self.prompts.ctx.shape)}")
        self.prompts.ctx.copy_(ctx)
        self.head.load_state_dict(heads, strict=True)

    def model_card(self, meta: dict) -> str:
        """How to compute the re-ID feature (the pooled feature before the projection) with plain open_clip."""
        feature = meta["feature"]
        h, w = meta["image_size"]
        text = ""
        if feature in ("final", "final+proj"):
            tower = meta.get("image_tower", "vit")
            what, body = {
                "vit": ("the class token *before* the projection", """    visual = model.visual
    proj, visual.proj = visual.proj, None     # without the projection, encode_image returns ln_post(class token)
    try:
        final = model.encode_image(images)
    finally:
        visual.proj = proj
    proj = final @ proj"""),
                "resnet": ("the average-pooled last stage *before* the attention pool (CLIP-ReID's RN50 feature)",
                           """    v = model.visual
    x = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))
    final, proj = x.mean(dim=(2, 3)), v.attnpool(x)"""),
                "timm": ("the trunk's pooled pre-logits feature *before* the projection", """    trunk = model.visual.trunk
    final = trunk.forward_head(trunk.forward_features(images), pre_logits=True)
    proj = model.visual.head(trunk.get_classifier()(final))"""),
            }[tower]
            text += f"""
The task feature `{feature}` also needs {what}. With plain open_clip:

```python
import torch, torch.nn.functional as F

@torch.no_grad()
def task_feature(model, images):              # images: preprocess(...) outputs stacked, [B, 3, {h}, {w}]
{body}
    parts = {{"final": [final], "final+proj": [final, proj]}}["{feature}"]
    return F.normalize(torch.cat(parts, dim=1), dim=1)
```
"""
        if self.head.sie is not None:
            text += ("\nThis run used camera embeddings (SIE) during evaluation; they are in `heads.safetensors` "
                     "(`sie.weight`, times the coefficient, added to the class token). The exported encoder and "
                     "`ftclip embed` compute features without them.\n")
        return text

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch, batch_idx):
        feats = self.embed(batch["image"], batch["camid"])
        self._val_outputs.append({"feat": feats, "index": batch["index"]})

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        feats = torch.cat([o["feat"] for o in self._val_outputs])
        index = torch.cat([o["index"] for o in self._val_outputs])
        self._val_outputs = []
        samples = self.trainer.datamodule.eval_samples()
        feats = self.gather_by_index(feats, index, len(samples))
        num_query = len(self.trainer.datamodule.load().query)
        pids = torch.tensor([s.pid for s in samples])
        cams = torch.tensor([s.camid for s in samples])
        result = evaluate_reid(feats[:num_query], feats[num_query:], pids[:num_query], pids[num_query:],
                               cams[:num_query], cams[num_query:], max_rank=int(self.cfg.eval.max_rank),
                               metric=str(self.cfg.eval.metric))
        for key in ("mAP", "rank1", "rank5", "rank10"):
            self.log(f"val/{key}", float(result[key]), rank_zero_only=False, sync_dist=False)
        self.last_eval = None
        if self.cfg.eval.plots and self.trainer.is_global_zero:
            from ftclip.tasks.reid.plots import rank_lists

            paths = [s.path for s in samples]
            ranked = rank_lists(feats[:num_query], feats[num_query:], pids[:num_query], pids[num_query:],
                                cams[:num_query], cams[num_query:], paths[:num_query], paths[num_query:])
            self.last_eval = {"cmc": [float(v) for v in result["cmc"]], "mAP": float(result["mAP"]), "ranked": ranked}

    def on_stage_end(self, run, stage: str) -> None:
        """``plots/<stage>_ranklist.png`` (a few queries and their top-10 gallery) and ``plots/<stage>_cmc.png``."""
        if not self.cfg.eval.plots or self.last_eval is None:
            return
        from ftclip.tasks.reid.plots import plot_cmc, plot_rank_list

        h, w = (int(v) for v in self.backbone.metadata()["image_size"])
        scale = 128 / max(h, w)
        plot_rank_list(run.plots_dir() / f"{stage}_ranklist.png", self.last_eval["ranked"], stage,
                       size=(max(16, int(h * scale)), max(16, int(w * scale))))
        plot_cmc(run.plots_dir() / f"{stage}_cmc.png", self.last_eval["cmc"], self.last_eval["mAP"], stage)
