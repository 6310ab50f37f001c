"""A run's life under faults, driven through the real CLI in subprocesses (slow; docs/resilience.md).

One test per fault, each asserting the exit status, the one line, and that resuming afterwards ends
bit-identical to an uninterrupted run with the same seed:

* SIGTERM in stage 2 (a scheduler's preemption): the step's checkpoint, status 143;
* an unfinished run is refused by export / embed / score unless a finished stage is named;
* SIGINT (Ctrl-C), and a second process on the same run directory (the lock);
* divergence (lr=1e6): no checkpoint of exploded weights, and the advice (lower lr on --resume) works;
  a mid-stage lr override replaces the restored optimizer settings;
* a full disk: a 3 MB file system, and one that fills after a good checkpoint (tmpfs, needs root);
* SLURM's requeue signal (Lightning's SLURMEnvironment, a fake `scontrol`);
* DDP (2 CPU processes, gloo): SIGTERM to rank 0 stops every rank after the same step.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_reid_overrides
from ftclip.cli import main

pytestmark = pytest.mark.slow

RECIPE = "recipes/demo/reid_synthetic.yaml"
REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^interrupted at stage (\w+), epoch (\d+), step (\d+); resume with: ftclip fit --resume (\S+)(; .*)?$")


def _overrides(root, run_dir, **extra) -> list[str]:
    values = {"trainer.deterministic": "true", "trainer.ckpt_every_n_steps": "1", "eval.before": "false",
              "stages.prompts.epochs": "1", "stages.image.epochs": "3", "trainer.enable_progress_bar": "false"}
    values.update({k: str(v) for k, v in extra.items()})
    return tiny_reid_overrides(root, run_dir, **values)


def _env(**extra) -> dict:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=str(REPO))
    env.pop("FTCLIP_RUN_DIR", None)
    env.update(extra)
    return env


class Proc:
    """``python -m ftclip ARGV`` in a subprocess, its output in files (no pipe to fill)."""

    def __init__(self, folder: Path, name: str, argv: list[str], env: dict | None = None, session: bool = False):
        self.out, self.err = folder / f"{name}.out", folder / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "ftclip", *argv], cwd=REPO, env=env or _env(),
                                          stdout=out, stderr=err, start_new_session=session)
        self.pid = self.popen.pid

    def wait(self, timeout: float = 900) -> int:
        return self.popen.wait(timeout)

    def running(self) -> bool:
        return self.popen.poll() is None

    def stderr(self) -> str:
        return self.err.read_text()

    def last_line(self) -> str:
        lines = [line for line in self.stderr().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def _wait_for(path: Path, proc: Proc, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.running() and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared; stderr: {proc.stderr()[-2000:]}"


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_weights(reference: Path, run: Path) -> None:
    ref, got = _ckpt(reference / "checkpoints" / "image" / "last.ckpt"), _ckpt(run / "checkpoints" / "image" / "last.ckpt")
    assert got["global_step"] == ref["global_step"]
    assert ref["state_dict"].keys() == got["state_dict"].keys()
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key


def _state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


def _interrupted_line(proc: Proc, run: Path) -> tuple[str, int, int, str]:
    match = LINE.match(proc.last_line())
    assert match, proc.stderr()[-3000:]
    stage, epoch, step, where, note = match.groups()
    assert where == str(run)
    return stage, int(epoch), int(step), (note or "").lstrip("; ")


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


@pytest.fixture(scope="module")
def reference(tiny_reid_root, tmp_path_factory) -> Path:
    """One uninterrupted run: what every interrupted-and-resumed run must end at."""
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(["fit", RECIPE, *_overrides(tiny_reid_root, run)]) == 0
    return run


@pytest.fixture(scope="module")
def sigterm_run(tiny_reid_root, tmp_path_factory):
    """The same run, sent SIGTERM as soon as stage 2 wrote a step checkpoint (tests resume copies of it)."""
    folder = tmp_path_factory.mktemp("sigterm")
    run = folder / "run"
    proc = Proc(folder, "fit", ["fit", RECIPE, *_overrides(tiny_reid_root, run)])
    _wait_for(run / "checkpoints" / "image" / "last.ckpt", proc)
    proc.popen.send_signal(signal.SIGTERM)
    return run, proc.wait(), proc


# --------------------------------------------------------------------------- 1. SIGTERM
def test_sigterm_in_stage_two_saves_that_step_exits_143_and_resumes_bit_identically(sigterm_run, reference, tmp_path):
    run, rc, proc = sigterm_run
    assert rc == 143
    stage, epoch, step, _ = _interrupted_line(proc, run)
    saved = _ckpt(run / "checkpoints" / "image" / "last.ckpt")
    total = _ckpt(reference / "checkpoints" / "image" / "last.ckpt")["global_step"]
    assert stage == "image" and (saved["epoch"], saved["global_step"]) == (epoch, step) and 0 < step < total
    assert "Received SIGTERM" not in proc.stderr()  # Lightning's handler did not act
    assert not (run / ".lock").exists() and not list(run.rglob("*.tmp"))
    state = _state(run)
    assert state["completed"] == ["prompts"] and state["stages"]["image"]["status"] == "interrupted"
    assert {k: state["interruptions"][-1][k] for k in ("stage", "epoch", "step", "signal")} == {
        "stage": "image", "epoch": epoch, "step": step, "signal": "SIGTERM"}

    copy = _copy(run, tmp_path / "run")
    assert main(["fit", "--resume", str(copy), "stages.image.optimizer.lr=0.001"]) == 0  # the recipe's lr: no change
    _assert_same_weights(reference, copy)
    assert _state(copy)["history"][-1]["overrides"] == ["stages.image.optimizer.lr=0.001"]
    assert "changes" not in _state(copy)["history"][-1]


def test_a_signal_at_an_epochs_last_step_lets_the_epoch_end_and_resumes_with_its_history(
        reference, tiny_reid_root, tmp_path, monkeypatch, capsys):
    """SIGTERM during the last step of stage 2's first epoch: the epoch ends (its history row and epoch-end
    checkpoint), the run stops as epoch 2 starts, and the resume ends bit-identical with the same history."""
    from ftclip.interrupts import StopAtStepEnd

    sent = []
    at_step = StopAtStepEnd.on_train_batch_end

    def signal_at_the_last_step(self, trainer, *args):
        if self.stage == "image" and not sent and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            sent.append(int(trainer.global_step))
            os.kill(os.getpid(), signal.SIGTERM)  # recorded by ftclip's handler, acted on below
        return at_step(self, trainer, *args)

    monkeypatch.setattr(StopAtStepEnd, "on_train_batch_end", signal_at_the_last_step)
    run = tmp_path / "run"
    assert main(["fit", RECIPE, *_overrides(tiny_reid_root, run)]) == 143
    match = LINE.match(capsys.readouterr().err.strip().splitlines()[-1])
    assert match and match.group(1) == "image" and (int(match.group(2)), int(match.group(3))) == (1, sent[0])
    assert _ckpt(run / "checkpoints" / "image" / "last.ckpt")["global_step"] == sent[0]
    monkeypatch.undo()
    assert main(["fit", "--resume", str(run)]) == 0
    _assert_same_weights(reference, run)
    history = (run / "logs" / "image" / "metrics.csv").read_text()
    assert history == (reference / "logs" / "image" / "metrics.csv").read_text()  # epoch 1's row is there once


# --------------------------------------------------------------------------- 2. unfinished runs
def test_unfinished_run_is_refused_by_export_embed_score_unless_a_finished_stage_is_named(
        sigterm_run, reference, tiny_reid_root, tmp_path, capsys):
    run, _, proc = sigterm_run
    _, epoch, step, _ = _interrupted_line(proc, run)
    copy = _copy(run, tmp_path / "run")
    export = Proc(tmp_path, "export", ["export", str(copy)])
    assert export.wait() == 2
    line = export.last_line()
    assert line == (f"ftclip: error: run {copy} is not finished: stage 'prompts' is finished, stage 'image' is "
                    f"interrupted at epoch {epoch}, step {step} (SIGTERM). Finish it with `ftclip fit --resume "
                    f"{copy}`, or pass --stage prompts to use the weights of the finished stage")
    assert not (copy / "export").exists()
    image = next((tiny_reid_root / "query").glob("*.jpg"))
    for argv in (["embed", str(copy), str(image), "--out", str(tmp_path / "f.npy")],
                 ["score", str(copy), str(image)],
                 ["export", str(copy), "--stage", "image"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert "is not finished" in capsys.readouterr().err, argv
    assert main(["export", str(copy), "--stage", "prompts", "--out", str(tmp_path / "prompts")]) == 0
    manifest = json.loads((tmp_path / "prompts" / "ftclip_export.json").read_text())
    assert manifest["stage"] == "prompts" and manifest["run_finished"] is False

    assert main(["fit", "--resume", str(copy)]) == 0  # `fit --resume RUN && export RUN` now exports the trained model
    _assert_same_weights(reference, copy)
    assert main(["export", str(copy)]) == 0
    manifest = json.loads((copy / "export" / "ftclip_export.json").read_text())
    assert manifest["stage"] == "image" and manifest["run_finished"] is True


# --------------------------------------------------------------------------- 3+4. SIGINT, and the lock
def test_sigint_and_a_second_process_on_the_same_run_directory(reference, tiny_reid_root, tmp_path):
    run = tmp_path / "run"
    first = Proc(tmp_path, "first", ["fit", RECIPE, *_overrides(tiny_reid_root, run)])
    _wait_for(run / ".lock", first)
    first.popen.send_signal(signal.SIGSTOP)  # held while the second one starts (the tiny run ends in seconds)
    try:
        second = Proc(tmp_path, "second", ["fit", "--resume", str(run)])
        assert second.wait(120) == 2
    finally:
        first.popen.send_signal(signal.SIGCONT)
    assert re.fullmatch(rf"ftclip: error: run directory {run} is in use by ftclip fit \(pid {first.pid} on host \S+, "
                        rf"since \S+\) \({run}/.lock\); wait for it to finish, or stop it \(kill {first.pid}: it saves "
                        r"a checkpoint and exits\), then run the command again", second.last_line()), second.stderr()
    assert first.running(), "the first process should still be training"
    assert "history" not in _state(run) if (run / "state.json").exists() else True  # the second one wrote nothing

    _wait_for(run / "checkpoints" / "image" / "last.ckpt", first)
    first.popen.send_signal(signal.SIGINT)
    assert first.wait() == 130
    stage, epoch, step, _ = _interrupted_line(first, run)
    assert stage == "image" and _ckpt(run / "checkpoints" / "image" / "last.ckpt")["global_step"] == step
    assert not (run / ".lock").exists() and "Traceback" not in first.stderr()
    assert main(["fit", "--resume", str(run)]) == 0
    _assert_same_weights(reference, run)


# --------------------------------------------------------------------------- 5. divergence
def test_divergence_writes_no_exploded_checkpoint_and_the_advice_resumes_bit_identically(
        reference, tiny_reid_root, tmp_path):
    run = tmp_path / "run"
    proc = Proc(tmp_path, "fit", ["fit", RECIPE, *_overrides(tiny_reid_root, run, **{"stages.image.optimizer.lr": "1e6"})])
    assert proc.wait() == 2
    line = proc.last_line()
    assert line.startswith("ftclip: error: stage 'image': the weights exploded in the update of step 1 (epoch 0)")
    assert "No checkpoint of stage 'image' was written yet, so a resume starts the stage again" in line
    assert line.endswith(f"resume: ftclip fit --resume {run} stages.image.optimizer.lr=100000")
    for ckpt in run.rglob("*.ckpt"):  # only stage 1's; nothing diverged was written
        assert all(torch.isfinite(v).all() for v in _ckpt(ckpt)["state_dict"].values() if v.is_floating_point())
    assert not (run / "checkpoints" / "image" / "last.ckpt").exists()
    assert _state(run)["stages"]["image"] == {**_state(run)["stages"]["image"], "status": "failed", "reason": "diverged"}

    assert main(["fit", "--resume", str(run), "stages.image.optimizer.lr=0.001"]) == 0  # the advice, with a sane lr
    _assert_same_weights(reference, run)
    entry = _state(run)["history"][-1]
    assert entry["changes"] == {"stages.image.optimizer.lr": [1e6, 0.001]}
    assert "lr: 0.001" in (run / "config.yaml").read_text()


def test_a_lower_lr_on_resume_replaces_the_restored_optimizer_settings_mid_stage(sigterm_run, tmp_path, capsys):
    from ftclip.recipe import load_saved_config
    from ftclip.stages import lr_factor

    run, _, proc = sigterm_run
    _, epoch, step, _ = _interrupted_line(proc, run)
    copy = _copy(run, tmp_path / "run")
    restored = _ckpt(copy / "checkpoints" / "image" / "last.ckpt")
    assert main(["fit", "--resume", str(copy), "stages.image.optimizer.lr=0.0001"]) == 0
    out = capsys.readouterr().out
    assert "resume overrides: stages.image.optimizer.lr 0.001 -> 0.0001" in out
    assert "the config replaces the restored optimizer settings: group 0 base lr 0.001 -> 0.0001" in out
    cfg = load_saved_config(copy / "config.yaml")
    schedule, epochs = cfg.stages.image.schedule, int(cfg.stages.image.epochs)
    with open(copy / "logs" / "image" / "metrics.csv", newline="") as fh:  # the history: group 0's lr per epoch
        logged = {int(row["epoch"]): float(row["lr"]) for row in csv.DictReader(fh) if row.get("lr")}
    resumed = {e: lr for e, lr in logged.items() if e > epoch}
    assert resumed and all(lr == 1e-3 * lr_factor(schedule, 1e-3, epochs, e)  # rows before it: as trained
                           for e, lr in logged.items() if e < epoch)
    # the interrupted epoch trained at both: its row keeps the lr it started with (a mid-epoch resume does not
    # start the epoch again), its remaining steps ran at the new one (the retune line above)
    assert logged[epoch] in (1e-3 * lr_factor(schedule, 1e-3, epochs, epoch), 1e-4 * lr_factor(schedule, 1e-4, epochs, epoch))
    for e, base in resumed.items():  # the new lr, at the schedule's position
        assert base == 1e-4 * lr_factor(schedule, 1e-4, epochs, e), e
    final = _ckpt(copy / "checkpoints" / "image" / "last.ckpt")
    assert final["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 1e-4
    bias_base = 1e-4 * cfg.stages.image.optimizer.bias_lr_factor  # the bias group: x bias_lr_factor
    assert final["optimizer_states"][0]["param_groups"][1]["initial_lr"] == bias_base
    steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert steps == {final["global_step"]}  # Adam's moments continued from the checkpoint, not restarted
    assert {int(s["step"]) for s in restored["optimizer_states"][0]["state"].values()} == {step}


# --------------------------------------------------------------------------- 6. disk full
@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of a given size (``mount -t tmpfs`` needs root); ``resize(mb)`` remounts it larger."""
    mount = tmp_path / "fs"
    mount.mkdir()

    def make(mb: float):
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(mb * 1024)}k", "tmpfs", str(mount)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()}); "
                        "tests/test_run_state.py covers the disk-full messages with an injected ENOSPC")
        return mount

    def resize(mb: float) -> None:
        subprocess.run(["mount", "-o", f"remount,size={int(mb * 1024)}k", str(mount)], check=True)

    make.resize = resize
    yield make
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("size_mb, resumes_from", [(3, None), (20, "prompts")], ids=["3MB", "fills-after-a-checkpoint"])
def test_a_full_disk_says_the_run_is_intact_and_what_resumes_it(size_mb, resumes_from, small_fs, reference,
                                                               tiny_reid_root, tmp_path):
    run = small_fs(size_mb) / "run"
    proc = Proc(tmp_path, "fit", ["fit", RECIPE, *_overrides(tiny_reid_root, run)])
    assert proc.wait() == 2
    err = proc.stderr()
    assert "Traceback" not in err and re.search(r"warning: .* free, but stage 'prompts' needs about [\d.]+ MB", err)
    line = proc.last_line()
    assert line.startswith("ftclip: error: no space left on the device writing ") and "the run is intact" in line
    assert re.search(rf"the next checkpoint needs about 1[34]\.\d MB free on the file system of {run} "
                     rf"\([\d.]+ [KM]?B free now: free at least [\d.]+ MB more\), then `ftclip fit --resume {run}`$",
                     line), line
    assert not list(run.rglob("*.tmp"))
    if resumes_from is None:
        assert "restarts from its first step (no checkpoint was written yet)" in line
    else:
        good = run / "checkpoints" / resumes_from / "last.ckpt"
        assert f"resumes from {good} (stage {resumes_from}, epoch 0, step 1)" in line
        assert _ckpt(good)["global_step"] == 1  # the good checkpoint loads
    small_fs.resize(96)
    assert main(["fit", "--resume", str(run)]) == 0
    _assert_same_weights(reference, run)


