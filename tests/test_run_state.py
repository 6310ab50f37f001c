"""A run's state under faults, piece by piece (fast): the run-directory lock, the finished-run rule of
commands that read a run, --resume overrides, the optimizer retune on resume, the pre-save weight
check, disk-full writes and the signal handlers. The end-to-end behaviour (real signals, a small
file system, two processes on one run) is in tests/test_faults.py (slow)."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import tiny_reid_overrides
from ftclip.cli import main
from ftclip.errors import ConfigError, DiskFullError, DivergedError, FtclipError, Interrupted

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/demo/reid_synthetic.yaml"


def _run(tmp_path, root=None, **extra):
    from ftclip.recipe import load_recipe
    from ftclip.runs import RunDir

    cfg = load_recipe(RECIPE, tiny_reid_overrides(root or tmp_path / "no-data", tmp_path / "run", **extra))
    return RunDir.create(cfg), cfg


def _fake_checkpoint(run, stage: str) -> Path:
    path = run.checkpoint_dir(stage) / "last.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "global_step": 4, "state_dict": {}}, path)
    return path


# --------------------------------------------------------------------------- the lock
def test_lock_refuses_a_second_process_naming_it_and_a_dead_holders_lock_is_taken_over(tmp_path):
    from ftclip.lockfile import RunLock

    path = tmp_path / ".lock"
    code = ("import sys, time; from ftclip.lockfile import RunLock; RunLock(sys.argv[1]).acquire('ftclip fit'); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(FtclipError) as info:
            RunLock(path).acquire("ftclip fit --resume")
        message = str(info.value)
        assert "\n" not in message and f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert "ftclip fit" in message and f"kill {holder.pid}" in message
        assert RunLock(path).holder()["pid"] == holder.pid
    finally:
        holder.kill()  # SIGKILL: no release; the kernel drops the flock
        holder.wait()
    assert path.is_file() and RunLock(path).holder() is None  # left behind, but stale
    lock = RunLock(path).acquire("ftclip fit --resume")
    assert lock.stale["pid"] == holder.pid
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not path.exists()  # released on exit


def test_lock_without_flock_uses_the_file_and_its_pid(tmp_path, monkeypatch):
    import ftclip.lockfile as lockfile

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lockfile.fcntl, "flock", no_flock)
    path = tmp_path / ".lock"
    first = lockfile.RunLock(path).acquire("ftclip fit")
    with pytest.raises(FtclipError, match=f"pid {os.getpid()}"):
        lockfile.RunLock(path).acquire("ftclip fit --resume")
    first.release()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "command": "ftclip fit"}))
    taken = lockfile.RunLock(path).acquire("ftclip fit --resume")
    assert taken.stale["pid"] == int(dead.stdout)
    taken.release()
    assert not path.exists()


# --------------------------------------------------------------------------- the finished-run rule
def test_unfinished_run_is_refused_naming_what_is_done_and_a_finished_stage_can_be_asked_for(tmp_path, capsys):
    from ftclip.runs import select_checkpoint

    run, _ = _run(tmp_path)
    prompts = _fake_checkpoint(run, "prompts")
    run.mark_completed("prompts", epoch=1, step=4)
    _fake_checkpoint(run, "image")
    run.record_interruption("image", 1, 7, "SIGTERM")

    with pytest.raises(FtclipError) as info:
        select_checkpoint(run)
    message = str(info.value)
    assert "stage 'prompts' is finished" in message and "stage 'image' is interrupted at epoch 1, step 7 (SIGTERM)" in message
    assert "--stage prompts" in message and f"ftclip fit --resume {run.path}" in message
    assert select_checkpoint(run, "prompts") == ("prompts", prompts)
    with pytest.raises(FtclipError, match="stage 'image' of run .* is not finished"):
        select_checkpoint(run, "image")
    with pytest.raises(FtclipError, match="has no stage 'nope'; its stages: prompts, image"):
        select_checkpoint(run, "nope")

    for argv in (["export", str(run.path)], ["embed", str(run.path), str(tmp_path), "--out", str(tmp_path / "f.npy")],
                 ["score", str(run.path), str(tmp_path)], ["predict", str(run.path), str(tmp_path)]):
        capsys.readouterr()
        (tmp_path / "x.png").write_bytes(b"")
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "is not finished" in err and "--stage prompts" in err, argv
    assert not (run.path / "export").exists()


def test_a_stage_marked_running_without_a_holder_is_said_to_have_stopped(tmp_path):
    from ftclip.runs import select_checkpoint

    run, _ = _run(tmp_path)
    run.set_stage_status("prompts", "running")
    with pytest.raises(FtclipError, match="'prompts' is stopped while training .its process ended"):
        select_checkpoint(run)
    with run.lock("ftclip fit"):
        with pytest.raises(FtclipError, match=f"'prompts' is being trained now by ftclip fit .pid {os.getpid()}"):
            select_checkpoint(run)


def test_state_json_keeps_sections_it_does_not_own(tmp_path):
    run, _ = _run(tmp_path)
    run.state_path.write_text(json.dumps({"completed": [], "hashes": {"x": "abc"}}))
    run.set_stage_status("prompts", "running")
    run.mark_completed("prompts", epoch=0, step=3)
    run.record_history("ftclip fit --resume", ["stages.image.optimizer.lr=1e-4"], {"stages.image.optimizer.lr": [1, 2]})
    state = json.loads(run.state_path.read_text())
    assert state["hashes"] == {"x": "abc"} and state["completed"] == ["prompts"]
    assert state["stages"]["prompts"]["status"] == "finished" and state["history"][0]["pid"] == os.getpid()


def test_resume_of_a_finished_run_says_there_is_nothing_to_do_without_reading_data(tmp_path, capsys):
    run, _ = _run(tmp_path)  # its data.root does not exist: reading the data would fail
    for stage in ("prompts", "image"):
        _fake_checkpoint(run, stage)
        run.mark_completed(stage)
    assert main(["fit", "--resume", str(run.path)]) == 0
    assert "is finished (stages prompts, image): nothing to do" in capsys.readouterr().out
    assert main(["fit", "--resume", str(run.path), "stages.image.optimizer.lr=1e-5"]) == 2
    assert "is finished, so nothing is resumed" in capsys.readouterr().err
    assert not run.lock_path.exists()


# --------------------------------------------------------------------------- --resume overrides
def test_resume_overrides_accept_optimizer_and_schedule_keys_of_unfinished_stages_only(tmp_path):
    from ftclip.runs import resume_config

    run, cfg = _run(tmp_path)
    run.mark_completed("prompts")
    new, changes = resume_config(run, cfg, ["stages.image.optimizer.lr=1e-5", "stages.image.schedule.gamma=0.5",
                                            "stages.image.optimizer.weight_decay=1e-4"])
    assert new.stages.image.optimizer.lr == 1e-5 and new.stages.image.schedule.gamma == 0.5
    assert changes == {"stages.image.optimizer.lr": [cfg.stages.image.optimizer.lr, 1e-5],
                       "stages.image.schedule.gamma": [cfg.stages.image.schedule.gamma, 0.5]}
    assert cfg.stages.image.optimizer.lr != 1e-5  # the run's own config is not touched
    refused = {
        "data.batch_size=4": "would change what they were trained with",
        "stages.image.epochs=9": "would change what they were trained with",
        "stages.image.optimizer.name=sgd": "restored optimizer state belongs to the optimizer the stage started with",
        "stages.prompts.optimizer.lr=1e-5": "stage 'prompts' is finished",
        "stages.nope.optimizer.lr=1e-5": "has no stage 'nope'",
        "stages.image.schedule.speed=2": "'speed' is not a schedule key",
        "stages.image.schedule.interval=step": "the restored schedule counts epochs since the stage began",
        "stages.image.optimizer.lr=-1": "stages.image.optimizer.lr=-1.0 is not allowed",
    }
    for item, reason in refused.items():
        with pytest.raises(ConfigError) as info:
            resume_config(run, cfg, [item])
        assert reason in str(info.value), item


def test_the_resumable_optimizer_keys_are_keys_of_the_schema():
    from ftclip.config import OptimizerConfig
    from ftclip.runs import RESUMABLE_OPTIMIZER_KEYS

    assert set(RESUMABLE_OPTIMIZER_KEYS) <= set(OptimizerConfig.__dataclass_fields__)


def test_resume_with_a_recipe_is_refused(tmp_path, capsys):
    run, _ = _run(tmp_path)
    assert main(["fit", "--resume", str(run.path), RECIPE]) == 2
    assert "not a recipe" in capsys.readouterr().err


# --------------------------------------------------------------------------- retune on resume
def _adam(cfg_opt, cfg_sched, epochs):
    from ftclip.stages import build_optimizer, build_scheduler

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(3, 2))  # names 0.weight, 0.bias: a base and a bias group
    opt = build_optimizer(list(layer.named_parameters()), cfg_opt)
    return layer, opt, build_scheduler(opt, cfg_sched, epochs)


def test_retune_puts_the_config_on_a_restored_optimizer_at_the_schedule_position():
    from ftclip.config import OptimizerConfig, ScheduleConfig
    from ftclip.stages import lr_factor, retune

    old_opt = OmegaConf.structured(OptimizerConfig(lr=1e-3, bias_lr_factor=2.0))
    sched = OmegaConf.structured(ScheduleConfig(name="cosine", warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-7))
    layer, opt, scheduler = _adam(old_opt, sched, 5)
    for _ in range(4):  # 4 epochs: one step each, then the epoch's scheduler step
        layer(torch.ones(1, 3)).sum().backward()
        opt.step()
        scheduler.step()
    saved_opt, saved_sched = opt.state_dict(), scheduler.state_dict()

    def restored(opt_cfg):  # what Lightning does: build from the (new) config, then load the saved state
        _, o, s = _adam(opt_cfg, sched, 5)
        o.load_state_dict(saved_opt)
        s.load_state_dict(saved_sched)
        return o, s

    o, s = restored(old_opt)
    before = [dict((k, v) for k, v in g.items() if k != "params") for g in o.param_groups]
    assert retune(o, s, old_opt) == []  # the same config changes no value: resume stays bit-identical
    assert [dict((k, v) for k, v in g.items() if k != "params") for g in o.param_groups] == before

    new_opt = OmegaConf.structured(OptimizerConfig(lr=1e-5, bias_lr_factor=2.0, weight_decay=0.0))
    o, s = restored(new_opt)
    assert o.param_groups[0]["lr"] == 1e-3 * lr_factor(sched, 1e-3, 5, 4)  # the restored lr wins
    changes = retune(o, s, new_opt)
    assert any(c.startswith("group 0 base lr 0.001 -> 1e-05") for c in changes)
    assert s.last_epoch == 4
    assert o.param_groups[0]["lr"] == 1e-5 * lr_factor(sched, 1e-5, 5, 4)
    assert o.param_groups[1]["lr"] == 2e-5 * lr_factor(sched, 2e-5, 5, 4)  # the bias group, on its own base
    assert [g["weight_decay"] for g in o.param_groups] == [0.0, 0.0]
    assert torch.equal(o.state_dict()["state"][0]["exp_avg"], saved_opt["state"][0]["exp_avg"])  # moments kept
    s.step()  # the next epoch follows the new base lr
    assert o.param_groups[0]["lr"] == 1e-5 * lr_factor(sched, 1e-5, 5, 5)


# --------------------------------------------------------------------------- the pre-save check
@pytest.fixture
def toy_module(monkeypatch):
    from ftclip.recipe import validate
    from ftclip.tasks import TASKS, get_task

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.setitem(TASKS, "toy", "toy_task")
    cfg = validate(OmegaConf.create({
        "task": "toy", "name": "toy", "data": {"root": "/nowhere"},
        "model": {"name": "ftclip-tiny-vit", "image_size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3},
        "stages": {"align": {"kind": "align", "train": ["image"]}}}), "toy")
    module = get_task("toy").build_module(cfg, {})
    module.set_stage("align", cfg.stages.align)
    module.on_train_start()
    yield module
    sys.modules.pop("toy_task", None)


def test_a_checkpoint_with_nan_or_exploded_weights_is_never_written(toy_module):
    checkpoint = {"state_dict": toy_module.state_dict()}
    toy_module.on_save_checkpoint(checkpoint)  # fine weights pass
    assert checkpoint["ftclip"]["weight_scale"]["stage"] == "align"

    name, param = next((n, p) for n, p in toy_module.named_parameters() if p.requires_grad and p.dim() == 2)
    with torch.no_grad():
        param.mul_(5000.0 / max(float(param.abs().max()), 1e-6))  # finite, but 5000 x a weight of scale <= 1
    with pytest.raises(DivergedError, match=f"exploded .* max \\|w\\| of {name} went from .* to 5e\\+03"):
        toy_module.on_save_checkpoint({"state_dict": toy_module.state_dict()})
    toy_module.cfg.trainer.max_weight_growth = 0.0  # off: only NaN/inf stop
    toy_module.on_save_checkpoint({"state_dict": toy_module.state_dict()})
    with torch.no_grad():
        param[0, 0] = float("nan")
    with pytest.raises(DivergedError, match=f"not finite .*NaN/inf in {name}.*No checkpoint of stage 'align'"):
        toy_module.on_save_checkpoint({"state_dict": toy_module.state_dict()})


# --------------------------------------------------------------------------- disk full
def test_a_full_disk_during_a_write_is_one_error_and_leaves_the_old_file(tmp_path):
    from ftclip.io import AtomicCheckpointIO, atomic_write, atomic_write_text, disk_full_cause

    target = atomic_write_text(tmp_path / "state.json", "old")

    def full(tmp):
        with open(tmp, "w") as fh:
            fh.write("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=f"no space left on the device writing {target} .* free"):
        atomic_write(target, full)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]

    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    wrapped.__context__ = OSError(errno.ENOSPC, "No space left on device")  # what torch.save raises
    assert disk_full_cause(wrapped) is wrapped.__context__
    assert disk_full_cause(RuntimeError("other")) is None

    class Boom(dict):
        def __reduce__(self):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

    with pytest.raises(DiskFullError):
        AtomicCheckpointIO().save_checkpoint({"x": Boom()}, tmp_path / "last.ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# --------------------------------------------------------------------------- signals
def test_a_signal_outside_training_steps_stops_at_once_and_handlers_come_back():
    from ftclip.interrupts import handle_signals

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        with handle_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted long before
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before
    stop = Interrupted(signal.SIGINT, stage="image", epoch=1, step=7, run="/r")
    assert stop.exit_code == 130 and stop.line() == "interrupted at stage image, epoch 1, step 7; resume with: ftclip fit --resume /r"
