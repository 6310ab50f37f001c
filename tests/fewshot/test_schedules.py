"""The references' learning-rate schedules against torch's schedulers stepped as the references step them."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler

from ftclip.errors import ConfigError
from ftclip.tasks.fewshot.methods import CLIP_LORA, COOP, coop_epochs, tip_adapter_defaults
from ftclip.tasks.fewshot.schedules import cosine_annealing_lr, dassl_cosine_lr, flyp_lr, lr_factor


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


@pytest.mark.parametrize("max_epoch", [50, 200])
def test_coop_schedule_is_dassls(max_epoch: int) -> None:
    opt = _sgd(COOP.lr)
    sched = _ConstantWarmup(opt, CosineAnnealingLR(opt, float(max_epoch)), COOP.warmup_epochs, COOP.warmup_lr)
    for epoch in range(max_epoch):
        assert opt.param_groups[0]["lr"] == pytest.approx(dassl_cosine_lr(epoch, COOP.lr, max_epoch), rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()  # CoOp: update_lr() after the last batch of every epoch
    assert dassl_cosine_lr(0, COOP.lr, max_epoch) == COOP.warmup_lr and dassl_cosine_lr(1, COOP.lr, max_epoch) == COOP.lr
    assert dassl_cosine_lr(max_epoch - 1, COOP.lr, max_epoch) > 0  # the cosine is cut one epoch short of 0


def test_per_iteration_cosine_is_torchs() -> None:
    total = CLIP_LORA.iterations(1)
    opt = _sgd(CLIP_LORA.lr)
    sched = CosineAnnealingLR(opt, total, eta_min=CLIP_LORA.min_lr)
    mine = LambdaLR(_sgd(CLIP_LORA.lr), lr_factor(cosine_annealing_lr, CLIP_LORA.lr, total_steps=total, eta_min=CLIP_LORA.min_lr))
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(cosine_annealing_lr(step, CLIP_LORA.lr, total, CLIP_LORA.min_lr), rel=1e-6)
        assert mine.get_last_lr()[0] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)
        opt.step()
        sched.step()
        mine.optimizer.step()
        mine.step()


def test_flyp_schedule_is_its_cosine_lr() -> None:
    base, warm, total = 1e-5, 500, 2000
    for step in (0, 1, 499, 500, 1000, 1999):
        if step < warm:
            ref = base * (step + 1) / warm
        else:
            ref = 0.5 * (1 + torch.cos(torch.tensor(torch.pi * (step - warm) / (total - warm), dtype=torch.float64))) * base
        assert flyp_lr(step, base, total, warm) == pytest.approx(float(ref), rel=1e-12)
    with pytest.raises(ConfigError, match="more steps"):
        flyp_lr(0, base, 100, 500)


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
