"""Antonym-prompt image quality as a LightningModule: stages ``qualiclip`` and ``mos``.

Stage ``qualiclip`` (QualiCLIP-style, no labels): a batch holds ``crops [B, 2, L, 3, H, W]``
(two overlapping crops per image, each at L increasing degradation levels). The image encoder
(``image`` or ``image.lora``) encodes all ``2 B L`` crops; the antonym text features are frozen.
For each prompt pair the cosine similarities ``sp, sn [B, 2, L]`` go into
:func:`ftclip.tasks.iqa.losses.qualiclip_losses`; the terms (``cons``, ``pos``, ``neg``) are averaged over
the pairs and weighted by ``stages.<name>.losses`` (default 1 each; ``margin_rank`` /
``margin_cons`` override the margins).

Stage ``mos`` (CLIP-IQA+-style): the quality score of each labeled image (antonym prompts with
the learned shared context, group ``prompts``; the image encoder too if the stage names it)
against its MOS mapped to [0, 1]: ``losses: {mse: 1.0}`` by default (CLIP-IQA+), or ``rank`` /
``plcc`` (see :func:`ftclip.tasks.iqa.losses.mos_loss`; ``rank_margin`` sets the ranking margin).

Validation: the score's log-odds (float64) of every image of every ``eval.sets`` entry, gathered
by index over ranks -> SRCC (from the log-odds, so saturated scores leave no ties) / PLCC (of the
scores) per set, logged as ``val/<set>/srcc`` and ``val/<set>/plcc``; scores and log-odds are kept
for the plots :meth:`on_stage_end` writes into ``plots/`` (score and log-odds against MOS).
"""

from __future__ import annotations

import torch

from ftclip.errors import FtclipError
from ftclip.tasks.base import StagedModule
from ftclip.tasks.iqa.antonym import AntonymPrompts
from ftclip.tasks.iqa.losses import QUALICLIP_MARGIN_CONS, QUALICLIP_MARGIN_RANK, mos_loss, qualiclip_losses
from ftclip.tasks.iqa.metrics import evaluate_iqa

QUALICLIP_TERMS = ("cons", "pos", "neg")
MOS_TERMS = ("mse", "rank", "plcc")


