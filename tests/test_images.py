"""read_image and check_images: decoding, and one clear error per bad file."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import cv2
from PIL import Image, ImageOps

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


# --- golden images: every mode against a reference decode computed here --------------------------
#
# Each file is written from a known array (by Pillow, OpenCV or the small writers below) and what
# read_image returns is compared with a decode done in numpy from that array: exact, or within one
# level where an 8-bit rounding is involved.

WHITE = np.array([255, 255, 255])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_png16(path: Path, values: np.ndarray, color_type: int) -> Path:
    """A 16-bit PNG from an ``(h, w)`` or ``(h, w, c)`` uint16 array (0 grey, 2 RGB, 4 grey+alpha, 6 RGBA)."""
    h, w = values.shape[:2]
    rows = values.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw))
                     + _png_chunk(b"IEND", b""))
    return path


_SHORT, _LONG = 3, 4  # TIFF field types


def _ifd_entry(tag: int, kind: int, value: int) -> bytes:
    """One TIFF directory entry holding a single value (left-justified in the 4-byte field)."""
    field = struct.pack("<HH", value, 0) if kind == _SHORT else struct.pack("<I", value)
    return struct.pack("<HHI", tag, kind, 1) + field


def _write_tiff(path: Path, values: np.ndarray) -> Path:
    """An uncompressed little-endian grey TIFF from a 2-D int16/uint16/int32/uint32 array."""
    h, w = values.shape
    data = values.astype(values.dtype.newbyteorder("<")).tobytes()
    entries = [
        (256, _LONG, w), (257, _LONG, h), (258, _SHORT, values.dtype.itemsize * 8),  # size, bits per sample
        (259, _SHORT, 1), (262, _SHORT, 1), (273, _LONG, 8), (277, _SHORT, 1),  # raw, black is 0, data at 8
        (278, _LONG, h), (279, _LONG, len(data)), (339, _SHORT, 2 if values.dtype.kind == "i" else 1),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(_ifd_entry(*e) for e in entries) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + ifd)
    return path


def _grey3(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def _over_background(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing onto white, in float: the reference for every transparent mode."""
    a = alpha.astype(np.float64)[..., None] / 255
    return rgb.astype(np.float64) * a + WHITE * (1 - a)


def _assert_close(got: np.ndarray, want: np.ndarray, levels: int = 1) -> None:
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.abs(got.astype(np.int64) - np.rint(want).astype(np.int64)).max() <= levels


def test_background_is_white() -> None:
    from ftclip.data.images import BACKGROUND

    assert BACKGROUND == (255, 255, 255)


def test_16bit_grey_png_from_the_issue_is_not_white(tmp_path: Path) -> None:
    # a grey ramp whose 8-bit luminance averages 136: Pillow's convert("RGB") clips it to 255
    values = np.linspace(20 * 257, 252 * 257, 64 * 48).reshape(64, 48).astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16" and np.asarray(img.convert("RGB")).mean() == 255  # the bug
    got = read_image(path)
    assert abs(got.mean() - 136) < 1
    np.testing.assert_array_equal(got, _grey3((values >> 8).astype(np.uint8)))


@pytest.mark.parametrize("kind", ["png", "png-ours", "tiff", "tiff-big-endian", "pgm"])
def test_16bit_grey_keeps_the_top_byte(tmp_path: Path, kind: str) -> None:
    values = np.random.default_rng(1).integers(0, 65536, (9, 7), dtype=np.uint16)
    path = tmp_path / f"grey16.{kind.split('-')[0]}"
    if kind == "png":
        Image.fromarray(values).save(path)
    elif kind == "png-ours":
        _write_png16(path, values, color_type=0)
    elif kind == "tiff":
        Image.fromarray(values).save(path)
    elif kind == "tiff-big-endian":
        Image.frombytes("I;16B", (7, 9), values.astype(">u2").tobytes()).save(path)
    else:
        path.write_bytes(b"P5 7 9 65535\n" + values.astype(">u2").tobytes())
    with Image.open(path) as img:
        assert img.mode in {"png": ("I;16",), "tiff": ("I;16", "I;16B"), "pgm": ("I",)}[path.suffix[1:]]
    np.testing.assert_array_equal(read_image(path), _grey3((values >> 8).astype(np.uint8)))


