"""Synthetic data sets: deterministic bytes, real layouts, loadable by the data loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftclip.data.images import check_images, read_image
from ftclip.data.images import list_images
from ftclip.tasks.iqa.formats import load_iqa_dataset
from ftclip.tasks.reid.formats import load_reid_dataset
from ftclip.tasks.iqa.synthetic import write_synthetic_iqa
from ftclip.tasks.reid.synthetic import write_synthetic_reid
from ftclip.errors import FtclipError

_REID = dict(
    num_ids=6, num_query_ids=5, images_per_id_cam=2, num_cameras=3, size=(64, 32), num_junk=2, num_distractors=2
)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_reid_deterministic_and_seeded(tmp_path: Path) -> None:
    a = _tree(write_synthetic_reid(tmp_path / "a", **_REID))
    b = _tree(write_synthetic_reid(tmp_path / "b", **_REID))
    assert a == b
    c = _tree(write_synthetic_reid(tmp_path / "c", **_REID, seed=1))
    assert a != c


def test_reid_parses_as_market1501(tmp_path: Path) -> None:
    root = write_synthetic_reid(tmp_path / "syn", **_REID)
    ds = load_reid_dataset("market1501", root)
    assert load_reid_dataset("auto", root).name == "market1501"
    assert ds.num_train_pids == 6 and ds.num_cameras == 3
    query_pids = {s.pid for s in ds.query}
    assert len(query_pids) == 5
    names = {Path(s.path).name for s in ds.train}
    raw_train_pids = {int(n.split("_")[0]) for n in names}
    assert not raw_train_pids & query_pids  # train and test identities are disjoint
    gallery_pids = [s.pid for s in ds.gallery]
    assert gallery_pids.count(-1) == 2 and gallery_pids.count(0) == 2
    for q in ds.query:  # every query has a match in another camera
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)
    ok, bad = check_images([s.path for s in ds.train + ds.query + ds.gallery], policy="skip")
    assert not bad
    assert read_image(ds.train[0].path).shape == (64, 32, 3)


def test_reid_single_image_per_camera(tmp_path: Path) -> None:
    root = write_synthetic_reid(tmp_path / "one", **{**_REID, "images_per_id_cam": 1})
    ds = load_reid_dataset("market1501", root)
    assert len(ds.query) == 5  # one query per test identity
    for q in ds.query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in ds.gallery)


def test_reid_refuses_to_overwrite_and_bad_arguments(tmp_path: Path) -> None:
    root = write_synthetic_reid(tmp_path / "x", **_REID)
    with pytest.raises(FtclipError, match="already holds bounding_box_train"):
        write_synthetic_reid(root, **_REID)
    before = _tree(root)
    write_synthetic_reid(root, **_REID, overwrite=True)
    assert _tree(root) == before
    with pytest.raises(FtclipError, match="num_cameras=1"):
        write_synthetic_reid(tmp_path / "y", num_cameras=1)
    with pytest.raises(FtclipError, match="too small"):
        write_synthetic_reid(tmp_path / "z", size=(8, 4))


def test_reid_identities_look_alike_across_cameras(tmp_path: Path) -> None:
    """Cheap sanity check: the mean colour of the image centre (the person) is closer within an identity."""
    root = write_synthetic_reid(tmp_path / "s", num_ids=12, images_per_id_cam=2, num_cameras=3, size=(64, 32))
    ds = load_reid_dataset("market1501", root)
    feats = np.stack([read_image(s.path)[16:56, 10:22].reshape(-1, 3).mean(0) for s in ds.train])
    pids = np.array([s.pid for s in ds.train])
    dist = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    same = pids[:, None] == pids[None]
    np.fill_diagonal(same, False)
    other = pids[:, None] != pids[None]
    assert dist[same].mean() < dist[other].mean()


def _raw_pixel_map(root: Path) -> float:
    """Market-protocol mAP of raw-pixel Euclidean distance (same-camera matches removed, junk ignored)."""
    ds = load_reid_dataset("market1501", root)
    q = np.stack([read_image(s.path).astype(np.float32).ravel() for s in ds.query])
    g = np.stack([read_image(s.path).astype(np.float32).ravel() for s in ds.gallery])
    gp, gc = np.array([s.pid for s in ds.gallery]), np.array([s.camid for s in ds.gallery])
    dist = ((q[:, None] - g[None]) ** 2).sum(-1)
    aps = []
    for i, s in enumerate(ds.query):
        keep = ~((gp == s.pid) & (gc == s.camid)) & (gp != -1)
        hits = gp[keep][np.argsort(dist[i][keep])] == s.pid
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return float(np.mean(aps))


def test_reid_raw_pixels_are_not_enough(tmp_path: Path) -> None:
    """Camera backgrounds, colour casts, pose and position make raw-pixel matching poor."""
    root = write_synthetic_reid(tmp_path / "r", num_ids=4, num_query_ids=20, images_per_id_cam=2, size=(64, 32))
    assert _raw_pixel_map(root) < 0.35


def test_iqa_deterministic_and_loadable(tmp_path: Path) -> None:
    pytest.importorskip("ftclip.tasks.iqa.degradations")
    kwargs = dict(num_pristine=3, num_eval=2, size=(32, 32), levels=3, kinds=("blur", "noise"))
    root = write_synthetic_iqa(tmp_path / "a", **kwargs)
    assert _tree(root) == _tree(write_synthetic_iqa(tmp_path / "b", **kwargs))
    assert _tree(root) != _tree(write_synthetic_iqa(tmp_path / "c", **kwargs, seed=5))
    assert len(list_images(root / "pristine")) == 3
    samples = load_iqa_dataset("csv", root / "eval.csv")
    assert len(samples) == 2 * (1 + 2 * 3)
    by_name = {Path(s.path).name: s.mos for s in samples}
    assert by_name["source_0000.png"] == 3.0  # pristine: highest
    assert by_name["source_0000_blur_1.png"] == 2.0 and by_name["source_0001_noise_3.png"] == 0.0
    clean = read_image(root / "eval" / "source_0000.png").astype(int)
    blurred = read_image(root / "eval" / "source_0000_blur_3.png").astype(int)
    assert clean.shape == (32, 32, 3) and np.abs(clean - blurred).mean() > 1.0
    with pytest.raises(FtclipError, match="already holds pristine"):
        write_synthetic_iqa(root, **kwargs)
    with pytest.raises(FtclipError, match="degradation kinds"):
        write_synthetic_iqa(tmp_path / "d", kinds=("sparkle",))


def test_pristine_images_have_texture_and_edges(tmp_path: Path) -> None:
    pytest.importorskip("ftclip.tasks.iqa.degradations")
    root = write_synthetic_iqa(tmp_path / "p", num_pristine=4, num_eval=0, size=(48, 48))
    for path in list_images(root / "pristine"):
        img = read_image(path).astype(float).mean(axis=2)
        grad = np.abs(np.diff(img, axis=1))
        assert img.std() > 10  # varied content
        assert (grad > 40).mean() > 0.005  # sharp edges that blur would remove


def test_iqa_transfer_set_has_other_content_and_other_distortions(tmp_path: Path) -> None:
    import csv

    from ftclip.tasks.iqa.degradations import DEGRADATION_KINDS, HELDOUT_KINDS

    root = write_synthetic_iqa(tmp_path / "t", num_pristine=1, num_eval=1, num_transfer=2, size=(48, 48),
                               eval_size=(32, 40), levels=3)
    rows = list(csv.DictReader(open(root / "transfer.csv")))
    assert len(rows) == 2 * (1 + len(HELDOUT_KINDS) * 3)
    kinds = {r["kind"] for r in rows} - {"none"}
    assert kinds == set(HELDOUT_KINDS) and not kinds & set(DEGRADATION_KINDS)
    assert {float(r["mos"]) for r in rows if r["kind"] == "none"} == {3.0}
    assert [float(r["mos"]) for r in rows if r["kind"] == "pixelate" and r["source"] == "mosaic_0000"] == [2.0, 1.0, 0.0]
    assert read_image(root / rows[0]["path"]).shape == (32, 40, 3)  # eval_size, not the pristine size
    assert read_image(root / "eval" / "source_0000.png").shape == (32, 40, 3)
    assert read_image(list_images(root / "pristine")[0]).shape == (48, 48, 3)
    mosaic = read_image(root / "transfer" / "mosaic_0000.png").astype(float).mean(axis=2)
    natural = read_image(root / "eval" / "source_0000.png").astype(float).mean(axis=2)
    flat = lambda img: float((np.abs(np.diff(img, axis=1)) < 1.5).mean())  # noqa: E731
    assert flat(mosaic) > flat(natural)  # flat-lit facades vs textured, shaded scenes
    assert len(load_iqa_dataset("csv", root / "transfer.csv")) == len(rows)
