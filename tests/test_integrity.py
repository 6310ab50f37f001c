"""Checkpoints and exports prove their integrity: a SHA-256 recorded when each file is written, checked
before resume, export and inference, and by `ftclip verify`; a damaged file is one line naming it."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from export_helpers import make_cheap_run
from ftclip.cli import main
from ftclip.io import AtomicCheckpointIO, sha256_file
from ftclip.runs import RunDir


def one_error(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("ftclip: error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


def flip_tensor_bit(ckpt: Path) -> None:
    """Flip one bit inside the bytes of a tensor stored in a torch zip checkpoint (the zip stays valid)."""
    with zipfile.ZipFile(ckpt) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(ckpt.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[entry.header_offset + 26:entry.header_offset + 30])
    data[entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2] ^= 0x04
    ckpt.write_bytes(bytes(data))


@pytest.fixture()
def cheap_run(tiny_reid_root, tmp_path):
    run, _ = make_cheap_run(tiny_reid_root, tmp_path / "run")
    return run


@pytest.fixture()
def images(tiny_reid_root):
    return str(tiny_reid_root / "query")


# --------------------------------------------------------------------------- recording
def test_checkpoint_io_records_the_hash_around_the_replace(tmp_path):
    run = RunDir(tmp_path)
    path = tmp_path / "checkpoints" / "s" / "last.ckpt"
    AtomicCheckpointIO(run.record_hash).save_checkpoint({"w": torch.arange(4.0)}, path)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state == {"hashes": {"checkpoints/s/last.ckpt": sha256_file(path)}}
    assert run.verify_hash(path)

    # a crash between "new file complete" and "recorded in place": both the old and the new file are trusted
    old = sha256_file(path)
    calls = []
    io = AtomicCheckpointIO(lambda p, h, in_place: calls.append(in_place) or run.record_hash(p, h, in_place))
    new_content = {"w": torch.arange(5.0)}
    torch.save(new_content, tmp_path / "new.ckpt")
    run.record_hash(path, sha256_file(tmp_path / "new.ckpt"), in_place=False)
    assert run.verify_hash(path) and sorted(run.recorded_hashes(path)) == sorted({old, sha256_file(tmp_path / "new.ckpt")})
    io.save_checkpoint(new_content, path)
    assert calls == [False, True] and run.recorded_hashes(path) == [sha256_file(path)]
    assert "pending_hashes" not in json.loads((tmp_path / "state.json").read_text())
    io.remove_checkpoint(path)
    assert not path.exists() and run.recorded_hashes(path) == []


def test_state_sections_survive_each_other(tmp_path):
    run = RunDir(tmp_path)
    run.update_state(lambda state: state.update(stages={"b": {"status": "interrupted"}}))  # another section
    run.record_hash(tmp_path / "checkpoints" / "a" / "last.ckpt", "0" * 64)
    run.mark_completed("a")
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["stages"]["b"] == {"status": "interrupted"} and state["stages"]["a"]["status"] == "finished"
    assert state["completed"] == ["a"]
    assert state["hashes"] == {"checkpoints/a/last.ckpt": "0" * 64}


# --------------------------------------------------------------------------- a flipped bit in a checkpoint
def test_a_flipped_bit_in_a_checkpoint_is_refused_everywhere(cheap_run, images, tmp_path, capsys):
    ckpt = cheap_run.last_checkpoint("image")
    assert main(["verify", str(cheap_run.path)]) == 0
    flip_tensor_bit(ckpt)
    with zipfile.ZipFile(ckpt) as archive:
        assert any(n.endswith("data.pkl") for n in archive.namelist())  # the structure check alone would pass
    for argv in (["export", str(cheap_run.path), "--out", str(tmp_path / "exp")],
                 ["embed", str(cheap_run.path), images, "--out", str(tmp_path / "f.npy"), "--device", "cpu"],
                 ["verify", str(cheap_run.path)]):
        err = one_error(capsys, *argv)
        assert str(ckpt) in err and "corrupt" in err and "SHA-256" in err, err
    assert not (tmp_path / "exp").exists() and not (tmp_path / "f.npy").exists()


def test_a_flipped_bit_stops_a_resume(cheap_run, capsys):
    ckpt = cheap_run.last_checkpoint("image")
    cheap_run.update_state(lambda state: state.update(completed=["prompts"]))  # stage 'image' was interrupted
    flip_tensor_bit(ckpt)
    err = one_error(capsys, "fit", "--resume", str(cheap_run.path))
    assert str(ckpt) in err and "corrupt" in err and "ftclip fit --resume" in err
    assert ckpt.exists()  # nothing is deleted for the user


def test_an_old_run_without_hashes_loads_with_one_note_and_its_crcs_still_catch_a_flip(cheap_run, tmp_path, capsys):
    import ftclip.runs

    cheap_run.update_state(lambda state: state.pop("hashes"))
    ftclip.runs._NOTED.clear()
    capsys.readouterr()
    assert main(["export", str(cheap_run.path), "--out", str(tmp_path / "exp")]) == 0
    assert capsys.readouterr().err.count("records no checkpoint hashes") == 1
    flip_tensor_bit(cheap_run.last_checkpoint("image"))
    err = one_error(capsys, "export", str(cheap_run.path), "--out", str(tmp_path / "exp2"))
    assert "damaged" in err and "CRC-32" in err


def test_a_truncated_final_checkpoint_is_one_line_for_export_and_inference(cheap_run, images, tmp_path, capsys):
    ckpt = cheap_run.last_checkpoint("image")
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    for argv in (["export", str(cheap_run.path), "--out", str(tmp_path / "exp")],
                 ["embed", str(cheap_run.path), images, "--out", str(tmp_path / "f.npy"), "--device", "cpu"]):
        err = one_error(capsys, *argv)
        assert str(ckpt) in err and "damaged" in err


# --------------------------------------------------------------------------- exports
def test_an_export_records_every_file_and_inference_refuses_a_damaged_one(cheap_run, images, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(cheap_run.path), "--out", str(out)]) == 0
    meta = json.loads((out / "ftclip_export.json").read_text())
    files = sorted(p.name for p in out.iterdir() if p.name != "ftclip_export.json")
    assert sorted(meta["sha256"]) == files
    assert all(sha256_file(out / name) == digest for name, digest in meta["sha256"].items())
    assert meta["checkpoint_sha256"] == sha256_file(cheap_run.last_checkpoint("image"))
    assert main(["verify", str(out)]) == 0

    weights = out / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x01
    weights.write_bytes(bytes(data))
    for argv in (["embed", str(out), images, "--out", str(tmp_path / "f.npy")], ["verify", str(out)],
                 ["verify", str(cheap_run.path), str(out)]):
        err = one_error(capsys, *argv)
        assert str(weights) in err and "corrupt" in err, err

    # an export written before hashes were recorded still loads, with a note
    meta.pop("sha256")
    (out / "ftclip_export.json").write_text(json.dumps(meta))
    weights.write_bytes(bytes(data[:-100] + bytes([data[-100] ^ 0x01]) + data[-99:]))
    capsys.readouterr()
    assert main(["embed", str(out), images, "--out", str(tmp_path / "g.npy")]) == 0
    assert "records no file hashes" in capsys.readouterr().err


# --------------------------------------------------------------------------- export --overwrite never loses data
def test_overwrite_refuses_a_folder_that_is_not_an_export(cheap_run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("three years of work")
    err = one_error(capsys, "export", str(cheap_run.path), "--out", str(mine), "--overwrite")
    assert str(mine) in err and "not an ftclip export" in err
    assert (mine / "thesis.txt").read_text() == "three years of work"


def test_overwrite_refuses_an_export_holding_other_files(cheap_run, tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["export", str(cheap_run.path), "--out", str(out)]) == 0
    (out / "thesis.txt").write_text("notes")
    err = one_error(capsys, "export", str(cheap_run.path), "--out", str(out), "--overwrite")
    assert "thesis.txt" in err and "did not write" in err
    assert (out / "thesis.txt").is_file()
    (out / "thesis.txt").unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(cheap_run.path), "--out", str(empty), "--overwrite"]) == 0  # nothing to lose


@pytest.mark.parametrize("where", ["run", "above", "inside"])
def test_overwrite_never_touches_a_run_directory(cheap_run, tmp_path, capsys, where):
    target = {"run": cheap_run.path, "above": tmp_path, "inside": cheap_run.path / "checkpoints"}[where]
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    err = one_error(capsys, "export", str(cheap_run.path), "--out", str(target), "--overwrite")
    assert {"run": "the run directory itself", "above": "contains the run directory",
            "inside": "inside the run directory"}[where] in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert main(["export", str(cheap_run.path)]) == 0  # the default RUN/export is its place
    assert (cheap_run.path / "export" / "ftclip_export.json").is_file()
    assert main(["export", str(cheap_run.path), "--overwrite"]) == 0


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "move-aside"])
def test_replace_dir_swaps_and_removes_the_old_folder(tmp_path, monkeypatch, exchange):
    import ftclip.io
    from ftclip.io import replace_dir

    if not exchange:  # a system without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(ftclip.io, "_exchange", lambda a, b: False)

    old, new = tmp_path / "out", tmp_path / ".out.tmp"
    old.mkdir()
    (old / "a.txt").write_text("old")
    new.mkdir()
    (new / "b.txt").write_text("new")
    replace_dir(new, old)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in old.iterdir()] == ["b.txt"]
