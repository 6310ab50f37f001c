"""A data path that keeps up with a GPU: decoded uint8 image cache + batched re-ID augmentation on the device.

JPEG decoding and per-image albumentations on the CPU feed a few thousand images per second
even with 16 cores; a ViT-B/16 re-ID step on an H100 eats more. So (``data.device_cache=true``):

* :func:`build_uint8_cache` decodes every training image once, resizes it to the training
  size with the same :func:`ftclip.data.transforms.resize` (PIL, kernel and all) the CPU
  pipeline starts with, and
  stacks the results into one ``uint8`` tensor ``[N, 3, H, W]`` (Market-1501 at 256x128:
  12,936 x 98,304 B ~ 1.3 GB; at 128x64 ~ 0.3 GB), pinned when CUDA is there;
* :class:`ReidDeviceAugment` applies the rest of :func:`ftclip.data.transforms.reid_train_transform`
  to a batch gathered from that cache, with torch ops on whatever device the batch is on:
  horizontal flip (p ``flip_p``), zero-pad by ``pad`` + random crop back to (H, W) (offsets
  uniform on ``0..2*pad`` inclusive, as ``A.RandomCrop`` draws them), normalise with mean/std,
  then timm "pixel" random erasing (p ``erasing_p``; box area ``U(scale) * H * W``,
  log-uniform aspect ratio, ``round`` to integers, up to 10 attempts with ``0 < h < H`` and
  ``0 < w < W``, top/left uniform inclusive, box filled with N(0, 1) after normalisation --
  exactly :class:`ftclip.data.transforms.PixelErasing`).

The draws are per sample and independent, as in the CPU pipeline, so the two paths agree in
distribution (tests/test_gpu_augment.py checks flip rate, crop offsets, erasing rate and area,
and per-pixel mean/std maps against albumentations); they do not agree sample by sample (a
different random generator). Each batch's draws come from a generator seeded with the
batch's first augmentation seed from the sampler, so a run is reproducible on one device.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch

from ftclip.data.images import read_image
from ftclip.data.transforms import check_interpolation, resize
from ftclip.errors import ConfigError

__all__ = ["build_uint8_cache", "cache_nbytes", "ReidDeviceAugment"]


def cache_nbytes(num_images: int, size: tuple[int, int]) -> int:
    """Bytes a uint8 cache of ``num_images`` RGB images at ``size`` (height, width) takes."""
    return int(num_images) * 3 * int(size[0]) * int(size[1])


def build_uint8_cache(paths: Sequence[str], size: tuple[int, int], interpolation: str = "bicubic", *,
                      workers: int = 4, pin_memory: bool | None = None) -> torch.Tensor:
    """Decode and resize every image once -> ``uint8`` tensor ``[N, 3, H, W]`` (CPU; pinned if CUDA is there).

    The resize is :func:`ftclip.data.transforms.resize`, i.e. the first step of the CPU training
    transform, so the cache holds exactly what that step produces. Unreadable files raise
    :class:`ftclip.errors.DataError` naming the file.
    """
    check_interpolation(interpolation, "model.train_interpolation")
    h, w = (int(s) for s in size)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    out = torch.empty((len(paths), 3, h, w), dtype=torch.uint8, pin_memory=bool(pin_memory))
    view = out.numpy()  # shares memory with ``out``
    def load(i: int) -> None:
        view[i] = resize(read_image(paths[i]), (h, w), interpolation).transpose(2, 0, 1)

    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=int(workers)) as pool:  # PIL decode and resize release the GIL
            list(pool.map(load, range(len(paths))))
    else:
        for i in range(len(paths)):
            load(i)
    return out


class ReidDeviceAugment:
    """The re-ID training augmentation after ``Resize``, batched on the device (see module docstring)."""

    ATTEMPTS = 10

    def __init__(self, size: tuple[int, int], mean: Sequence[float], std: Sequence[float], *, flip_p: float = 0.5,
                 pad: int = 10, erasing_p: float = 0.5, erasing_scale: tuple[float, float] = (0.02, 1 / 3),
                 erasing_ratio: tuple[float, float] = (0.3, 1 / 0.3)):
        for name, value in (("flip_p", flip_p), ("erasing_p", erasing_p)):
            if not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1], got {value}")
        if int(pad) < 0:
            raise ConfigError(f"data.pad must be >= 0, got {pad}")
        self.size = (int(size[0]), int(size[1]))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.flip_p, self.pad, self.erasing_p = float(flip_p), int(pad), float(erasing_p)
        self.erasing_scale = (float(erasing_scale[0]), float(erasing_scale[1]))
        self.erasing_ratio = (float(erasing_ratio[0]), float(erasing_ratio[1]))
        self._generators: dict[str, torch.Generator] = {}
        # erased values: drawn only for the erased pixels (True), or one randn over the whole batch and a
        # select (False, no host sync); None: sparse on the CPU, dense elsewhere. Same distribution.
        self.sparse_noise: bool | None = None

    # ------------------------------------------------------------------ random parameters
    def generator(self, device: torch.device, seed: int) -> torch.Generator:
        """A per-device generator, re-seeded with ``seed``."""
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = self._generators[key] = torch.Generator(device=device)
        gen.manual_seed(int(seed))
        return gen

    def sample_params(self, batch: int, device: torch.device | str = "cpu",
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-sample draws: ``flip`` [B] bool, crop ``top``/``left`` [B] (0..2*pad), ``erase`` [B] bool,
        box ``box_top``/``box_left``/``box_h``/``box_w`` [B] (meaningful where ``erase``)."""
        device = torch.device(device)
        real = torch.float32 if device.type == "mps" else torch.float64
        h, w = self.size

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, device=device, dtype=real, generator=generator)

        flip = rand(batch) < self.flip_p
        span = 2 * self.pad + 1
        top = (rand(batch) * span).floor().long()
        left = (rand(batch) * span).floor().long()

        area = h * w
        lo, hi = self.erasing_scale
        log_lo, log_hi = math.log(self.erasing_ratio[0]), math.log(self.erasing_ratio[1])
        target = (lo + (hi - lo) * rand(batch, self.ATTEMPTS)) * area
        aspect = torch.exp(log_lo + (log_hi - log_lo) * rand(batch, self.ATTEMPTS))
        bh = torch.round(torch.sqrt(target * aspect)).long()  # round half to even, like Python's round
        bw = torch.round(torch.sqrt(target / aspect)).long()
        valid = (bh > 0) & (bh < h) & (bw > 0) & (bw < w)
        first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first attempt that fits
        bh = bh.gather(1, first).squeeze(1)
        bw = bw.gather(1, first).squeeze(1)
        erase = (rand(batch) < self.erasing_p) & valid.any(dim=1)
        bh = torch.where(erase, bh, torch.ones_like(bh))
        bw = torch.where(erase, bw, torch.ones_like(bw))
        box_top = (rand(batch) * (h - bh + 1)).floor().long()
        box_left = (rand(batch) * (w - bw + 1)).floor().long()
        return {"flip": flip, "top": top, "left": left, "erase": erase,
                "box_top": box_top, "box_left": box_left, "box_h": bh, "box_w": bw}

    # ------------------------------------------------------------------ the transform
    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``uint8`` ``[B, 3, H, W]`` (already at the training size) -> normalised float32 ``[B, 3, H, W]``."""
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[2:]) != self.size:
            raise ValueError(f"expected uint8 images [B, 3, {self.size[0]}, {self.size[1]}], got "
                             f"{images.dtype} {tuple(images.shape)}")
        batch, channels, h, w = images.shape
        device = images.device
        p = params if params is not None else self.sample_params(batch, device, generator)

        # flip, then zero-pad + crop: two gathers (rows, then columns) with positions that fall in the
        # padding set to 0 (the pad fill), so they normalise to -mean/std as in albumentations
        rows = p["top"][:, None] + torch.arange(h, device=device) - self.pad  # [B, H] rows of the flipped image
        cols = p["left"][:, None] + torch.arange(w, device=device) - self.pad  # [B, W]
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]  # [B, H, W]
        cols = torch.where(p["flip"][:, None], w - 1 - cols, cols)
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        shape = (batch, channels, h, w)
        moved = images.gather(2, rows[:, None, :, None].expand(shape))
        moved = moved.gather(3, cols[:, None, None, :].expand(shape))
        moved.masked_fill_(~inside[:, None], 0)

        mean = torch.tensor(self.mean, device=device, dtype=torch.float32).view(1, channels, 1, 1)
        std = torch.tensor(self.std, device=device, dtype=torch.float32).view(1, channels, 1, 1)
        out = moved.to(torch.float32).div_(255.0).sub_(mean).div_(std)

        if self.erasing_p > 0:
            yy = torch.arange(h, device=device)[None, :]
            xx = torch.arange(w, device=device)[None, :]
            in_rows = (yy >= p["box_top"][:, None]) & (yy < (p["box_top"] + p["box_h"])[:, None])  # [B, H]
            in_cols = (xx >= p["box_left"][:, None]) & (xx < (p["box_left"] + p["box_w"])[:, None])  # [B, W]
            box = (in_rows[:, :, None] & in_cols[:, None, :] & p["erase"][:, None, None])[:, None]  # [B, 1, H, W]
            sparse = self.sparse_noise if self.sparse_noise is not None else device.type == "cpu"
            if sparse:  # draw only the erased values (CPU: a full-batch randn costs more than the rest)
                count = channels * int((p["box_h"] * p["box_w"])[p["erase"]].sum())
                if count:
                    noise = torch.randn(count, device=device, dtype=out.dtype, generator=generator)
                    out.masked_scatter_(box.expand(shape), noise)
            else:  # one randn over the batch and no host sync (accelerators)
                noise = torch.randn(shape, device=device, dtype=out.dtype, generator=generator)
                out = torch.where(box, noise, out)
        return out.contiguous()
