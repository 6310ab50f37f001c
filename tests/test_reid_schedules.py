"""The lr of every epoch against the CLIP-ReID reference's schedules (and pyiqa's), and the bias parameter group.

The reference (Syliz517/CLIP-ReID) steps stage 1's timm-style cosine scheduler with
``scheduler.step(epoch)`` for ``epoch = 1..120`` before each epoch, and stage 2's warm-up
multistep scheduler once in its constructor and then with ``step()`` at each epoch start. The
tables below are built by driving library schedulers with those definitions exactly that way
(timm's ``CosineLRScheduler``, which the reference's ``solver/cosine_lr.py`` copies; torch's
``LinearLR`` x ``MultiStepLR``, the reference's ``WarmupMultiStepLR`` formula); ftclip's lr is
read inside each epoch of a real Lightning fit of a ``StagedModule``.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from ftclip.config import ModelConfig, OptimizerConfig, ScheduleConfig, StageConfig
from ftclip.stages import build_optimizer, is_bias
from ftclip.tasks.base import StagedModule


def _reference_stage1(epochs=120, base=3.5e-4, warmup=5, warmup_lr=1e-5, min_lr=1e-6) -> list[float]:
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = CosineLRScheduler(opt, t_initial=epochs, lr_min=min_lr, cycle_decay=0.1, warmup_lr_init=warmup_lr,
                              warmup_t=warmup, cycle_limit=1, t_in_epochs=True)
    lrs = []
    for epoch in range(1, epochs + 1):  # processor_clipreid_stage1.do_train_stage1
        sched.step(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def _reference_stage2(epochs=60, base=5e-6, warmup=10, factor=0.1, milestones=(30, 50), gamma=0.1) -> list[float]:
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=base)
    # WarmupMultiStepLR(last_epoch=-1): base * (factor (1 - e/w) + e/w if e < w else 1) * gamma^bisect(milestones, e)
    sched = torch.optim.lr_scheduler.ChainedScheduler([
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=factor, end_factor=1.0, total_iters=warmup),
        torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=gamma),
    ])  # constructed: last_epoch 0
    lrs = []
    for _ in range(epochs):  # processor_clipreid_stage2.do_train_stage2: step() at each epoch start
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


class _Probe(StagedModule):
    """A StagedModule whose training step only records the lr of the epoch it runs in."""

    def __init__(self, stage: StageConfig):
        cfg = OmegaConf.create({"model": OmegaConf.structured(ModelConfig(name="ftclip-tiny-vit", image_size=[32, 32])),
                                "trainer": {"compile": False}})
        super().__init__(cfg)
        self.set_stage("probe", OmegaConf.structured(stage))
        self.lrs: list[list[float]] = []

    def training_step(self, batch, batch_idx):
        self.lrs.append([g["lr"] for g in self.optimizers().param_groups])
        return (self.backbone.model.visual.conv1.weight.sum() + self.backbone.model.visual.ln_pre.bias.sum()) * 0.0

    def embed(self, images):  # the task contract's export hooks; not used here
        raise NotImplementedError

    def export_info(self):
        raise NotImplementedError

    def export_tensors(self):
        raise NotImplementedError


def _ftclip_lrs(stage: StageConfig) -> list[list[float]]:
    module = _Probe(stage)
    trainer = L.Trainer(max_epochs=stage.epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([0], batch_size=1))
    assert len(module.lrs) == stage.epochs
    return module.lrs


def test_stage1_cosine_lr_of_every_epoch_is_the_reference():
    stage = StageConfig(kind="prompts", train=["image"], epochs=120,
                        optimizer=OptimizerConfig(name="adam", lr=3.5e-4, bias_lr_factor=1.0),
                        schedule=ScheduleConfig(name="cosine", warmup_epochs=5, warmup_lr=1e-5, min_lr=1e-6))
    got = [lrs[0] for lrs in _ftclip_lrs(stage)]
    want = _reference_stage1()
    assert want[0] == pytest.approx(7.8e-5)  # the figure: epoch 1 is one warm-up step above 1e-5
    assert want[-1] == pytest.approx(1e-6)
    assert got == pytest.approx(want, rel=1e-12, abs=0)


def test_stage2_warmup_multistep_lr_of_every_epoch_is_the_reference():
    stage = StageConfig(kind="image", train=["image"], epochs=60,
                        optimizer=OptimizerConfig(name="adam", lr=5e-6, bias_lr_factor=2.0),
                        schedule=ScheduleConfig(name="warmup_multistep", warmup_epochs=10, warmup_factor=0.1,
                                                milestones=[30, 50], gamma=0.1))
    lrs = _ftclip_lrs(stage)
    want = _reference_stage2()
    assert [g[0] for g in lrs] == pytest.approx(want, rel=1e-12, abs=0)
    assert [g[1] for g in lrs] == pytest.approx([2 * w for w in want], rel=1e-12, abs=0)  # bias group, x2
    full = [epoch + 1 for epoch, lr in enumerate(want) if lr == pytest.approx(5e-6)]
    assert full == list(range(10, 30))  # 20 epochs at the full rate; epochs 30 and 50 already reduced


def test_cosine_warmup_starts_every_group_at_warmup_lr():
    """The reference's warm-up goes from warmup_lr to each group's own base lr (and floors at min_lr)."""
    stage = StageConfig(kind="image", train=["image"], epochs=8,
                        optimizer=OptimizerConfig(name="adam", lr=1e-3, bias_lr_factor=3.0),
                        schedule=ScheduleConfig(name="cosine", warmup_epochs=4, warmup_lr=1e-5, min_lr=1e-6))
    lrs = _ftclip_lrs(stage)
    base = _reference_stage1(epochs=8, base=1e-3, warmup=4, warmup_lr=1e-5, min_lr=1e-6)
    bias = _reference_stage1(epochs=8, base=3e-3, warmup=4, warmup_lr=1e-5, min_lr=1e-6)
    assert [g[0] for g in lrs] == pytest.approx(base, rel=1e-12, abs=0)
    assert [g[1] for g in lrs] == pytest.approx(bias, rel=1e-12, abs=0)


def test_bias_lr_factor_group_holds_every_parameter_named_bias():
    """CLIP-ReID gives ``bias_lr_factor`` to every name containing "bias", ``in_proj_bias`` included."""
    from ftclip.backbone import Backbone

    backbone = Backbone.from_config(OmegaConf.structured(ModelConfig(name="ftclip-tiny-vit", image_size=[32, 32])))
    named = backbone.parameter_groups()["image"]
    optimizer = build_optimizer(named, OmegaConf.structured(OptimizerConfig(lr=1e-4, bias_lr_factor=2.0)))
    base_group, bias_group = optimizer.param_groups
    assert bias_group["lr"] == pytest.approx(2e-4) and base_group["lr"] == pytest.approx(1e-4)
    in_bias = {id(p) for p in bias_group["params"]}
    names_in_bias = {n for n, p in named if id(p) in in_bias}
    assert names_in_bias == {n for n, _ in named if "bias" in n}
    in_proj = {n for n in names_in_bias if n.endswith("attn.in_proj_bias")}
    assert len(in_proj) == len(backbone.visual.transformer.resblocks) > 0
    assert is_bias("model.visual.transformer.resblocks.0.attn.in_proj_bias") and not is_bias("prompts.ctx")


def test_first_epoch_0_is_torch_cosine_annealing_stepped_after_each_epoch():
    """pyiqa's CLIP-IQA+ setting: CosineAnnealingLR(T_max=50, eta_min=0), stepped at every epoch end."""
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50, eta_min=0.0)
    want = []
    for _ in range(50):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    stage = StageConfig(kind="mos", train=["image"], epochs=50, optimizer=OptimizerConfig(name="adam", lr=2e-3),
                        schedule=ScheduleConfig(name="cosine", first_epoch=0, warmup_epochs=0, min_lr=0.0))
    assert [g[0] for g in _ftclip_lrs(stage)] == pytest.approx(want, rel=1e-9, abs=1e-18)