class IqaModule(StagedModule):

    def __init__(self, cfg, info: dict | None = None):
        super().__init__(cfg)
        a = cfg.strategies.antonym
        self.antonym = AntonymPrompts(self.backbone, [list(p) for p in a.pairs], a.logit_scale,
                                      int(a.context_tokens), float(a.init_std),
                                      context_per_prompt=bool(a.context_per_prompt),
                                      context_layout=str(a.context_layout), context_init=str(a.context_init))
        self.info = dict(info or {})
        self._val_outputs: list[dict[str, torch.Tensor]] = []
        self.last_predictions: dict[str, tuple[list[float], list[float], list[float]]] = {}  # scores, MOS, logits
        self.last_paths: dict[str, list[str]] = {}  # the images of last_predictions, in order

    def parameter_groups(self):
        groups = super().parameter_groups()
        context = self.antonym.context
        groups["prompts"] = [] if context is None else [
            (f"antonym.context.{n}", p) for n, p in context.named_parameters()]
        return groups

    # ------------------------------------------------------------------ scoring
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(images)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Quality scores [B] in [0, 1] of normalised images [B, 3, H, W] (float64)."""
        return self.antonym.score(self.encode(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.score(images)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The L2-normalised image feature the score is computed from (export verification)."""
        return torch.nn.functional.normalize(self.encode(images).float(), dim=-1)

    def export_info(self) -> dict:
        a = self.antonym
        return {"feature": "proj", "pairs": [list(p) for p in a.pairs], "logit_scale": a.logit_scale(),
                "context_tokens": 0 if a.context is None else int(a.context.num_tokens),
                "context_per_prompt": a.context is not None and a.context.per_prompt,
                "context_layout": None if a.context is None else a.context.layout,
                "score": "mean over pairs of softmax(logit_scale * cos(image, [positive, negative]))[positive]"}

    def export_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """``text_features``: ``positive`` [P, D], ``negative`` [P, D], ``logit_scale``; ``prompts``: the learned context."""
        prompts = {} if self.antonym.context is None else {
            "context": self.antonym.context.ctx.detach().float().cpu().contiguous()}
        return {"text_features": self.antonym.export_features(), "prompts": prompts}

    @torch.no_grad()
    def load_export_tensors(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        """An export's learned context back into this module (``ftclip eval EXPORT``); the antonym text
        features are then recomputed from the export's text tower, as after any weight load."""
        context = tensors.get("prompts", {}).get("context")
        mine = None if self.antonym.context is None else self.antonym.context.ctx
        if (context is None) != (mine is None) or context is not None and tuple(context.shape) != tuple(mine.shape):
            raise FtclipError("the export's learned prompt context does not match strategies.antonym.context_tokens "
                              "of the recipe; evaluate with the recipe the export was trained with")
        if context is not None:
            mine.copy_(context)
        self.antonym.refresh()

    def on_fit_start(self) -> None:
        self.antonym.refresh()

    def on_validation_start(self) -> None:
        super().on_validation_start()  # the NaN guard
        self.antonym.refresh()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.antonym.refresh()  # frozen features follow the loaded weights, never a stored copy
        return result

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        if self.stage_cfg.kind == "qualiclip":
            loss, parts, size = self._qualiclip_step(batch["crops"])
        else:
            loss, parts, size = self._mos_step(batch["image"], batch["mos"])
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=self.progress_bar_shown, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=size)
        return loss

    def _qualiclip_step(self, crops: torch.Tensor):
        b, c, levels = crops.shape[:3]
        feats = self.encode(crops.flatten(0, 2))  # [B*2*L, D]
        pos, neg = self.antonym.text_features()
        sim_pos, sim_neg = self.antonym.similarities(feats, pos, neg)  # [B*2*L, P]
        sim_pos = sim_pos.reshape(b, c, levels, -1)
        sim_neg = sim_neg.reshape(b, c, levels, -1)
        margin_rank = float(self.stage_cfg.losses.get("margin_rank", QUALICLIP_MARGIN_RANK))
        margin_cons = float(self.stage_cfg.losses.get("margin_cons", QUALICLIP_MARGIN_CONS))
        terms = {name: 0.0 for name in QUALICLIP_TERMS}
        pairs = sim_pos.shape[-1]
        for p in range(pairs):
            out = qualiclip_losses(sim_pos[..., p], sim_neg[..., p], margin_rank, margin_cons)
            for name in QUALICLIP_TERMS:
                terms[name] = terms[name] + out[name] / pairs
        loss = sum(self.loss_weight(name, 1.0) * terms[name] for name in QUALICLIP_TERMS)
        return loss, {k: v.detach() for k, v in terms.items()}, b

    def _mos_step(self, images: torch.Tensor, mos: torch.Tensor):
        pred = self.score(images)
        weights = {k: float(v) for k, v in self.stage_cfg.losses.items() if k in MOS_TERMS} or {"mse": 1.0}
        margin = float(self.stage_cfg.losses.get("rank_margin", 0.0))
        parts = {kind: mos_loss(pred, mos.float(), kind, margin=margin if kind == "rank" else 0.0)
                 for kind, w in weights.items() if w}
        loss = sum(weights[k] * v for k, v in parts.items())
        return loss, {k: v.detach() for k, v in parts.items()}, len(images)

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def validation_step(self, batch, batch_idx):
        logit = self.antonym.logit(self.encode(batch["image"]))  # float64: scores and ranks without saturation
        self._val_outputs.append({"logit": logit, "index": batch["index"]})

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        logits = torch.cat([o["logit"] for o in self._val_outputs])
        index = torch.cat([o["index"] for o in self._val_outputs])
        self._val_outputs = []
        samples = self.trainer.datamodule.eval_samples()
        logits = self.gather_by_index(logits, index, len(samples)).cpu()
        scores = torch.sigmoid(logits)  # = quality_score, float64
        by_set: dict[str, tuple[list[float], list[float], list[float]]] = {}
        paths: dict[str, list[str]] = {}
        for (name, sample), value, logit in zip(samples, scores.tolist(), logits.tolist()):
            preds, mos, z = by_set.setdefault(name, ([], [], []))
            preds.append(value)
            mos.append(sample.mos)
            z.append(logit)
            paths.setdefault(name, []).append(sample.path)
        self.last_predictions, self.last_paths = by_set, paths
        for name, (preds, mos, z) in by_set.items():
            result = evaluate_iqa(preds, mos, z)  # SRCC from the log-odds: no ties where scores saturate
            for key in ("srcc", "plcc"):
                value = result[key]
                self.log(f"val/{name}/{key}", float(value), rank_zero_only=False, sync_dist=False)

    def on_stage_end(self, run, stage: str) -> None:
        """Per eval set: predicted score vs MOS -> ``plots/<stage>_<set>_scatter.png``; the best and worst
        scored images -> ``plots/<stage>_<set>_extremes.png``."""
        if not self.cfg.eval.plots or not self.last_predictions:
            return
        if self._trainer is not None and self._trainer.global_rank != 0:
            return
        from ftclip.tasks.iqa.plots import plot_extremes, plot_scatter

        for name, (preds, mos, logits) in self.last_predictions.items():
            plot_scatter(run.plots_dir() / f"{stage}_{name}_scatter.png", preds, mos, logits, title=f"{stage}: {name}")
            plot_extremes(run.plots_dir() / f"{stage}_{name}_extremes.png", self.last_paths.get(name, []), preds, mos,
                          logits, title=f"{stage}: {name}")