def test_16bit_colour_png_keeps_the_top_byte(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    path.write_bytes(cv2.imencode(".png", rgb[..., ::-1])[1].tobytes())  # OpenCV writes BGR
    np.testing.assert_array_equal(read_image(path), (rgb >> 8).astype(np.uint8))
    # and OpenCV's own 8-bit read of the same file agrees
    np.testing.assert_array_equal(read_image(path), cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])

    rgba = rng.integers(0, 65536, (6, 5, 4), dtype=np.uint16)
    _write_png16(path := tmp_path / "rgba16.png", rgba, color_type=6)
    top = rgba >> 8
    _assert_close(read_image(path), _over_background(top[..., :3], top[..., 3]))

    la = rng.integers(0, 65536, (6, 5, 2), dtype=np.uint16)
    _write_png16(path := tmp_path / "la16.png", la, color_type=4)
    top = la >> 8
    _assert_close(read_image(path), _over_background(_grey3(top[..., 0]), top[..., 1]))


def test_16bit_grey_png_colour_key_is_transparent(tmp_path: Path) -> None:
    values = np.random.default_rng(3).integers(0, 65536, (5, 6), dtype=np.uint16)
    values[0, :3] = 700
    path = tmp_path / "key16.png"
    Image.fromarray(values).save(path, transparency=700)
    want = _grey3((values >> 8).astype(np.uint8))
    want[values == 700] = WHITE
    np.testing.assert_array_equal(read_image(path), want)


@pytest.mark.parametrize(("dtype", "shift"), [(np.int16, 7), (np.int32, 23), (np.uint32, 24)])
def test_wide_integer_tiff_keeps_the_top_bits(tmp_path: Path, dtype: type, shift: int) -> None:
    info = np.iinfo(dtype)
    values = np.random.default_rng(4).integers(info.min, info.max, (6, 8), dtype=dtype, endpoint=True)
    values[0, :2] = (info.min, info.max)
    path = _write_tiff(tmp_path / "wide.tif", values)
    with Image.open(path) as img:
        assert img.mode == "I"
    want = (np.clip(values.astype(np.int64), 0, None) >> shift).astype(np.uint8)  # negatives are black
    np.testing.assert_array_equal(read_image(path), _grey3(want))


def test_int32_tiff_written_by_pillow(tmp_path: Path) -> None:
    values = np.random.default_rng(5).integers(-(2**31), 2**31 - 1, (4, 5), dtype=np.int32)
    path = tmp_path / "i32.tif"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(read_image(path), _grey3((np.clip(values, 0, None) >> 23).astype(np.uint8)))


def test_float_tiff_is_read_as_0_to_1(tmp_path: Path) -> None:
    values = np.random.default_rng(6).random((5, 6)).astype(np.float32)
    values[0, :2] = (0.0, 1.0)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    np.testing.assert_array_equal(read_image(path), _grey3(np.rint(values * 255).astype(np.uint8)))


@pytest.mark.parametrize("bad", [255.0, -1.0, float("nan")])
def test_float_tiff_outside_0_to_1_is_one_error_naming_the_file(tmp_path: Path, bad: float) -> None:
    values = np.full((3, 4), 0.5, np.float32)
    values[1, 1] = bad
    path = tmp_path / "float_255.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(DataError, match="float samples") as err:
        read_image(path)
    assert str(path) in str(err.value)
    ok, bad_files = check_images([path], policy="skip")  # data check reads it as training does
    assert ok == [] and bad_files[0][0] == str(path) and "0..1" in bad_files[0][1]


def test_one_bit_and_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, (6, 9)).astype(bool)
    Image.fromarray(bits).save(path := tmp_path / "bits.png")
    with Image.open(path) as img:
        assert img.mode == "1"
    np.testing.assert_array_equal(read_image(path), _grey3(bits.astype(np.uint8) * 255))
    grey = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    Image.fromarray(grey).save(path := tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(path), _grey3(grey))


