"""Resume: a run killed with SIGKILL in the middle of stage 2 resumes to the same weights.

Also: the resumable loader's bookkeeping, leftover temp checkpoints are ignored, a damaged
``last.ckpt`` is one clear error, and a finished stage is not rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import tiny_reid_overrides
from ftclip.cli import main
from ftclip.data.resume import ResumableDataLoader, SkippingBatchSampler
from ftclip.data.samplers import PKBatchSampler
from ftclip.errors import FtclipError
from ftclip.runs import RunDir
from ftclip.logs import read_history

RECIPE = "recipes/demo/reid_synthetic.yaml"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _overrides(root, run_dir, **extra):
    values = {"trainer.deterministic": "true", "trainer.ckpt_every_n_steps": "1", "eval.before": "false",
              "stages.prompts.epochs": "1"}
    values.update(extra)
    return tiny_reid_overrides(root, run_dir, **values)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


# --------------------------------------------------------------------------- unit: the loader
def test_skipping_batch_sampler_resumes_inside_an_epoch():
    pids = [i // 4 for i in range(32)]
    full = PKBatchSampler(pids, 8, 2, seed=3)
    full.set_epoch(2)
    expected = list(full)
    wrapped = SkippingBatchSampler(PKBatchSampler(pids, 8, 2, seed=3))
    loader = ResumableDataLoader(list(range(32)), wrapped, progress=lambda: (2, 2, False))
    state = loader.state_dict()
    assert state == {"epoch": 2, "done": 2, "finished": False, "total": wrapped.max_batches()}
    fresh = ResumableDataLoader(list(range(32)), SkippingBatchSampler(PKBatchSampler(pids, 8, 2, seed=3)),
                                progress=lambda: (0, 0, False))
    fresh.load_state_dict(state)  # Lightning calls this before creating the iterator
    assert list(fresh.batch_sampler) == expected[2:]
    assert list(fresh.batch_sampler) == expected  # the skip applies to one iteration only


def test_epoch_end_state_resumes_at_next_epoch():
    pids = [i // 4 for i in range(32)]
    nxt = PKBatchSampler(pids, 8, 2, seed=3)
    nxt.set_epoch(1)
    loader = ResumableDataLoader(list(range(32)), SkippingBatchSampler(PKBatchSampler(pids, 8, 2, seed=3)),
                                 progress=lambda: (0, 0, False))
    # an epoch may yield fewer batches than len(): Lightning's end-of-data flag decides
    loader.load_state_dict({"epoch": 0, "done": 3, "finished": True, "total": 4})
    assert list(loader.batch_sampler) == list(nxt)


def test_pending_skip_is_dropped_when_lightning_moves_to_another_epoch():
    pids = [i // 4 for i in range(32)]
    loader = ResumableDataLoader(list(range(32)), SkippingBatchSampler(PKBatchSampler(pids, 8, 2, seed=3)),
                                 progress=lambda: (0, 0, False))
    loader.load_state_dict({"epoch": 0, "done": 2, "finished": False, "total": 4})
    loader.batch_sampler.set_epoch(1)
    ref = PKBatchSampler(pids, 8, 2, seed=3)
    ref.set_epoch(1)
    assert list(loader.batch_sampler) == list(ref)


def test_lightning_sets_each_epoch_of_the_sampler_through_the_resumable_loader():
    """Lightning calls set_epoch on ``loader.sampler`` and ``loader.batch_sampler.sampler`` only: the wrapped
    sampler must be reachable there, or every epoch of an uninterrupted run repeats epoch 0's order (while a
    resume sets the right epoch, so a resume after epoch 0 was not bit-identical)."""
    from lightning.fabric.utilities.data import _set_sampler_epoch

    pids = [i // 4 for i in range(32)]
    loader = ResumableDataLoader(list(range(32)), SkippingBatchSampler(PKBatchSampler(pids, 8, 2, seed=3)),
                                 progress=lambda: (0, 0, False))
    epochs = []
    for epoch in range(3):
        _set_sampler_epoch(loader, epoch)  # what Lightning's fit loop does at each epoch start
        epochs.append(list(loader.batch_sampler))
        ref = PKBatchSampler(pids, 8, 2, seed=3)
        ref.set_epoch(epoch)
        assert epochs[-1] == list(ref), epoch
    assert epochs[0] != epochs[1] != epochs[2]


def test_loader_state_with_other_batch_count_is_refused():
    pids = [i // 4 for i in range(32)]
    loader = ResumableDataLoader(list(range(32)), SkippingBatchSampler(PKBatchSampler(pids, 8, 2)),
                                 progress=lambda: (0, 0, False))
    with pytest.raises(FtclipError, match="batches per epoch"):
        loader.load_state_dict({"epoch": 0, "done": 1, "total": 99})


# --------------------------------------------------------------------------- damaged checkpoints
def test_damaged_last_ckpt_is_a_clear_error(tiny_reid_root, tmp_path, capsys):
    from ftclip.recipe import load_recipe

    run_dir = tmp_path / "run"
    run = RunDir.create(load_recipe(RECIPE, _overrides(tiny_reid_root, run_dir)))
    ckpt = run.checkpoint_dir("prompts") / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    assert main(["fit", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(ckpt) in err and "damaged" in err and "delete it" in err


def test_completed_stage_without_checkpoint_is_a_clear_error(tiny_reid_root, tmp_path, capsys):
    from ftclip.recipe import load_recipe

    run_dir = tmp_path / "run"
    run = RunDir.create(load_recipe(RECIPE, _overrides(tiny_reid_root, run_dir)))
    run.mark_completed("prompts")
    assert main(["fit", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "'prompts' is marked completed" in err and "last.ckpt is missing" in err


def test_lightnings_checkpoints_carry_their_hashes_and_a_changed_batch_size_is_one_line(tiny_reid_root, tmp_path,
                                                                                         capsys):
    import json

    from omegaconf import OmegaConf

    from ftclip.io import sha256_file

    run_dir = tmp_path / "run"
    assert main(["fit", RECIPE, *_overrides(tiny_reid_root, run_dir, **{"stages.image.max_steps": "1"})]) == 0
    run = RunDir(run_dir)
    hashes = json.loads(run.state_path.read_text())["hashes"]
    assert sorted(hashes) == ["checkpoints/image/last.ckpt", "checkpoints/prompts/last.ckpt"]
    assert all(sha256_file(run_dir / name) == digest for name, digest in hashes.items())

    run.update_state(lambda state: state.update(completed=["prompts"]))  # as if stage 'image' had been interrupted
    cfg = OmegaConf.load(run.config_path)
    cfg.data.batch_size = 4  # the P x K batch of stage 'image' changes: another number of batches per epoch
    run.config_path.write_text(OmegaConf.to_yaml(cfg))
    capsys.readouterr()
    assert main(["fit", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ftclip: error: cannot resume: the checkpoint was written with") and "batches per epoch" in err
    assert err.endswith(f"the run is kept: continue it with `ftclip fit --resume {run_dir}`")
    assert (run_dir / "checkpoints" / "image" / "last.ckpt").is_file()


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_sigkill_in_stage_two_then_resume_gives_identical_weights(tiny_reid_root, tmp_path, capsys):
    # the reference: one uninterrupted run
    ref_dir = tmp_path / "uninterrupted"
    assert main(["fit", RECIPE, *_overrides(tiny_reid_root, ref_dir)]) == 0
    capsys.readouterr()

    # the same run, killed (SIGKILL) as soon as stage 2 has written a step checkpoint
    run_dir = tmp_path / "killed"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.Popen([sys.executable, "-m", "ftclip", "fit", RECIPE, *_overrides(tiny_reid_root, run_dir)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints" / "image" / "last.ckpt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "stage 2 never wrote a checkpoint"
    state = json.loads((run_dir / "state.json").read_text())
    assert "image" not in state["completed"] and state["stages"]["image"]["status"] == "running"  # killed: no word
    killed_state = _state(ckpt)
    ref = _state(ref_dir / "checkpoints" / "image" / "last.ckpt")
    killed_seconds = killed_state["callbacks"]["StageHistory"]["seconds"]
    assert killed_seconds > 0
    loader_state = killed_state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    # the P x K sampler's len() is an upper bound per epoch (an epoch may yield fewer batches)
    assert ref["global_step"] <= 2 * loader_state["total"]
    assert 0 < killed_state["global_step"] < ref["global_step"], "the kill should land inside stage 2"
    prompts_ckpt = run_dir / "checkpoints" / "prompts" / "last.ckpt"
    prompts_mtime = prompts_ckpt.stat().st_mtime_ns
    # a truncated temp file from a write the kill interrupted is never trusted
    (ckpt.parent / ".last.ckpt.crash.tmp").write_bytes(b"PK\x03\x04 half written")

    assert (run_dir / ".lock").is_file()  # the killed process could not remove its lock file
    assert main(["fit", "--resume", str(run_dir)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert f"note: {run_dir / '.lock'} was left by ftclip fit (pid {proc.pid} " in captured.err  # stale: taken over
    assert not (run_dir / ".lock").exists()
    assert "stage 'prompts'" not in out, "a finished stage must not run again"
    assert f"resuming stage 'image' from {ckpt}" in out
    assert prompts_ckpt.stat().st_mtime_ns == prompts_mtime

    got = _state(ckpt)
    assert got["global_step"] == ref["global_step"]
    assert ref["state_dict"].keys() == got["state_dict"].keys()
    for key, value in ref["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    ref_m = (ref_dir / "metrics.json").read_text()
    got_m = (run_dir / "metrics.json").read_text()

    strip = lambda m: {s: {k: v for k, v in d.items() if k != "train_seconds"} for s, d in json.loads(m).items()}  # noqa: E731
    assert strip(ref_m) == strip(got_m)

    # the history survives the kill: each stage's log equals the uninterrupted run's, every row once
    for stage in ("prompts", "image"):
        ref_log = (ref_dir / "logs" / stage / "metrics.csv").read_text()
        got_log = (run_dir / "logs" / stage / "metrics.csv").read_text()
        assert got_log == ref_log, stage
    epochs = [row for row in read_history(run_dir / "logs" / "image" / "metrics.csv") if "lr" in row]
    assert [int(row["epoch"]) for row in epochs] == [0, 1]  # every epoch once
    # train_seconds counts the part before the kill too (the first attempt ran for a while)
    assert json.loads(got_m)["image"]["train_seconds"] >= killed_seconds
