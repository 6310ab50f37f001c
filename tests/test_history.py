"""The stage history (logs/<stage>/metrics.csv) holds every row once across a resume, from any kill point;
trainer.logger builds the named loggers (W&B offline) or names the missing extra."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ftclip.errors import ConfigError
from ftclip.logs import StageHistory, build_loggers, check_loggers, format_seconds, read_history


class FakeTrainer(SimpleNamespace):
    def __init__(self):
        super().__init__(global_step=0, current_epoch=0, sanity_checking=False, state=SimpleNamespace(fn="fit"),
                         optimizers=[SimpleNamespace(param_groups=[{"lr": 0.5}])], callback_metrics={})


def _steps(history, trainer, module, losses, epoch_ends=()):
    for loss in losses:
        trainer.global_step += 1
        module.step_log = {"train/loss": torch.tensor(loss)}
        history.on_train_batch_end(trainer, module, None, None, 0)
        if trainer.global_step in epoch_ends:
            trainer.callback_metrics = {"val/mAP": torch.tensor(0.1 * trainer.global_step), "train/loss": 0.0}
            history.on_validation_end(trainer, module)
            history.on_train_epoch_end(trainer, module)
            trainer.current_epoch += 1
            history.on_train_epoch_start(trainer, module)


def _start(history, trainer, module):
    history.on_fit_start(trainer, module)
    history.on_train_start(trainer, module)
    history.on_train_epoch_start(trainer, module)


LOSSES = [4.0, 3.0, 2.5, 2.0, 1.0, 0.5]
EPOCH_ENDS = (3, 6)


def _uninterrupted(path):
    trainer, module = FakeTrainer(), SimpleNamespace(step_log={})
    history = StageHistory(path, "s", epochs=2, log_every=1)
    _start(history, trainer, module)
    _steps(history, trainer, module, LOSSES, EPOCH_ENDS)
    return path.read_text()


@pytest.mark.parametrize("kill_after", [1, 2, 3, 4, 5])
def test_a_resume_from_any_checkpoint_keeps_every_row_once(tmp_path, kill_after):
    expected = _uninterrupted(tmp_path / "ref.csv")
    path = tmp_path / "run.csv"
    trainer, module = FakeTrainer(), SimpleNamespace(step_log={})
    first = StageHistory(path, "s", epochs=2, log_every=1)
    _start(first, trainer, module)
    _steps(first, trainer, module, LOSSES[:kill_after], EPOCH_ENDS)
    state = first.state_dict()  # the checkpoint of step `kill_after`
    _steps(first, trainer, module, LOSSES[kill_after:kill_after + 2], EPOCH_ENDS)  # rows after it, then the kill

    resumed_trainer = FakeTrainer()
    resumed_trainer.global_step = kill_after
    resumed_trainer.current_epoch = sum(kill_after >= end for end in EPOCH_ENDS)
    second = StageHistory(path, "s", epochs=2, log_every=1, resuming=True)
    second.load_state_dict(state)
    _start(second, resumed_trainer, module)
    _steps(second, resumed_trainer, module, LOSSES[kill_after:], EPOCH_ENDS)
    assert path.read_text() == expected
    means = [r["train/loss_epoch"] for r in read_history(path) if "train/loss_epoch" in r]
    assert means == [sum(LOSSES[:3]) / 3, sum(LOSSES[3:]) / 3]  # epoch means span the resume


def test_a_fresh_attempt_drops_rows_of_one_that_never_reached_a_checkpoint(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("epoch,step,train/loss\n0,1,9.0\n")
    history = StageHistory(path, "s", epochs=1, log_every=1)  # not resuming
    trainer, module = FakeTrainer(), SimpleNamespace(step_log={})
    _start(history, trainer, module)
    _steps(history, trainer, module, [1.0])
    assert [r["train/loss"] for r in read_history(path)] == [1.0]


def test_a_checkpoint_without_history_state_appends(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("epoch,step,train/loss\n0,1,9.0\n")
    history = StageHistory(path, "s", epochs=1, log_every=1, resuming=True)  # no load_state_dict: an older run
    trainer, module = FakeTrainer(), SimpleNamespace(step_log={})
    trainer.global_step = 1
    _start(history, trainer, module)
    _steps(history, trainer, module, [1.0])
    assert [r["train/loss"] for r in read_history(path)] == [9.0, 1.0]


def test_seconds_survive_a_resume():
    history = StageHistory("unused.csv", "s", epochs=1, log_every=1, write=False)
    history.load_state_dict({"rows": 0, "seconds": 100.0})
    history.on_fit_start(FakeTrainer(), None)
    assert 100.0 <= history.seconds < 110.0


def test_progress_line_per_epoch(tmp_path):
    lines = []
    history = StageHistory(tmp_path / "h.csv", "image", epochs=30, log_every=1, on_epoch=lines.append)
    trainer, module = FakeTrainer(), SimpleNamespace(step_log={})
    _start(history, trainer, module)
    _steps(history, trainer, module, [2.0, 1.0], epoch_ends=(2,))
    assert len(lines) == 1 and lines[0].startswith("[image] epoch 1/30  loss 1.5000  lr 0.5  mAP 0.2000  ")


def test_seconds_are_printed_as_durations():
    from ftclip.engine import format_metrics

    assert format_seconds(42.66) == "42.7s" and format_seconds(223) == "3m43s" and format_seconds(3725) == "1h02m"
    assert format_metrics({"mAP": 0.3125, "train_seconds": 42.66, "best/epoch": 3}) == \
        "mAP=0.3125  train_seconds=42.7s  best/epoch=3"


# ---------------------------------------------------------------------------------------- loggers
def test_logger_names_are_checked():
    from ftclip.config import LOGGERS
    from ftclip.logs import PACKAGES

    assert set(PACKAGES) == set(LOGGERS)  # every name the schema allows has its package entry
    assert check_loggers("csv") == ["csv"]
    with pytest.raises(ConfigError, match=r"trainer.logger names unknown logger\(s\) \['neptune'\]"):
        check_loggers(["csv", "neptune"])


def test_a_missing_logger_package_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"trainer.logger=mlflow needs the mlflow package.*pip install 'ftclip\[mlflow\]'"):
        check_loggers(["mlflow"])


def test_wandb_is_offline_unless_asked(monkeypatch, tmp_path):
    import importlib.util

    import lightning.pytorch.loggers as pl_loggers

    made = []

    class FakeWandb:
        def __init__(self, **kwargs):
            made.append(kwargs)

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "wandb" else real(name, *a))
    monkeypatch.setattr(pl_loggers, "WandbLogger", FakeWandb)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    build_loggers(["wandb"], tmp_path, "demo", "image")
    monkeypatch.setenv("WANDB_MODE", "online")
    build_loggers("wandb", tmp_path, "demo", "image")
    assert [m["offline"] for m in made] == [True, False]
    assert made[0]["save_dir"] == str(tmp_path) and made[0]["project"] == "demo"


def test_the_engine_refuses_a_missing_logger_before_any_data(tmp_path, monkeypatch, capsys):
    import importlib.util

    from ftclip.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code = main(["fit", "recipes/demo/reid_synthetic.yaml", f"data.root={tmp_path / 'missing'}", "data.synthetic=false",
                 f"run.dir={tmp_path / 'run'}", "trainer.logger=[csv,wandb]"])
    assert code == 2 and "pip install 'ftclip[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_epoch_shorter_than_the_loader_len_is_said_once(tmp_path, capsys):
    history = StageHistory(tmp_path / "h.csv", "image", epochs=4, log_every=1)
    trainer, module = FakeTrainer(), SimpleNamespace(step_log={})
    trainer.num_training_batches, trainer.max_steps = 3, -1
    _start(history, trainer, module)
    for batches in (3, 2, 2):  # a full epoch, then two that end a batch early
        for _ in range(batches):
            trainer.global_step += 1
            module.step_log = {"train/loss": torch.tensor(1.0)}
            history.on_train_batch_end(trainer, module, None, None, 0)
        history.on_train_epoch_end(trainer, module)
        trainer.current_epoch += 1
    out = capsys.readouterr().out
    assert out.count("warning:") == 1
    assert "warning: [image] epoch 2 ended after 2 of the loader's len() = 3 batches: Lightning skips the " \
           "lr-schedule step and the evaluation" in out