def test_palette_without_and_with_transparency(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    index = rng.integers(0, 4, (7, 6), dtype=np.uint8)
    assert (index == 1).any()
    img = Image.frombytes("P", (6, 7), index.tobytes())
    img.putpalette(palette.ravel().tolist())
    img.save(path := tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(path), palette[index])

    alpha = np.array([0, 100, 255, 30], np.uint8)  # PNG tRNS: one alpha per palette entry
    img.save(path := tmp_path / "p_alpha.png", transparency=alpha.tobytes())
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    _assert_close(read_image(path), _over_background(palette[index], alpha[index]))

    img.save(path := tmp_path / "p_key.gif", transparency=1)  # GIF: one transparent index
    want = palette[index].copy()
    want[index == 1] = WHITE
    np.testing.assert_array_equal(read_image(path), want)


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    rgba = rng.integers(0, 256, (8, 7, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    Image.fromarray(rgba).save(path := tmp_path / "rgba.png")
    got = read_image(path)
    _assert_close(got, _over_background(rgba[..., :3], rgba[..., 3]))
    np.testing.assert_array_equal(got[0, 0], WHITE)
    np.testing.assert_array_equal(got[0, 1], rgba[0, 1, :3])

    la = rng.integers(0, 256, (8, 7, 2), dtype=np.uint8)
    Image.frombytes("LA", (7, 8), la.tobytes()).save(path := tmp_path / "la.png")
    _assert_close(read_image(path), _over_background(_grey3(la[..., 0]), la[..., 1]))

    rgb = rng.integers(0, 256, (8, 7, 3), dtype=np.uint8)
    rgb[2, 3] = (10, 20, 30)
    Image.fromarray(rgb).save(path := tmp_path / "key.png", transparency=(10, 20, 30))
    want = rgb.copy()
    want[(rgb == (10, 20, 30)).all(axis=2)] = WHITE
    np.testing.assert_array_equal(read_image(path), want)


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    c = cmyk.astype(np.float64)
    return (255 - c[..., :3]) * (255 - c[..., 3:]) / 255


def test_cmyk_jpeg_and_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    cmyk = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.frombytes("CMYK", (16, 16), cmyk.tobytes()).save(path := tmp_path / "cmyk.tif")
    _assert_close(read_image(path), _cmyk_to_rgb(cmyk))

    smooth = np.stack(np.meshgrid(np.arange(16) * 16, np.arange(16) * 16), -1).astype(np.uint8)
    cmyk = np.concatenate([smooth, smooth[..., ::-1]], axis=-1)
    Image.frombytes("CMYK", (16, 16), cmyk.tobytes()).save(path := tmp_path / "cmyk.jpg", quality=100)
    with Image.open(path) as img:
        assert img.mode == "CMYK" and "adobe" in img.info  # Adobe CMYK: stored inverted
        decoded = np.asarray(img)
    _assert_close(read_image(path), _cmyk_to_rgb(decoded))  # the colour conversion, exactly
    assert np.abs(read_image(path) - _cmyk_to_rgb(cmyk)).mean() < 2  # and no inversion slip: near the source


def test_ycbcr_and_lab_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    ycc = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.frombytes("YCbCr", (8, 8), ycc.tobytes()).save(path := tmp_path / "ycc.tif")
    with Image.open(path) as img:
        assert img.mode == "YCbCr"
    y, cb, cr = (ycc[..., k].astype(np.float64) for k in range(3))
    cb, cr = cb - 128, cr - 128
    want = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)  # JFIF
    _assert_close(read_image(path), np.clip(want, 0, 255))

    # CIE L*a*b* (D50, Pillow's 8-bit encoding: L 0..255 = 0..100, a/b offset by 128) -> sRGB
    lab = rng.integers((60, 96, 96), (230, 160, 160), (32, 32, 3), endpoint=True).astype(np.uint8)  # mostly in gamut
    Image.merge("LAB", [Image.fromarray(lab[..., k]) for k in range(3)]).save(path := tmp_path / "lab.tif")
    with Image.open(path) as img:
        assert img.mode == "LAB"
    light = lab[..., 0] / 255 * 100
    fy = (light + 16) / 116
    f = np.stack([fy + (lab[..., 1] - 128.0) / 500, fy, fy - (lab[..., 2] - 128.0) / 200], -1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * (0.96422, 1.0, 0.82521)
    to_srgb_d50 = np.array([[3.1338561, -1.6168667, -0.4906146], [-0.9787684, 1.9161415, 0.0334540],
                            [0.0719453, -0.2289914, 1.4052427]])  # Bradford-adapted XYZ(D50) -> linear sRGB
    linear = xyz @ to_srgb_d50.T
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.clip(linear, 0, None) ** (1 / 2.4) - 0.055) * 255
    # Pillow converts through LittleCMS's 8-bit Lab table, which is up to ~13 levels off near the
    # gamut edge; well inside the gamut it is within one level
    inside = ((linear > 0.2) & (linear < 0.8)).all(-1)
    assert inside.sum() > 100
    got = read_image(path)
    assert np.abs(got[inside].astype(np.int64) - np.rint(srgb[inside])).max() <= 1


# EXIF orientation -> the numpy operation that shows the stored image upright (EXIF 2.3, tag 0x0112)
_UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # mirrored, then rotated 270 clockwise
    6: lambda a: np.rot90(a, -1),  # rotate 90 clockwise to show it
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirrored, then rotated 90 clockwise
    8: lambda a: np.rot90(a, 1),  # rotate 90 counter-clockwise to show it
}


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_png(tmp_path: Path, orientation: int) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    Image.fromarray(stored).save(path := tmp_path / "o.png", exif=_exif(orientation))
    got = read_image(path)
    np.testing.assert_array_equal(got, _UPRIGHT[orientation](stored))
    with Image.open(path) as img:  # the same as PIL's own exif_transpose
        np.testing.assert_array_equal(got, np.asarray(ImageOps.exif_transpose(img).convert("RGB")))


@pytest.mark.parametrize("fmt", ["jpg", "tif", "webp"])
def test_exif_orientation_other_formats(tmp_path: Path, fmt: str) -> None:
    stored = np.random.default_rng(12).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    path = tmp_path / f"o.{fmt}"
    if fmt == "tif":  # TIFF keeps orientation as its own tag; Pillow applies it on load
        Image.fromarray(stored).save(path, tiffinfo={274: 6})
    else:
        Image.fromarray(stored).save(path, exif=_exif(6), **({"lossless": True} if fmt == "webp" else {}))
    with Image.open(path) as img:
        plain = img.convert("RGB")  # the decoder's own pixels, stored orientation (JPEG is lossy)
        if fmt == "tif":
            plain = Image.fromarray(stored)
        want = _UPRIGHT[6](np.asarray(plain))
    got = read_image(path)
    assert got.shape == (10, 6, 3)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt", ["gif", "tif"])
def test_multi_frame_reads_the_first_frame(tmp_path: Path, fmt: str) -> None:
    frames = [Image.fromarray(np.full((4, 5, 3), v, np.uint8)) for v in (40, 200, 90)]
    frames[0].save(path := tmp_path / f"anim.{fmt}", save_all=True, append_images=frames[1:])
    with Image.open(path) as img:
        assert img.n_frames == 3
    np.testing.assert_array_equal(read_image(path), np.full((4, 5, 3), 40, np.uint8))


def test_gif_and_netpbm_files_are_listed_and_read(tmp_path: Path) -> None:
    """GIF (its first frame, a palette image) and the Netpbm formats (PGM grey, 16-bit PGM, PPM, PBM) are images
    the loaders find and read as RGB uint8."""
    from ftclip.data.images import list_images

    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))
    rgb = np.stack([grey, grey[::-1], np.full_like(grey, 7)], axis=-1)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "a.gif")
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(grey).save(tmp_path / "b.pgm")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "c16.pgm")
    Image.fromarray(rgb).save(tmp_path / "d.ppm")
    Image.fromarray(grey > 127).save(tmp_path / "e.pbm")
    found = [Path(p).name for p in list_images(tmp_path)]
    assert found == ["a.gif", "anim.gif", "b.pgm", "c16.pgm", "d.ppm", "e.pbm"]
    for name in found:
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (8, 16, 3), name
    assert np.array_equal(read_image(tmp_path / "b.pgm")[..., 0], grey)
    assert np.array_equal(read_image(tmp_path / "c16.pgm")[..., 0], grey)  # the top byte of 16 bits
    assert np.array_equal(read_image(tmp_path / "d.ppm"), rgb)
    first = read_image(tmp_path / "anim.gif").astype(int)  # the first frame (GIF quantises to a palette)
    assert np.abs(first - rgb).mean() < 8 and np.abs(first - (255 - rgb)).mean() > 64
    assert set(np.unique(read_image(tmp_path / "e.pbm"))) <= {0, 255}