# --------------------------------------------------------------------------- 7. SLURM requeue
def test_slurm_requeue_signal_saves_the_step_and_requeues_the_job(reference, tiny_reid_root, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    (bin_dir / "scontrol").chmod(0o755)
    log = tmp_path / "scontrol.log"
    env = _env(SLURM_NTASKS="1", SLURM_JOB_ID="4242", SLURM_JOB_NAME="ftclip_test", SLURM_PROCID="0",
               SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_NODELIST="localhost", SCONTROL_LOG=str(log),
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    run = tmp_path / "run"
    proc = Proc(tmp_path, "fit", ["fit", RECIPE, *_overrides(tiny_reid_root, run)], env=env)
    _wait_for(run / "checkpoints" / "image" / "last.ckpt", proc)
    proc.popen.send_signal(signal.SIGUSR1)
    assert proc.wait() == 128 + signal.SIGUSR1
    stage, _, step, note = _interrupted_line(proc, run)
    assert stage == "image" and note == "SLURM job 4242 requeued" and log.read_text() == "requeue 4242\n"
    assert _ckpt(run / "checkpoints" / "image" / "last.ckpt")["global_step"] == step
    assert not list(run.rglob("hpc_ckpt_*")) and not list(REPO.glob("hpc_ckpt_*"))  # Lightning's handler did not act
    assert main(["fit", "--resume", str(run)]) == 0
    _assert_same_weights(reference, run)


# --------------------------------------------------------------------------- 8. DDP
def test_ddp_sigterm_to_rank_zero_stops_every_rank_after_the_same_step(tiny_reid_root, tmp_path):
    ddp = {"trainer.strategy": "ddp", "trainer.devices": 2, "trainer.accelerator": "cpu", "data.check_images": "false",
           "stages.image.epochs": 4}
    ref = tmp_path / "ref"
    assert Proc(tmp_path, "ref", ["fit", RECIPE, *_overrides(tiny_reid_root, ref, **ddp)]).wait() == 0

    run = tmp_path / "run"
    proc = Proc(tmp_path, "fit", ["fit", RECIPE, *_overrides(tiny_reid_root, run, **ddp)], session=True)
    _wait_for(run / "checkpoints" / "image" / "last.ckpt", proc)
    proc.popen.send_signal(signal.SIGTERM)  # to rank 0 only, as a scheduler signals the launched process
    assert proc.wait() == 143
    deadline = time.time() + 120
    while time.time() < deadline:  # the worker rank ends too (it would hang in a collective if it had not stopped)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("a DDP worker process outlived rank 0")
    stage, _, step, _ = _interrupted_line(proc, run)
    assert stage == "image" and sum(line.startswith("interrupted at") for line in proc.stderr().splitlines()) == 1
    total = _ckpt(ref / "checkpoints" / "image" / "last.ckpt")["global_step"]
    assert 0 < _ckpt(run / "checkpoints" / "image" / "last.ckpt")["global_step"] == step < total

    assert Proc(tmp_path, "resume", ["fit", "--resume", str(run)]).wait() == 0
    _assert_same_weights(ref, run)
