"""A deterministic synthetic person re-ID set in the Market-1501 layout (demos and tests).

:func:`write_synthetic_reid` draws pedestrians. Each identity has a stable appearance (clothing
colours, a torso pattern, hair, build, trousers or skirt, an optional bag); every image varies it
by viewpoint (front / back / side), leg pose, position, scale and occlusion, and by camera: each
camera has its own background, colour cast, gamma, light direction, blur and sensor noise. Raw
pixels therefore match across cameras poorly, while a learned appearance feature matches well.
A pure function of its arguments (see :mod:`ftclip.data.synthetic`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ftclip.data.synthetic import check_count, check_size, grid, prepare_output, random_stream, to_uint8
from ftclip.errors import FtclipError

__all__ = ["write_synthetic_reid"]

_JPEG_QUALITY = 90
_REID_DIRS = ("bounding_box_train", "query", "bounding_box_test")

# Stream keys for np.random.default_rng([seed, key, ...]).
_K_CAMERA, _K_IDENTITY, _K_IMAGE, _K_JUNK, _K_DISTRACTOR, _K_PIDS = 1, 2, 3, 4, 5, 6

_CLOTHES = np.array(
    [
        (0.08, 0.08, 0.09), (0.92, 0.92, 0.90), (0.50, 0.50, 0.50), (0.10, 0.15, 0.40),
        (0.15, 0.35, 0.80), (0.55, 0.75, 0.95), (0.80, 0.10, 0.12), (0.45, 0.05, 0.08),
        (0.15, 0.55, 0.20), (0.40, 0.42, 0.15), (0.95, 0.85, 0.20), (0.95, 0.50, 0.10),
        (0.95, 0.60, 0.70), (0.45, 0.20, 0.60), (0.40, 0.25, 0.12), (0.85, 0.75, 0.55),
        (0.10, 0.50, 0.50),
    ],
    dtype=np.float32,
)  # fmt: skip
_TROUSERS = np.array(
    [
        (0.08, 0.08, 0.09), (0.10, 0.13, 0.30), (0.25, 0.35, 0.55), (0.45, 0.45, 0.47),
        (0.80, 0.72, 0.55), (0.35, 0.22, 0.12), (0.90, 0.90, 0.88), (0.60, 0.12, 0.12),
        (0.20, 0.35, 0.20),
    ],
    dtype=np.float32,
)  # fmt: skip
_SKIN = np.array([(0.96, 0.80, 0.69), (0.88, 0.67, 0.52), (0.72, 0.50, 0.36), (0.45, 0.30, 0.20)], np.float32)
_HAIR = np.array([(0.05, 0.04, 0.04), (0.25, 0.15, 0.08), (0.75, 0.60, 0.35), (0.55, 0.55, 0.55)], np.float32)
_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo", "twotone")


# --------------------------------------------------------------------------- re-id: appearance and cameras


@dataclass(frozen=True)
class _Appearance:
    upper: np.ndarray
    upper2: np.ndarray
    pattern: str
    period: float  # stripe period, fraction of body height
    lower: np.ndarray
    skirt: bool
    shorts: bool
    long_sleeves: bool
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    shoes: np.ndarray
    build: float  # width factor
    height: float  # height factor
    bag: np.ndarray | None
    bag_side: int  # -1 left, +1 right (front view)


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 0.05) -> np.ndarray:
    c = palette[rng.integers(len(palette))] + rng.uniform(-jitter, jitter, 3).astype(np.float32)
    return np.clip(c, 0.0, 1.0).astype(np.float32)


def _appearance(rng: np.random.Generator) -> _Appearance:
    upper = _pick(rng, _CLOTHES)
    upper2 = _pick(rng, _CLOTHES)
    while float(np.abs(upper2 - upper).sum()) < 0.6:  # a visible second colour
        upper2 = _pick(rng, _CLOTHES)
    skirt = bool(rng.random() < 0.2)
    return _Appearance(
        upper=upper,
        upper2=upper2,
        pattern=str(_PATTERNS[rng.integers(len(_PATTERNS))]),
        period=float(rng.uniform(0.035, 0.06)),
        lower=_pick(rng, _TROUSERS),
        skirt=skirt,
        shorts=bool(not skirt and rng.random() < 0.2),
        long_sleeves=bool(rng.random() < 0.6),
        skin=_pick(rng, _SKIN, 0.03),
        hair=_pick(rng, _HAIR, 0.03),
        long_hair=bool(rng.random() < 0.3),
        shoes=_pick(rng, _CLOTHES[:4]),
        build=float(rng.uniform(0.8, 1.2)),
        height=float(rng.uniform(0.9, 1.0)),
        bag=_pick(rng, _CLOTHES) if rng.random() < 0.45 else None,
        bag_side=int(rng.choice([-1, 1])),
    )


@dataclass(frozen=True)
class _Camera:
    wall: np.ndarray
    floor: np.ndarray
    horizon: float  # fraction of height
    tile: float  # floor tile period, fraction of width
    bars: tuple[tuple[float, float, tuple[float, float, float]], ...]  # (x centre, width) fractions, colour
    gains: np.ndarray
    gamma: float
    offset: float
    light: float  # -1..1, side the light comes from
    blur: float  # Gaussian blur radius, output pixels
    noise: float  # sensor noise std, 0..1 scale


def _muted(rng: np.random.Generator, low: float, high: float, tint: float) -> np.ndarray:
    """A greyish scene colour: grey level in low..high plus a small per-channel tint."""
    return np.clip(rng.uniform(low, high) + rng.uniform(-tint, tint, 3), 0, 1).astype(np.float32)


def _camera(rng: np.random.Generator) -> _Camera:
    wall = _muted(rng, 0.3, 0.8, 0.12)
    floor = _muted(rng, 0.2, 0.6, 0.08)
    bars = tuple(
        (float(rng.uniform(0, 1)), float(rng.uniform(0.05, 0.25)), tuple(float(v) for v in _muted(rng, 0.1, 0.9, 0.15)))
        for _ in range(int(rng.integers(1, 4)))
    )
    return _Camera(
        wall=wall,
        floor=floor,
        horizon=float(rng.uniform(0.55, 0.8)),
        tile=float(rng.uniform(0.15, 0.4)),
        bars=bars,
        gains=rng.uniform(0.82, 1.18, 3).astype(np.float32),
        gamma=float(rng.uniform(0.8, 1.25)),
        offset=float(rng.uniform(-0.03, 0.05)),
        light=float(rng.uniform(-1, 1)),
        blur=float(rng.choice([0.0, 0.5, 0.9])),
        noise=float(rng.uniform(0.01, 0.04)),
    )


# --------------------------------------------------------------------------- re-id: drawing


def _background(cam: _Camera, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = grid(h, w)
    hz = (cam.horizon + rng.uniform(-0.05, 0.05)) * h
    shift = rng.uniform(-0.15, 0.15) * w  # the detector's crop moves along the scene
    img = np.empty((h, w, 3), np.float32)
    wall = yy < hz
    img[wall] = cam.wall
    depth = np.clip((yy - hz) / max(h - hz, 1.0), 0, 1)[..., None]
    tiles = ((np.floor((xx + shift) / (cam.tile * w)) + np.floor(yy / (cam.tile * w * 0.5))) % 2)[..., None]
    floor = cam.floor * (0.85 + 0.15 * tiles) * (0.8 + 0.3 * depth)
    img[~wall] = floor[~wall]
    for x, bw, colour in cam.bars:
        cx = (x * w + shift) % w
        img[(np.abs(xx - cx) < bw * w * 0.5) & wall] = colour
    for _ in range(int(rng.integers(0, 3))):  # passing clutter: boxes, signs, other objects
        y0, x0 = rng.uniform(0, h), rng.uniform(-0.2 * w, w)
        bh, bw = rng.uniform(0.05, 0.3) * h, rng.uniform(0.1, 0.5) * w
        img[(yy >= y0) & (yy < y0 + bh) & (xx >= x0) & (xx < x0 + bw)] = _muted(rng, 0.1, 0.9, 0.25)
    return img


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _box(yy: np.ndarray, xx: np.ndarray, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
    return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def _person(
    app: _Appearance, cam: _Camera, rng: np.random.Generator, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one person; return (colour layer, mask) on an h x w canvas."""
    yy, xx = grid(h, w)
    layer = np.zeros((h, w, 3), np.float32)
    mask = np.zeros((h, w), bool)
    view = str(rng.choice(["front", "back", "side"], p=[0.4, 0.4, 0.2]))
    ph = h * app.height * rng.uniform(0.88, 0.97)  # body height
    top = rng.uniform(0.02, 0.06) * h + (h * 0.97 - ph - 0.04 * h) * rng.uniform(0.0, 1.0)
    cx = w * 0.5 + rng.uniform(-0.05, 0.05) * w
    half = 0.12 * ph * app.build * (0.7 if view == "side" else 1.0)  # half shoulder width
    side = app.bag_side * (-1 if view == "back" else 1)

    def paint(region: np.ndarray, colour: np.ndarray) -> None:
        layer[region] = colour
        mask[region] = True

    # legs and shoes
    hip, knee, foot = top + 0.52 * ph, top + 0.74 * ph, top + 0.96 * ph
    spread = rng.uniform(0.0, 0.08) * ph if view == "side" else rng.uniform(0.0, 0.03) * ph
    leg_w = 0.05 * ph * app.build
    for sgn in (-1, 1):
        lx = cx + sgn * (0.05 * ph * app.build + spread * 0.5) * (0.3 if view == "side" else 1.0)
        leg = _box(yy, xx, hip, foot, lx - leg_w, lx + leg_w)
        paint(leg, app.skin if (app.skirt or app.shorts) else app.lower)
        if app.shorts:
            paint(leg & (yy < knee - 0.05 * ph), app.lower)
        paint(_box(yy, xx, foot, top + ph, lx - leg_w * 1.1, lx + leg_w * 1.3), app.shoes)
    if app.skirt:
        frac = np.clip((yy - hip) / (0.24 * ph), 0, 1)
        paint((yy >= hip) & (yy < knee) & (np.abs(xx - cx) < half * (0.85 + 0.45 * frac)), app.lower)
    # torso with its pattern
    t0, t1 = top + 0.15 * ph, hip + 0.02 * ph
    torso = (yy >= t0) & (yy < t1) & (np.abs(xx - cx) < half * (1.0 - 0.15 * (yy - t0) / (t1 - t0)))
    paint(torso, app.upper)
    period = app.period * ph
    second = {
        "hstripes": ((yy - t0) // period) % 2 == 1,
        "vstripes": ((xx - cx) // period) % 2 == 1,
        "checks": (((yy - t0) // period + (xx - cx) // period) % 2) == 1,
        "logo": _ellipse(yy, xx, t0 + 0.12 * ph, cx, 0.05 * ph, 0.05 * ph)
        if view == "front"
        else np.zeros_like(torso),
        "twotone": yy >= (t0 + t1) * 0.5,
        "plain": np.zeros_like(torso),
    }[app.pattern]
    paint(torso & second, app.upper2)
    # arms (one visible from the side)
    arm_w = 0.035 * ph * app.build
    for sgn in (-1, 1) if view != "side" else (int(np.sign(cam.light) or 1),):
        ax = cx + sgn * (half + arm_w * 0.6) * (0.3 if view == "side" else 1.0)
        arm = _box(yy, xx, t0 + 0.01 * ph, t0 + 0.36 * ph, ax - arm_w, ax + arm_w)
        paint(arm, app.skin)
        paint(arm & (yy < (t0 + 0.33 * ph if app.long_sleeves else t0 + 0.12 * ph)), app.upper)
    # head and hair
    hy, hr = top + 0.075 * ph, 0.065 * ph
    head = _ellipse(yy, xx, hy, cx, hr * 1.1, hr * 0.9)
    paint(head, app.hair if view == "back" else app.skin)
    paint(head & (yy < hy - 0.35 * hr), app.hair)
    if app.long_hair:
        hair = _box(yy, xx, hy - 0.2 * hr, t0 + 0.12 * ph, cx - hr * 0.95, cx + hr * 0.95)
        paint(hair if view == "back" else hair & ~head, app.hair)
    # bag at the hip, on its side; carried in front of the body
    if app.bag is not None and view != "side":
        bx = cx + side * (half + 0.02 * ph)
        paint(_box(yy, xx, hip - 0.12 * ph, hip + 0.06 * ph, bx - 0.06 * ph, bx + 0.06 * ph), app.bag)
    elif app.bag is not None:
        paint(_box(yy, xx, t0 + 0.05 * ph, hip, cx - half - 0.08 * ph, cx - half + 0.02 * ph), app.bag)
    # round the body with a soft light from the camera's light side
    u = np.clip((xx - cx) / (half * 1.6), -1, 1)
    shade = (0.82 + 0.18 * (1 - u**2)) * (1 + 0.15 * cam.light * u)
    layer *= shade[..., None]
    return layer, mask


def _camera_look(img: np.ndarray, cam: _Camera, rng: np.random.Generator) -> np.ndarray:
    """Apply the camera's colour cast, gamma, blur and noise to an output-size image in 0..1."""
    img = np.clip(img * cam.gains * rng.uniform(0.8, 1.2) + cam.offset, 0, 1) ** cam.gamma
    if cam.blur > 0:
        pil = Image.fromarray(to_uint8(img)).filter(ImageFilter.GaussianBlur(cam.blur))
        img = np.asarray(pil, np.float32) / 255.0
    img = img + rng.normal(0.0, cam.noise * rng.uniform(0.5, 1.5), img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def _render(
    app: _Appearance | None, cam: _Camera, rng: np.random.Generator, h: int, w: int, crop: bool = False
) -> np.ndarray:
    canvas = _background(cam, rng, h, w)
    if app is not None:
        layer, mask = _person(app, cam, rng, h, w)
        if crop:  # junk detection: a badly placed box shows a piece of the person
            dy, dx = int(rng.uniform(0.3, 0.6) * h) * int(rng.choice([-1, 1])), int(rng.uniform(0.2, 0.5) * w)
            layer, mask = np.roll(layer, (dy, dx), (0, 1)), np.roll(mask, (dy, dx), (0, 1))
        canvas[mask] = layer[mask]
        if not crop and rng.random() < 0.15:  # occluder in front: a pole or a passer-by's bag
            yy, xx = grid(h, w)
            x0 = rng.uniform(0, w * 0.8)
            occ = _box(yy, xx, rng.uniform(0.4, 0.8) * h, h, x0, x0 + rng.uniform(0.1, 0.3) * w)
            canvas[occ] = rng.uniform(0.05, 0.9, 3)
    return to_uint8(_camera_look(canvas, cam, rng))


def _save_jpeg(img: np.ndarray, path: Path) -> None:
    Image.fromarray(img).save(path, format="JPEG", quality=_JPEG_QUALITY, subsampling=0)


def write_synthetic_reid(
    out_dir: str | Path,
    *,
    num_ids: int = 40,
    num_query_ids: int | None = None,
    images_per_id_cam: int = 3,
    num_cameras: int = 4,
    size: tuple[int, int] = (128, 64),
    num_junk: int = 4,
    num_distractors: int = 4,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic person re-id data set in the Market-1501 layout; return ``out_dir``.

    ``num_ids`` training identities and ``num_query_ids`` (default: ``num_ids``) test
    identities, disjoint. Each identity appears in 2..``num_cameras`` cameras with
    ``images_per_id_cam`` images per camera. Test identities put one image per camera in
    ``query/`` (only the first camera's if ``images_per_id_cam`` is 1) and the rest in
    ``bounding_box_test/``, so every query has a match in another camera. The gallery
    also gets ``num_junk`` junk (pid -1) and ``num_distractors`` distractor (pid 0000)
    images. ``size`` is (height, width). Names follow Market-1501: ``0002_c1s1_000451_01.jpg``.
    Also writes ``synthetic.json`` (arguments and counts) last: its presence marks a complete set.
    """
    num_ids = check_count("num_ids", num_ids, 1)
    num_query_ids = check_count("num_query_ids", num_ids if num_query_ids is None else num_query_ids, 1)
    if num_ids + num_query_ids > 9999:
        raise FtclipError(f"num_ids + num_query_ids = {num_ids + num_query_ids} exceeds 9999 (4-digit Market names)")
    images_per_id_cam = check_count("images_per_id_cam", images_per_id_cam, 1)
    num_cameras = check_count("num_cameras", num_cameras, 2, 9)
    num_junk = check_count("num_junk", num_junk, 0)
    num_distractors = check_count("num_distractors", num_distractors, 0)
    h, w = check_size(size, (32, 16))
    out = prepare_output(out_dir, (*_REID_DIRS, "synthetic.json"), overwrite)
    for d in _REID_DIRS:
        (out / d).mkdir()

    cams = [_camera(random_stream(seed, _K_CAMERA, c)) for c in range(num_cameras)]
    # Identity numbers 1..N+M, shuffled between train and test as in Market-1501.
    pids = random_stream(seed, _K_PIDS).permutation(np.arange(1, num_ids + num_query_ids + 1))
    train_pids, test_pids = sorted(pids[:num_ids].tolist()), sorted(pids[num_ids:].tolist())
    frames = [0] * num_cameras
    counts = dict.fromkeys(_REID_DIRS, 0)

    def emit(folder: str, pid: int, cam: int, img: np.ndarray) -> None:
        frames[cam] += 25
        seq = 1 + frames[cam] // 100000
        name = "-1" if pid == -1 else f"{pid:04d}"
        _save_jpeg(img, out / folder / f"{name}_c{cam + 1}s{seq}_{frames[cam] % 100000:06d}_01.jpg")
        counts[folder] += 1

    for pid in [*train_pids, *test_pids]:
        id_rng = random_stream(seed, _K_IDENTITY, pid)
        app = _appearance(id_rng)
        seen = sorted(id_rng.choice(num_cameras, size=int(id_rng.integers(2, num_cameras + 1)), replace=False).tolist())
        is_test = pid in test_pids
        for i, cam in enumerate(seen):
            for k in range(images_per_id_cam):
                img = _render(app, cams[cam], random_stream(seed, _K_IMAGE, pid, cam, k), h, w)
                if not is_test:
                    folder = "bounding_box_train"
                elif k == 0 and (images_per_id_cam > 1 or i == 0):
                    folder = "query"
                else:
                    folder = "bounding_box_test"
                emit(folder, pid, cam, img)
    for j in range(num_junk):
        rng = random_stream(seed, _K_JUNK, j)
        cam = int(rng.integers(num_cameras))
        emit("bounding_box_test", -1, cam, _render(_appearance(rng), cams[cam], rng, h, w, crop=True))
    for j in range(num_distractors):
        rng = random_stream(seed, _K_DISTRACTOR, j)
        cam = int(rng.integers(num_cameras))
        app = _appearance(rng) if j % 2 else None  # background only, or a stranger
        emit("bounding_box_test", 0, cam, _render(app, cams[cam], rng, h, w))

    meta = {
        "layout": "market1501",
        "num_ids": num_ids,
        "num_query_ids": num_query_ids,
        "images_per_id_cam": images_per_id_cam,
        "num_cameras": num_cameras,
        "size": [h, w],
        "num_junk": num_junk,
        "num_distractors": num_distractors,
        "seed": int(seed),
        "images": counts,
    }
    (out / "synthetic.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
