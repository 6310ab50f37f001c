"""Few-shot classification as a LightningModule: one stage kind per method (docs/methods/fewshot.md).

Every method ends in one of three classifiers (:mod:`ftclip.tasks.fewshot.classifier`), which
evaluation, ``ftclip predict`` and the export all compute with the same function:

| stage kind | trains | fitted | classifier after it |
|---|---|---|---|
| ``zeroshot`` | nothing | -- | ``text``: the templates through the text tower |
| ``linear_probe`` | nothing (closed form) | L2 logistic regression on raw frozen features, C searched on val | ``linear`` (raw features) |
| ``lp_plus_plus`` | nothing (own loop) | LP++ on cached features, best val epoch | ``linear`` (normalised) |
| ``tip_adapter`` | nothing (closed form) | cache of 10 augmented passes, beta/alpha searched on val | ``tip`` |
| ``tip_adapter_f`` | group ``cache`` (the keys) | cache, CE training, then beta/alpha searched on val | ``tip`` |
| ``coop`` | group ``prompts`` | CE on ``scale * cos(image, context prompts)`` | ``text`` with the learned context |
| ``clip_lora`` | ``image.lora``/``text.lora`` (or full towers) | CE on ``scale * cos(image, class prompts)``, text recomputed every step | ``text`` |
| ``finetune`` | ``image`` (+ ``head``) | CE through a head started from the zero-shot head | ``linear`` (normalised) |
| ``flyp`` | ``image``, ``text``, ``logit_scale`` | CLIP's contrastive loss on (image, caption) pairs | ``text`` |

Closed-form kinds (:attr:`FewshotTask.closed_form_kinds`) run with 0 optimizer steps and are
fitted in :meth:`FewshotModule.on_fit_start`; only the protocol's val split selects anything.

Evaluation gathers the image features of every evaluated image (test -- or base and new -- then
the retain and caption sets) and scores each set with its classifier: the trained one on the
trained classes; for the new classes of ``data.split=base2new`` and the retain set, the text
classifier with their names (CoOp: with the learned context). WiSE-FT (``wise.alpha``) runs after
every stage that changes weights, in :meth:`FewshotModule.on_fit_end`.

The module is built under ``torch.manual_seed(seed)``: its initial weights (a random init, LoRA's
A matrices, CoOp's context) are a function of the config, so WiSE-FT can rebuild the zero-shot
weights it interpolates from (:meth:`FewshotModule.zero_shot_backbone`) instead of keeping a copy.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ftclip.backbone import Backbone
from ftclip.errors import DataError
from ftclip.tasks.base import StagedModule
from ftclip.tasks.fewshot.classifier import classifier_logits
from ftclip.tasks.fewshot.coop import CoOpContext, assemble_prompts, check_prompt_lengths, coop_prompt_texts, name_token_lengths
from ftclip.tasks.fewshot.datamodule import CACHE_AUGMENT
from ftclip.tasks.fewshot.heads import tip_adapter_logits, tip_adapter_search, tip_cache, zeroshot_weights
from ftclip.tasks.fewshot.linear_probe import fit_lp_plus_plus, linear_probe
from ftclip.tasks.fewshot.methods import tip_adapter_defaults
from ftclip.tasks.fewshot.metrics import base_new_metrics, classification_metrics, retrieval_recall
from ftclip.tasks.fewshot.templates import fill, template_set
from ftclip.tasks.fewshot.wise import scale_lora_delta, wise_interpolate

#: stage kind -> the classifier it leaves
CLASSIFIER_OF = {"zeroshot": "text", "coop": "text", "clip_lora": "text", "flyp": "text", "linear_probe": "linear",
                 "lp_plus_plus": "linear", "finetune": "linear", "tip_adapter": "tip", "tip_adapter_f": "tip"}
#: stage kinds fitted in on_fit_start with 0 optimizer steps
CLOSED_FORM_KINDS = ("zeroshot", "linear_probe", "lp_plus_plus", "tip_adapter")
#: stage kinds that select something on the protocol's val split
VAL_KINDS = ("linear_probe", "lp_plus_plus", "tip_adapter", "tip_adapter_f")
#: stage kinds whose weights change, so WiSE-FT applies
WISE_KINDS = ("clip_lora", "finetune", "flyp")
METRICS = ("accuracy", "top5", "macro_f1", "balanced_accuracy", "ece")
TEXT_BATCH = 1024  # prompts per text-tower forward


class FewshotModule(StagedModule):

    def __init__(self, cfg, info: dict):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.seed))
            super().__init__(cfg)
            self._build(dict(info))
        self._val: list[dict[str, torch.Tensor]] = []
        self.last_eval: dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]] = {}
        self.stage_reports: dict[str, dict] = {}  # per stage: what its fit chose (C, beta/alpha, epoch) and WiSE

    def _build(self, info: dict) -> None:
        cfg = self.cfg
        self.info = info
        self.classnames = list(info["classnames"])
        kinds = {str(s.kind) for s in cfg.stages.values()}
        self.templates = list(template_set(cfg.strategies.zeroshot.templates, info.get("templates") or (),
                                           "strategies.zeroshot.templates"))
        dim, n_cls = self.backbone.embed_dim, len(self.classnames)
        # which classifier predicts now (saved in every checkpoint, see on_save_checkpoint)
        self.state = {"classifier": "text", "context": False, "normalize": True, "method": "zeroshot"}
        self.context: CoOpContext | None = None
        if "coop" in kinds:
            c = cfg.strategies.coop
            tokenize = self.backbone.tokenize
            n_ctx = name_token_lengths(tokenize, [c.init])[0] if c.init else int(c.n_ctx)
            init = None
            if c.init:
                with torch.no_grad():
                    init = self.backbone.embed_tokens(tokenize(coop_prompt_texts(["x"], n_ctx, c.init)))[0, 1:1 + n_ctx]
            lens = name_token_lengths(tokenize, self.classnames) if c.position != "end" else None
            self.context = CoOpContext(n_cls, n_ctx, self.backbone.text_width, class_specific=bool(c.class_specific),
                                       position=str(c.position), name_lens=lens, init_vectors=init,
                                       init_std=float(c.init_std))
        self.head: nn.Linear | None = None
        if kinds & {"linear_probe", "lp_plus_plus", "finetune"}:
            self.head = nn.Linear(dim, n_cls)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.cache_keys: nn.Parameter | None = None
        if kinds & {"tip_adapter", "tip_adapter_f"}:
            n = int(info["num_train"])
            self.cache_keys = nn.Parameter(torch.zeros(n, dim))
            self.register_buffer("cache_values", torch.zeros(n, n_cls))
            self.register_buffer("tip_alpha", torch.zeros(()))
            self.register_buffer("tip_beta", torch.zeros(()))
        self._fixed_text: torch.Tensor | None = None  # Tip-Adapter-F's frozen zero-shot weights during its stage

    def parameter_groups(self):
        groups = super().parameter_groups()
        groups["prompts"] = [] if self.context is None else [(f"context.{n}", p) for n, p in self.context.named_parameters()]
        groups["head"] = [] if self.head is None else [(f"head.{n}", p) for n, p in self.head.named_parameters()]
        groups["cache"] = [] if self.cache_keys is None else [("cache_keys", self.cache_keys)]
        return groups

    # ------------------------------------------------------------------ the text side
    def logit_scale(self) -> float:
        """``strategies.zeroshot.logit_scale``, or the model's own ``exp(logit_scale)`` when it is null."""
        value = self.cfg.strategies.zeroshot.logit_scale
        return float(self.backbone.model.logit_scale.detach().exp()) if value is None else float(value)

    def text_weights(self, classnames: list[str], context: bool = False, backbone: Backbone | None = None) -> torch.Tensor:
        """Unit class vectors ``[C, D]``: the templates averaged (:func:`zeroshot_weights`), or CoOp's prompts."""
        backbone = backbone or self.backbone
        if context:
            return F.normalize(self._coop_features(classnames).float(), dim=-1)
        prompts = fill(self.templates, classnames)
        tokens = backbone.tokenize([p for row in prompts for p in row])
        feats = torch.cat([backbone.encode_text(tokens[i:i + TEXT_BATCH]).float()  # 80 templates x 1000 classes fit
                           for i in range(0, len(tokens), TEXT_BATCH)])
        return zeroshot_weights(feats.view(len(self.templates), len(classnames), -1))

    def class_text(self) -> torch.Tensor:
        """The trained classes' text weights as the current classifier reads them (with CoOp's context once learned)."""
        return self.text_weights(self.classnames, context=self.state["context"])

    def _coop_features(self, classnames: list[str]) -> torch.Tensor:
        ctx = self.context
        tokens = self.backbone.tokenize(coop_prompt_texts(classnames, ctx.n_ctx))
        check_prompt_lengths(tokens, classnames)
        with torch.no_grad():
            emb = self.backbone.embed_tokens(tokens)
        if classnames == self.classnames:
            prompts = ctx(emb)
        else:  # base-to-new: the shared context with other class names
            lens = name_token_lengths(self.backbone.tokenize, classnames) if ctx.position != "end" else None
            emb = emb.to(ctx.ctx.dtype)
            prompts = assemble_prompts(emb[:, :1], ctx.ctx, emb[:, 1 + ctx.n_ctx:], lens, ctx.position)
        return self.backbone.encode_text_embeddings(prompts, tokens.argmax(dim=-1))

    # ------------------------------------------------------------------ the classifier
    def classifier_meta(self) -> dict:
        return {"classifier": self.state["classifier"], "normalize": self.state["normalize"],
                "method": self.state["method"], "classnames": list(self.classnames)}

    def classifier_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The current classifier's tensors over the trained classes (what an export stores)."""
        kind = self.state["classifier"]
        if kind == "linear":
            return {"heads": {"weight": self.head.weight.detach().float(), "bias": self.head.bias.detach().float()}}
        out = {"text_features": {"weights": self.class_text().detach(),
                                 "logit_scale": torch.tensor(self.logit_scale())}}
        if kind == "tip":
            out["heads"] = {"cache_keys": self.cache_keys.detach().float(), "cache_values": self.cache_values.float(),
                            "alpha": self.tip_alpha.float(), "beta": self.tip_beta.float()}
        if self.state["context"]:
            out["prompts"] = {"context": self.context.ctx.detach().float()}
        return out

    def set_logits(self, name: str, features: torch.Tensor, classnames: list[str]) -> torch.Tensor:
        """Logits of an evaluated set: the trained classifier on ``test``/``base``; the text classifier with the
        set's class names on ``new`` (with CoOp's learned context when it is in use) and ``retain``."""
        if name in ("test", "base"):
            return classifier_logits(features, self.classifier_tensors(), self.classifier_meta())
        weights = self.text_weights(classnames, context=name == "new" and self.state["context"])
        return classifier_logits(features, {"text_features": {"weights": weights,
                                                              "logit_scale": torch.tensor(self.logit_scale())}},
                                 {"classifier": "text"})

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.encode_image(images).float(), dim=-1)

    # ------------------------------------------------------------------ features for the fitting steps
    @contextmanager
    def evaluating(self):
        """Eval mode (no dropout, LoRA's included) for the fitting steps and WiSE-FT; the mode is restored after."""
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    @torch.no_grad()
    def _features(self, loader) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for batch in loader:
            feats.append(self.backbone.encode_image(batch["image"].to(self.device)).float())
            labels.append(batch["label"].to(self.device))
        return torch.cat(feats), torch.cat(labels)

    def _datamodule(self):
        return self.trainer.datamodule

    def _val_features(self):
        xv, yv = self._features(self._datamodule().image_loader("val"))
        if len(yv) == 0:
            raise DataError("the protocol's val split is empty (every class has exactly data.shots training "
                            "images and the data set has no val split): lower data.shots or add images")
        return xv, yv

    # ------------------------------------------------------------------ stages
    def on_fit_start(self) -> None:
        with self.evaluating():
            self._start_stage(str(self.stage_cfg.kind))

    def _start_stage(self, kind: str) -> None:
        fresh = self.trainer.ckpt_path is None  # a resumed stage keeps what its checkpoint holds
        self.state = {"classifier": CLASSIFIER_OF[kind], "context": kind == "coop" or self.state["context"],
                      "normalize": self.state["normalize"], "method": kind}
        if kind in ("clip_lora", "flyp", "zeroshot"):
            self.state["context"] = False
        report: dict = {}
        if kind == "linear_probe":
            report = self._fit_linear_probe()
        elif kind == "lp_plus_plus":
            report = self._fit_lp_plus_plus()
        elif kind in ("tip_adapter", "tip_adapter_f") and (fresh or kind == "tip_adapter"):
            report = self._build_cache(search=kind == "tip_adapter")
        elif kind == "finetune" and fresh:
            with torch.no_grad():  # WiSE-FT: weight = exp(logit_scale) * zero-shot weights, bias 0, normalised inputs
                self.head.weight.copy_(self.logit_scale() * self.class_text())
                self.head.bias.zero_()
            self.state["normalize"] = True
        if kind == "tip_adapter_f":
            with torch.no_grad():
                self._fixed_text = self.class_text()
        if report:
            self.stage_reports[self.stage_name] = {"fit": report}

    def _fit_linear_probe(self) -> dict:
        dm, lp = self._datamodule(), self.cfg.strategies.linear_probe
        x, y = self._features(dm.image_loader("train"))
        xv, yv = self._val_features()
        head, c, trace = linear_probe(x, y, xv, yv, len(self.classnames), grid=list(lp.c_grid),
                                      steps=int(lp.search_steps), max_iter=int(lp.max_iter))
        with torch.no_grad():
            self.head.weight.copy_(head.weight.float())
            self.head.bias.copy_(head.bias.float())
        self.state["normalize"] = False
        val_acc = dict(trace)[c]
        return {"c": c, "val_accuracy": val_acc, "c_trace": [[float(k), float(v)] for k, v in trace]}

    def _fit_lp_plus_plus(self) -> dict:
        dm, lpp = self._datamodule(), self.cfg.strategies.lp_plus_plus
        x, y = self._features(dm.image_loader("train", CACHE_AUGMENT))
        xv, yv = self._val_features()
        with torch.no_grad():
            text = self.class_text()
        head, epoch, val_acc = fit_lp_plus_plus(x, y, text, xv, yv, epochs=int(lpp.epochs),
                                                alpha_every=int(lpp.alpha_every))
        linear = head.as_linear()  # f W^T + b + alpha_c (f . t_c) = f (W + alpha T)^T + b
        with torch.no_grad():
            self.head.weight.copy_(linear.weight)
            self.head.bias.copy_(linear.bias)
        self.state["normalize"] = True
        return {"best_epoch": int(epoch), "val_accuracy": float(val_acc)}

    def _tip_settings(self):
        tip, ref = self.cfg.strategies.tip_adapter, tip_adapter_defaults(self.info.get("dataset"))
        alpha = float(ref.init_alpha if tip.init_alpha is None else tip.init_alpha)
        scale = tuple(ref.search_scale if tip.search_scale is None else tip.search_scale)
        return alpha, float(tip.init_beta), scale, tuple(int(s) for s in tip.search_step)

    def _build_cache(self, search: bool) -> dict:
        dm = self._datamodule()
        passes = int(self.cfg.strategies.tip_adapter.augment_passes)
        feats, labels = [], None
        for p in range(passes):  # same images in the same order, a fresh augmentation each pass
            x, labels = self._features(dm.image_loader("train", CACHE_AUGMENT, epoch=p))
            feats.append(x)
        keys, values = tip_cache(torch.stack(feats), labels, len(self.classnames))
        alpha, beta, _, _ = self._tip_settings()
        with torch.no_grad():
            self.cache_keys.copy_(keys)
            self.cache_values.copy_(values)
            self.tip_alpha.fill_(alpha)
            self.tip_beta.fill_(beta)
        return self._search_tip() if search else {"init_alpha": alpha, "init_beta": beta}

    @torch.no_grad()
    def _search_tip(self) -> dict:
        xv, yv = self._val_features()
        _, _, scale, steps = self._tip_settings()
        found = tip_adapter_search(xv, yv, self.class_text(), self.cache_keys.detach(),
                                   self.cache_values, scale, steps, self.logit_scale())
        self.tip_alpha.fill_(found.alpha)
        self.tip_beta.fill_(found.beta)
        return {"alpha": found.alpha, "beta": found.beta, "val_accuracy": found.accuracy}

    def on_train_end(self) -> None:
        if str(self.stage_cfg.kind) == "tip_adapter_f":  # the trained keys' beta/alpha, searched on val
            with self.evaluating():
                self.stage_reports.setdefault(self.stage_name, {})["fit"] = self._search_tip()
            self._fixed_text = None

    def training_step(self, batch, batch_idx):
        kind = str(self.stage_cfg.kind)
        if kind == "flyp":
            loss = self._flyp_loss(batch)
            name = "contrastive"
        else:
            loss = F.cross_entropy(self._train_logits(kind, batch["image"]), batch["label"])
            name = "ce"
        loss = self.loss_weight(name, 1.0) * loss
        self.check_finite(loss)
        self.log("train/loss", loss, prog_bar=self.progress_bar_shown, batch_size=len(batch["index"]))
        return loss

    def _train_logits(self, kind: str, images: torch.Tensor) -> torch.Tensor:
        if kind == "tip_adapter_f":  # the reference encodes without gradient; only the cache keys train
            with torch.no_grad():
                f = self.backbone.encode_image(images).float()
            return tip_adapter_logits(f, self._fixed_text, self.cache_keys, self.cache_values, float(self.tip_alpha),
                                      float(self.tip_beta), self.logit_scale())
        f = F.normalize(self.backbone.encode_image(images).float(), dim=-1)
        if kind == "finetune":
            return self.head(f)
        weights = self.class_text()  # CoOp: through the learned context; CLIP-LoRA: the templates, adapted towers
        return self.logit_scale() * f @ weights.T

    def _flyp_loss(self, batch) -> torch.Tensor:
        from open_clip.loss import ClipLoss

        world = self.trainer.world_size if self._trainer is not None else 1
        loss = ClipLoss(gather_with_grad=world > 1, rank=self.global_rank, world_size=world)
        image = F.normalize(self.backbone.encode_image(batch["image"]).float(), dim=-1)
        text = F.normalize(self.backbone.encode_text(self.backbone.tokenize(list(batch["caption"]))).float(), dim=-1)
        return loss(image, text, self.backbone.model.logit_scale.exp())

    def on_fit_end(self) -> None:
        kind = str(self.stage_cfg.kind)
        alphas = [float(a) for a in self.cfg.wise.alpha]
        if kind in WISE_KINDS and alphas:
            with self.evaluating():
                self.stage_reports.setdefault(self.stage_name, {})["wise"] = self.wise_sweep(alphas)

    # ------------------------------------------------------------------ WiSE-FT
    def zero_shot_backbone(self) -> Backbone:
        """The backbone as this module was built: pretrained weights (or the seeded random init), LoRA at zero."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed))  # the same draws, in the same order, as StagedModule.__init__
            backbone = Backbone.from_config(self.cfg.model)
            if self.lora_summary is not None and self.lora_summary.targets:
                from ftclip.strategies.lora import apply_lora

                apply_lora(backbone, self.cfg.strategies.lora)
        return backbone.to(self.device)

    def _changed_parameters(self) -> dict[str, nn.Parameter]:
        """The backbone and head parameters of every group trained by this stage or an earlier one."""
        stages = list(self.cfg.stages)
        so_far = {g for name in stages[:stages.index(self.stage_name) + 1] for g in self.cfg.stages[name].train}
        groups = self.parameter_groups()
        wanted = {id(p) for g in so_far & (set(groups) - {"prompts", "cache"}) for _, p in groups[g]}
        return {n: p for n, p in self.named_parameters() if id(p) in wanted}

    @torch.no_grad()
    def wise_sweep(self, alphas: list[float]) -> dict[str, dict[str, float]]:
        """Evaluate ``(1 - a) theta_zeroshot + a theta_finetuned`` for every ``a`` over every weight trained so
        far (WiSE-FT): LoRA adapters by scaling their delta (``scale_lora_delta``), other backbone weights
        against :meth:`zero_shot_backbone`, a trained head against the zero-shot head. The fine-tuned weights
        are restored afterwards; learned prompts and caches are kept as they are."""
        params = self._changed_parameters()
        fine = {n: p.detach().clone() for n, p in params.items()}
        lora = {n: v for n, v in fine.items() if "lora_" in n}
        full = [n for n in fine if n not in lora and n.startswith("backbone.")]
        zero: dict[str, torch.Tensor] = {}
        if full or "head.weight" in fine:
            base = self.zero_shot_backbone()
            state = {f"backbone.model.{k}": v for k, v in base.model.state_dict().items()}
            zero.update({n: state[n] for n in full})
            if "head.weight" in fine:  # fine-tuning's head started as the zero-shot head
                zero["head.weight"] = self.logit_scale() * self.text_weights(self.classnames, backbone=base)
                zero["head.bias"] = torch.zeros_like(fine["head.bias"])
            del base
        loader = self._datamodule().eval_image_loader()
        results = {}
        for alpha in alphas:
            mixed = scale_lora_delta(lora, alpha) if lora else {}
            if zero:
                mixed.update(wise_interpolate(zero, {n: fine[n] for n in zero}, alpha))
            for name, value in mixed.items():
                params[name].copy_(value)
            flat, _ = self.score_sets(self._features(loader)[0])
            results[f"{alpha:g}"] = {k: v for k, v in flat.items() if k.split("/")[-1] in ("accuracy", "base", "new", "hm")}
        for name, value in fine.items():
            params[name].copy_(value)
        return results

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch, batch_idx):
        self._val.append({"feat": self.backbone.encode_image(batch["image"]).float(), "index": batch["index"]})

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        feats = torch.cat([o["feat"] for o in self._val])
        index = torch.cat([o["index"] for o in self._val])
        self._val = []
        feats = self.gather_by_index(feats, index, len(self._datamodule().eval_items()))
        with torch.no_grad():
            flat, self.last_eval = self.score_sets(feats)
        for key, value in flat.items():
            self.log(f"val/{key}", float(value), rank_zero_only=False, sync_dist=False)

    @torch.no_grad()
    def score_sets(self, feats: torch.Tensor):
        """Metrics of every evaluated set from the image features of :meth:`eval_items` order."""
        dm = self._datamodule()
        flat: dict[str, float] = {}
        details: dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]] = {}
        start = 0
        for es in dm.eval_sets:
            f = feats[start:start + len(es.items)]
            start += len(es.items)
            if es.name == "captions":
                text = self.backbone.encode_text(self.backbone.tokenize(list(es.captions))).float()
                recall = retrieval_recall(f, text, torch.tensor(es.caption_image))
                flat.update({f"captions/{k}": v for k, v in recall.items()})
                continue
            labels = torch.tensor([y for _, y in es.items], device=f.device)
            names = list(es.classnames)
            logits = self.set_logits(es.name, f, names)
            metrics = classification_metrics(logits, labels, names)
            details[es.name] = (logits.cpu(), labels.cpu(), names)
            prefix = "" if es.name == "test" else f"{es.name}/"
            for key in METRICS:
                if key in metrics and not (key == "accuracy" and es.name in ("base", "new")):
                    flat[f"{prefix}{key}"] = metrics[key]
            if es.name in ("base", "new"):
                flat[es.name] = metrics["accuracy"]
        if "base" in flat and "new" in flat:
            flat["hm"] = base_new_metrics(flat["base"], flat["new"])["hm"]
        return flat, details

    def on_stage_end(self, run, stage: str) -> None:
        """Per-class accuracy, what the stage's fit chose and the WiSE-FT sweep into ``metrics.json``; plots."""
        extra = dict(self.stage_reports.get(stage, {}))
        for name, (logits, labels, names) in self.last_eval.items():
            per_class = classification_metrics(logits, labels, names)["per_class_accuracy"]
            extra["per_class_accuracy" if name == "test" else f"{name}/per_class_accuracy"] = per_class
        if extra:
            run.record_metrics(stage, {**run.metrics().get(stage, {}), **extra})
        if not self.cfg.eval.plots:
            return
        from ftclip.tasks.fewshot.plots import plot_confusion, plot_reliability, plot_wise

        for name, (logits, labels, names) in self.last_eval.items():
            plot_confusion(run.plots_dir() / f"{stage}_{name}_confusion.png", logits, labels, names, f"{stage}: {name}")
            plot_reliability(run.plots_dir() / f"{stage}_{name}_reliability.png", logits, labels, f"{stage}: {name}")
        if "wise" in extra:
            plot_wise(run.plots_dir() / f"{stage}_wise.png", extra["wise"], f"{stage}: WiSE-FT")

    # ------------------------------------------------------------------ export and checkpoints
    def export_info(self) -> dict:
        return {"feature": "proj", **self.classifier_meta(), "templates": list(self.templates),
                "logit_scale": self.logit_scale(), "shots": self.info.get("shots"), "dataset": self.info.get("dataset")}

    @torch.no_grad()
    def export_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {kind: {k: v.detach().float().cpu().contiguous() for k, v in values.items()}
                for kind, values in self.classifier_tensors().items()}

    def model_card(self, meta: dict) -> str:
        from ftclip.tasks.fewshot.classifier import model_card_section

        return model_card_section(self.classifier_meta())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ftclip"]["classifier"] = dict(self.state)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.state = dict(checkpoint.get("ftclip", {}).get("classifier", self.state))

