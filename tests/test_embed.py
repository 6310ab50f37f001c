"""ftclip embed: folders / CSV lists -> .npy / .parquet / .csv with paths, from a run or its export."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from export_helpers import make_cheap_run

from ftclip.cli import main


@pytest.fixture(scope="module")
def run_and_export(tiny_reid_root, tmp_path_factory):
    from ftclip.artifacts.export import export_run

    base = tmp_path_factory.mktemp("embed")
    run, _ = make_cheap_run(tiny_reid_root, base / "run")
    out = export_run(run.path, ["open_clip"], out=base / "exp")
    return run.path, out


@pytest.fixture
def images(tiny_reid_root, tmp_path) -> Path:
    """6 good images in a nested folder and one corrupt file."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    files = sorted((tiny_reid_root / "bounding_box_test").glob("0*.jpg"))[:6]
    for i, f in enumerate(files):
        shutil.copy(f, folder / ("sub" if i % 2 else ".") / f.name)
    (folder / "sub" / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def _good(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.jpg") if p.name != "broken.jpg")


def test_embed_folder_to_npy_from_export_matches_run(run_and_export, images, tmp_path, capsys):
    run_dir, export_dir = run_and_export
    assert main(["embed", str(export_dir), str(images), "--out", str(tmp_path / "exp.npy"), "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "skipped unreadable image" in err
    feats = np.load(tmp_path / "exp.npy")
    paths = (tmp_path / "exp.paths.txt").read_text().splitlines()
    assert sorted(paths) == _good(images) and feats.shape == (6, 128)  # final (64) + proj (64) for re-ID
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)

    assert main(["embed", str(run_dir), str(images), "--out", str(tmp_path / "run.npy"), "--device", "cpu"]) == 0
    assert (tmp_path / "run.paths.txt").read_text().splitlines() == paths
    assert np.abs(np.load(tmp_path / "run.npy") - feats).max() < 1e-5


def test_embed_equals_the_evaluation_feature(run_and_export, images, tmp_path):
    """What `ftclip embed` writes is the feature the run was evaluated with (same transform, same feature)."""
    from ftclip.data.images import read_image
    from ftclip.data.transforms import apply, eval_transform
    from ftclip.runs import load_module_from_run
    from ftclip.runs import RunDir

    run_dir, export_dir = run_and_export
    assert main(["embed", str(export_dir), str(images), "--out", str(tmp_path / "f.npy")]) == 0
    paths = (tmp_path / "f.paths.txt").read_text().splitlines()
    module, cfg = load_module_from_run(RunDir(run_dir))
    transform = eval_transform((128, 64), cfg.model.mean, cfg.model.std)
    batch = torch.stack([apply(transform, read_image(p)) for p in paths])
    with torch.no_grad():
        expected = module.embed(batch).numpy()
    assert np.abs(np.load(tmp_path / "f.npy") - expected).max() < 1e-5


def test_parquet_and_csv_outputs_and_csv_input_list(run_and_export, images, tmp_path):
    import pandas as pd

    _, export_dir = run_and_export
    good = _good(images)
    listing = images / "list.csv"
    listing.write_text("path,label\n" + "".join(f"{Path(p).relative_to(images)},x\n" for p in good[:3]))
    assert main(["embed", str(export_dir), str(listing), "--out", str(tmp_path / "f.parquet"),
                 "--feature", "proj"]) == 0
    table = pd.read_parquet(tmp_path / "f.parquet")
    assert list(table["path"]) == good[:3]
    assert np.stack(table["embedding"].to_numpy()).shape == (3, 64)

    assert main(["embed", str(export_dir), good[0], good[1], "--out", str(tmp_path / "f.csv")]) == 0
    frame = pd.read_csv(tmp_path / "f.csv")
    assert list(frame["path"]) == good[:2] and frame.shape == (2, 1 + 128)
    parquet_row = np.asarray(table["embedding"][0])
    assert parquet_row.shape == (64,)


@pytest.mark.parametrize("argv_tail, message", [
    (["--out", "feats.txt"], "unknown output type '.txt'"),
    (["--out", "feats.npy", "--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_bad_arguments(run_and_export, images, tmp_path, capsys, argv_tail, message):
    _, export_dir = run_and_export
    argv_tail = [str(tmp_path / a) if a.startswith("feats") else a for a in argv_tail]
    assert main(["embed", str(export_dir), str(images)] + argv_tail) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_source_neither_run_nor_export_and_missing_input(run_and_export, images, tmp_path, capsys):
    _, export_dir = run_and_export
    assert main(["embed", str(images), str(images), "--out", str(tmp_path / "f.npy")]) == 2
    assert "is neither an ftclip run directory" in capsys.readouterr().err
    assert main(["embed", str(export_dir), str(tmp_path / "nope"), "--out", str(tmp_path / "f.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "f.npy").exists()


@pytest.mark.slow
def test_demo_training_exports_itself_and_embeds(tiny_reid_root, tmp_path):
    """End to end: a real (shrunk) demo fit with run.export=[open_clip, onnx], then embed with the export."""
    from conftest import tiny_reid_overrides

    overrides = tiny_reid_overrides(tiny_reid_root, tmp_path / "run", **{"run.export": "[open_clip,onnx]",
                                                                        "eval.before": "false"})
    assert main(["fit", "recipes/demo/reid_synthetic.yaml", *overrides]) == 0
    export_dir = tmp_path / "run" / "export"
    assert (export_dir / "image_encoder.onnx").is_file() and (export_dir / "open_clip_model.safetensors").is_file()
    folder = tiny_reid_root / "query"
    assert main(["embed", str(export_dir), str(folder), "--out", str(tmp_path / "q.npy")]) == 0
    assert main(["embed", str(tmp_path / "run"), str(folder), "--out", str(tmp_path / "q_run.npy")]) == 0
    assert np.abs(np.load(tmp_path / "q.npy") - np.load(tmp_path / "q_run.npy")).max() < 1e-5


@pytest.mark.parametrize("case", ["folder", "exists", "below a file", "read-only"])
def test_output_path_is_checked_before_any_work(run_and_export, images, tmp_path, capsys, case):
    """Each bad --out is one line, before the model is loaded or an image read (the same check as ftclip score)."""
    import os

    _, export_dir = run_and_export
    out = {"folder": tmp_path / "feats.npy", "exists": tmp_path / "old.npy", "below a file": tmp_path / "a-file" / "f.npy",
           "read-only": tmp_path / "locked" / "f.npy"}[case]
    (tmp_path / "old.npy").write_bytes(b"keep me")
    (tmp_path / "feats.npy").mkdir()
    (tmp_path / "a-file").write_text("")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o500)
    if case == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes through permissions")
    try:
        assert main(["embed", str(export_dir), str(images), "--out", str(out)]) == 2
    finally:
        (tmp_path / "locked").chmod(0o700)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err
    assert {"folder": "is a folder", "exists": "already exists; pass --overwrite", "below a file": "is a file",
            "read-only": "not writable"}[case] in err
    assert (tmp_path / "old.npy").read_bytes() == b"keep me"
    if case == "exists":
        assert main(["embed", str(export_dir), str(images), "--out", str(out), "--overwrite"]) == 0
        assert np.load(out).shape[0] == len(_good(images))
