"""read_image and check_images: decoding, and one clear error per bad file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftclip.data.images import check_images, read_image
from ftclip.errors import DataError, FtclipError


def _jpeg_bytes(h: int = 32, w: int = 24, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg_bytes())
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image at all" * 10)
    truncated = tmp_path / "truncated.jpg"
    data = _jpeg_bytes(64, 64, seed=1)
    truncated.write_bytes(data[: len(data) // 2])
    return {"good": good, "empty": empty, "corrupt": corrupt, "truncated": truncated}


def test_read_image_rgb_uint8_hwc(files: dict[str, Path], tmp_path: Path) -> None:
    img = read_image(files["good"])
    assert img.dtype == np.uint8 and img.shape == (32, 24, 3)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((5, 7), 100, np.uint8)).save(grey)
    assert read_image(str(grey)).shape == (5, 7, 3)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((4, 3, 4), np.uint8)).save(rgba)
    assert read_image(rgba).shape == (4, 3, 3)


@pytest.mark.parametrize(("kind", "words"), [("empty", "0 bytes"), ("corrupt", "corrupt"), ("truncated", "corrupt")])
def test_read_image_bad_file_names_it(files: dict[str, Path], kind: str, words: str) -> None:
    with pytest.raises(DataError, match=words) as err:
        read_image(files[kind])
    assert str(files[kind]) in str(err.value)


def test_read_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(DataError, match="not a file"):
        read_image(tmp_path)


def test_check_images_error_policy_lists_count_and_names(files: dict[str, Path]) -> None:
    paths = [files["good"], files["empty"], files["corrupt"], files["truncated"]]
    with pytest.raises(DataError) as err:
        check_images(paths, policy="error")
    msg = str(err.value)
    assert "3 of 4 images are unreadable" in msg
    for name in ("empty.jpg", "corrupt.jpg", "truncated.jpg"):
        assert name in msg
    assert "skip" in msg


@pytest.mark.parametrize("workers", [1, 4])
def test_check_images_skip_policy_returns_bad(files: dict[str, Path], workers: int) -> None:
    paths = [files["empty"], files["good"], files["truncated"], files["corrupt"], files["good"]]
    ok, bad = check_images(paths, policy="skip", workers=workers)
    assert ok == [str(files["good"])] * 2
    assert [p for p, _ in bad] == [str(files["empty"]), str(files["truncated"]), str(files["corrupt"])]
    assert "0 bytes" in bad[0][1]


def test_check_images_all_good_and_bad_arguments(files: dict[str, Path]) -> None:
    assert check_images([files["good"]]) == ([str(files["good"])], [])
    assert check_images([]) == ([], [])
    with pytest.raises(FtclipError, match="policy 'ignore'"):
        check_images([files["good"]], policy="ignore")
    with pytest.raises(FtclipError, match="workers=0"):
        check_images([files["good"]], workers=0)
