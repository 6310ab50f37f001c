"""The references' learning-rate schedules, as the bundled recipes spell them with ftclip's schedule table
(``ftclip/stages.py``), against torch's schedulers stepped as the references step them."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from ftclip.config import ScheduleConfig
from ftclip.errors import ConfigError
from ftclip.recipe import load_recipe
from ftclip.stages import lr_factor
from ftclip.tasks.fewshot.methods import CLIP_LORA, COOP, coop_epochs, tip_adapter_defaults


class _ConstantWarmup(LRScheduler):
    """Dassl's ConstantWarmupScheduler (dassl/optim/lr_scheduler.py), without the deprecated verbose flag."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


def _sgd(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("shots", [1, 16])
def test_coop_recipe_schedule_is_dassls(shots: int) -> None:
    stage = load_recipe("fewshot_coop", ["data.root=/d", f"data.shots={shots}"]).stages.coop
    epochs, base = int(stage.epochs), float(stage.optimizer.lr)
    opt = _sgd(base)
    sched = _ConstantWarmup(opt, CosineAnnealingLR(opt, float(epochs)), COOP.warmup_epochs, COOP.warmup_lr)
    for epoch in range(epochs):
        assert base * lr_factor(stage.schedule, base, epochs, epoch) == pytest.approx(opt.param_groups[0]["lr"],
                                                                                       rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()  # CoOp: update_lr() after the last batch of every epoch
    assert base * lr_factor(stage.schedule, base, epochs, epochs - 1) > 0  # cut one epoch short of 0


def test_clip_lora_recipe_schedule_is_torchs_cosine_annealing_per_iteration() -> None:
    stage = load_recipe("fewshot_clip_lora", ["data.root=/d", "data.shots=1"]).stages.clip_lora
    total, base = int(stage.max_steps), float(stage.optimizer.lr)
    assert stage.schedule.interval == "step" and total == 500
    opt = _sgd(base)
    sched = CosineAnnealingLR(opt, total, eta_min=CLIP_LORA.min_lr)
    for step in range(total):
        assert base * lr_factor(stage.schedule, base, total, step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
        opt.step()
        sched.step()


def test_warmup_cosine_is_flyps_cosine_lr() -> None:
    cfg = OmegaConf.structured(ScheduleConfig(name="warmup_cosine", interval="step", warmup_epochs=500, min_lr=0.0,
                                              first_epoch=0))
    base, total = 1e-5, 2000
    for step in (0, 1, 499, 500, 1000, 1999):  # FLYP src/models/utils.py cosine_lr
        ref = base * (step + 1) / 500 if step < 500 else 0.5 * (1 + math.cos(math.pi * (step - 500) / 1500)) * base
        assert base * lr_factor(cfg, base, total, step) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ConfigError, match="more steps"):
        lr_factor(cfg, base, 100, 0)


def test_epochs_by_shots_and_tip_adapter_configs() -> None:
    assert [coop_epochs(k) for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert coop_epochs(16, "ImageNet") == 50
    assert CLIP_LORA.iterations(16) == 8000
    with pytest.raises(ConfigError, match="data.shots must be an integer >= 1"):
        coop_epochs(0)
    pets = tip_adapter_defaults("OxfordPets")
    assert (pets.init_alpha, pets.search_scale, pets.epochs) == (1.17, (7.0, 3.0), 20)
    assert tip_adapter_defaults("EuroSAT").epochs == 100
    assert tip_adapter_defaults(None) == tip_adapter_defaults("my data")
