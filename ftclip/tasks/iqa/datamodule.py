"""Image-quality data: parse once, check images, then serve the loader each stage needs.

* stage ``qualiclip``: unlabeled images (``data.images``). Per image and epoch: two random
  overlapping crops of ``model.image_size`` (they share between ``data.min_overlap`` and
  ``data.max_overlap`` of their area), one distortion drawn from ``data.distortions``, both
  crops degraded at levels 1..L with the same seed -> ``crops`` ``[2, L, 3, H, W]``
  (index 0 along L = least degraded). Deterministic per (seed, epoch, image).
* stage ``mos``: a labeled set (``data.format`` / ``data.root`` / ``data.split``) resized to
  ``model.image_size`` with a horizontal flip; MOS mapped to [0, 1] (``data.mos_range`` or the
  format's scale).
* validation: every set in ``eval.sets`` concatenated, resized to ``model.image_size``, sharded
  over ranks and gathered by index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ftclip.data.images import check_images, list_images, read_image
from ftclip.data.module import StagedDataModule
from ftclip.data.samplers import ShardSampler
from ftclip.data.transforms import Normalize, Resize, apply, eval_transform, normalize, resize
from ftclip.errors import ConfigError, DataError
from ftclip.tasks.iqa.degradations import degrade_levels
from ftclip.tasks.iqa.formats import IqaSample, iqa_summary, load_iqa_dataset, resolve_format


BUILTIN_EVAL_SETS = ("koniq", "spaq", "kadid", "livec", "csv", "synthetic", "synthetic_transfer")
#: the synthetic sets' files under data.synthetic_dir (their root when eval.<name>.root is null)
SYNTHETIC_EVAL_FILES = {"synthetic": "eval.csv", "synthetic_transfer": "transfer.csv"}


@dataclass
class EvalSet:
    name: str
    samples: list[IqaSample]


def overlapping_crops(height: int, width: int, crop: tuple[int, int], rng: np.random.Generator,
                      min_overlap: float = 0.5, max_overlap: float = 0.9) -> tuple[tuple[int, int], tuple[int, int]]:
    """Top-left corners of two ``crop``-sized windows inside ``height x width`` whose shared area
    is a fraction in ``[min_overlap, max_overlap]`` of a crop's area (as close as the image allows)."""
    ch, cw = crop
    y1 = int(rng.integers(0, height - ch + 1))
    x1 = int(rng.integers(0, width - cw + 1))
    best, best_gap = (y1, x1), math.inf
    for _ in range(32):
        target = rng.uniform(min_overlap, max_overlap)
        # split the lost area between the two axes: (1 - dy/ch)(1 - dx/cw) = target
        share = rng.uniform(0.0, 1.0)
        fy, fx = target ** share, target ** (1.0 - share)
        dy, dx = int(round((1 - fy) * ch)), int(round((1 - fx) * cw))
        dy *= 1 if rng.random() < 0.5 else -1
        dx *= 1 if rng.random() < 0.5 else -1
        y2 = min(max(y1 + dy, 0), height - ch)
        x2 = min(max(x1 + dx, 0), width - cw)
        overlap = max(0, ch - abs(y2 - y1)) * max(0, cw - abs(x2 - x1)) / (ch * cw)
        if min_overlap <= overlap <= max_overlap:
            return (y1, x1), (y2, x2)
        gap = min(abs(overlap - min_overlap), abs(overlap - max_overlap))
        if gap < best_gap:
            best, best_gap = (y2, x2), gap
    return (y1, x1), best


def _normalise(image: np.ndarray, mean, std) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(normalize(image, mean, std).transpose(2, 0, 1)))


class QualiclipCrops(Dataset):
    """Unlabeled images -> ``{"crops": [2, L, 3, H, W], "kind": int, "index": int}``."""

    def __init__(self, paths: list[str], size: tuple[int, int], mean, std, levels: int, kinds: list[str],
                 min_overlap: float, max_overlap: float, interpolation: str = "bicubic"):
        self.paths, self.size, self.mean, self.std = paths, size, mean, std
        self.levels, self.kinds = levels, kinds
        self.min_overlap, self.max_overlap = min_overlap, max_overlap
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """Upscale (keeping the aspect) so that two crops with at most ``max_overlap`` overlap fit."""
        h, w = image.shape[:2]
        ch, cw = self.size
        need = 1.0 + (1.0 - self.min_overlap)  # room for a shift along one axis
        scale = max(ch / h, cw / w, 1.0)
        if h * scale < ch * need and w * scale < cw * need:
            scale = max(scale, min(ch * need / h, cw * need / w))
        if scale > 1.0:
            image = resize(image, (max(ch, math.ceil(h * scale)), max(cw, math.ceil(w * scale))), self.interpolation)
        return image

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, index_seed(key))
        rng = np.random.default_rng(seed)
        image = self._fit(read_image(self.paths[index]))
        (y1, x1), (y2, x2) = overlapping_crops(image.shape[0], image.shape[1], self.size, rng,
                                               self.min_overlap, self.max_overlap)
        ch, cw = self.size
        kind_index = int(rng.integers(len(self.kinds)))
        kind = self.kinds[kind_index]
        noise_seed = int(rng.integers(0, 2**31 - 1))
        crops = []
        for y, x in ((y1, x1), (y2, x2)):
            patch = np.ascontiguousarray(image[y:y + ch, x:x + cw])
            levels = degrade_levels(patch, kind, self.levels, seed=noise_seed)
            crops.append(torch.stack([_normalise(level, self.mean, self.std) for level in levels]))
        return {"crops": torch.stack(crops), "kind": kind_index, "index": index}


def index_seed(index: int) -> int:
    return int(np.random.default_rng([index]).integers(0, 2**31 - 1))


class MosImages(Dataset):
    """Labeled images -> ``{"image", "mos" (in [0, 1] if normalised), "index"}``."""

    def __init__(self, samples: list[IqaSample], transform, mos_range: tuple[float, float] | None):
        self.samples, self.transform, self.mos_range = samples, transform, mos_range

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        mos = float(sample.mos)
        if self.mos_range is not None:
            lo, hi = self.mos_range
            mos = (mos - lo) / (hi - lo)
        image = apply(self.transform, read_image(sample.path), seed)
        return {"image": image, "mos": torch.tensor(mos, dtype=torch.float32), "index": index}


def mos_train_transform(size, mean, std, flip_p: float, interpolation: str = "bicubic"):
    import albumentations as A

    h, w = size
    return A.Compose([Resize(h, w, interpolation), A.HorizontalFlip(p=flip_p), Normalize(mean, std)], seed=0)


def _path(sample: IqaSample) -> str:
    return sample.path


class IqaDataModule(StagedDataModule):
    def __init__(self, cfg, preprocess_size: tuple[int, int], mean, std, interpolation: str | None = None):
        super().__init__(cfg, preprocess_size, mean, std, interpolation, stage_kind="qualiclip")
        self.unlabeled: list[str] = []
        self.labeled: list[IqaSample] = []
        self.labeled_format: str | None = None
        self.eval_sets: list[EvalSet] = []
        self._loaded = False

    # ------------------------------------------------------------------ parsing
    def _kinds(self) -> set[str]:
        return {str(stage.kind) for stage in self.cfg.stages.values()}

    def _synthetic(self) -> Path | None:
        data = self.cfg.data
        if not data.synthetic:
            return None
        root = Path(data.synthetic_dir)
        if not all((root / name).is_file() for name in ("eval.csv", "transfer.csv")):
            from ftclip.tasks.iqa.synthetic import write_synthetic_iqa

            print(f"writing the synthetic IQA set to {root} (data.synthetic=true)", flush=True)
            eval_size = data.synthetic_eval_size if data.synthetic_eval_size is not None else self.cfg.model.image_size
            write_synthetic_iqa(root, num_pristine=int(data.synthetic_images),
                                num_eval=int(data.synthetic_eval_images),
                                num_transfer=int(data.synthetic_transfer_images),
                                size=tuple(int(s) for s in data.synthetic_size),
                                eval_size=tuple(int(s) for s in eval_size), levels=int(data.levels),
                                seed=int(self.cfg.seed), overwrite=True)  # eval.csv is written last: redo a partial set
        return root

    def _eval_set_cfg(self, name: str):
        ev = self.cfg.eval
        if name in ev.extra:
            return ev.extra[name]
        if name in BUILTIN_EVAL_SETS:
            return ev[name]
        raise ConfigError(
            f"eval.sets names '{name}', which is neither a built-in set ({', '.join(BUILTIN_EVAL_SETS)}) "
            f"nor a key of eval.extra; add eval.extra.{name}.format=... eval.extra.{name}.root=..."
        )

    def load(self) -> None:
        """Parse every data set the recipe needs and decode each image once (``data.on_bad_image``)."""
        if self._loaded:
            return
        data = self.cfg.data
        synthetic = self._synthetic()
        kinds = self._kinds()
        if "qualiclip" in kinds:
            folders = data.images
            if folders is None and synthetic is not None:
                folders = str(synthetic / "pristine")
            if folders is None:
                raise ConfigError("stage kind 'qualiclip' trains on unlabeled images: set data.images=/path/to/folder "
                                  "(or a list of folders; searched recursively)")
            folders = [folders] if isinstance(folders, str) else list(folders)
            self.unlabeled = sorted({p for f in folders for p in list_images(str(f))})
        if "mos" in kinds:
            root = data.root if data.root is not None else data.csv  # a CSV list is a data set by itself
            if root is None:
                raise ConfigError("stage kind 'mos' trains on MOS labels: set data.root (and data.format: koniq10k, "
                                  "spaq, kadid10k, livec, csv or auto), or data.csv=/path/list.csv")
            self.labeled = self.drop_repeats(
                load_iqa_dataset(data.format, root, split=data.split, csv_path=data.csv, images_dir=data.images_dir),
                _path, f"the labeled set {root}")
            self.labeled_format = resolve_format(data.format, root, csv_path=data.csv).name
        self.eval_sets = []
        for name in self.cfg.eval.sets:
            sc = self._eval_set_cfg(str(name))
            root = sc.root if sc.root is not None else sc.csv  # a CSV list is a data set by itself
            if root is None and str(name) in SYNTHETIC_EVAL_FILES and synthetic is not None:
                root = str(synthetic / SYNTHETIC_EVAL_FILES[str(name)])
            if root is None:
                raise ConfigError(f"eval.sets names '{name}' but eval.{name}.root is not set; "
                                  f"e.g. eval.{name}.root=/data/{name} (or eval.{name}.csv=/path/list.csv)")
            samples = self.drop_repeats(
                load_iqa_dataset(sc.format, root, split=sc.split, csv_path=sc.csv, images_dir=sc.images_dir),
                _path, f"eval set '{name}' ({root})")
            self.eval_sets.append(EvalSet(str(name), samples))
        if data.check_images:
            every = self.unlabeled + [s.path for s in self.labeled] + [s.path for es in self.eval_sets for s in es.samples]
            _, bad = check_images(every, policy=data.on_bad_image, workers=max(1, int(data.num_workers)))
            if bad:
                skip = {path for path, _ in bad}
                self.bad_images = bad
                names = ", ".join(path for path, _ in bad[:5])
                print(f"skipped {len(bad)} unreadable image(s) (data.on_bad_image=skip): {names}"
                      + (" ..." if len(bad) > 5 else ""), flush=True)
                self.unlabeled = [p for p in self.unlabeled if p not in skip]
                self.labeled = [s for s in self.labeled if s.path not in skip]
                self.eval_sets = [EvalSet(es.name, [s for s in es.samples if s.path not in skip]) for es in self.eval_sets]
        if "qualiclip" in kinds and not self.unlabeled:
            raise DataError(f"no readable unlabeled images in {data.images}")
        for es in self.eval_sets:
            if len(es.samples) < 2:
                raise DataError(f"eval set '{es.name}' has {len(es.samples)} readable image(s); SRCC/PLCC need at least 2")
        self._loaded = True

    @property
    def info(self) -> dict:
        self.load()
        return {"eval_sets": [es.name for es in self.eval_sets]}

    def mos_range(self) -> tuple[float, float] | None:
        """What the mos stage maps to [0, 1]: ``data.mos_range``, else the format's scale, else the set's own range."""
        if self.cfg.data.mos_range is not None:
            return tuple(float(v) for v in self.cfg.data.mos_range)  # type: ignore[return-value]
        if self.labeled_format is not None:
            data = self.cfg.data
            root = data.root if data.root is not None else data.csv
            scale = resolve_format(data.format, root, csv_path=data.csv).mos_scale(Path(root).expanduser())
            if scale is not None:
                return scale
        values = [s.mos for s in self.labeled]
        if not values or max(values) == min(values):
            return None
        return (min(values), max(values))  # csv: the training set's own range

    def summary(self) -> str:
        self.load()
        lines = []
        if self.unlabeled:
            d = self.cfg.data
            lines.append(f"unlabeled (stage qualiclip): {len(self.unlabeled)} images; {d.levels} levels of "
                         f"{', '.join(d.distortions)}; 2 crops of {list(self.cfg.model.image_size)} per image")
        if self.labeled:
            lines.append(iqa_summary(f"labeled (stage mos, {self.labeled_format}"
                                     + (f", split {self.cfg.data.split}" if self.cfg.data.split else "") + ")",
                                     self.labeled) + f"; MOS mapped to [0, 1] from {self.mos_range()}")
        for es in self.eval_sets:
            lines.append(iqa_summary(f"eval '{es.name}'", es.samples))
        if not self.eval_sets:
            lines.append("no eval sets (eval.sets is empty): no SRCC/PLCC will be recorded")
        return "\n".join(lines)

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        self.load()
        rank, world = self._rank()
        d = self.cfg.data
        if self.stage_kind == "qualiclip":
            dataset = QualiclipCrops(self.unlabeled, tuple(self.size), self.mean, self.std, int(d.levels),
                                     list(d.distortions), float(d.min_overlap), float(d.max_overlap),
                                     self.train_interpolation)
        else:
            transform = mos_train_transform(self.size, self.mean, self.std, float(d.flip_p), self.train_interpolation)
            dataset = MosImages(self.labeled, transform, self.mos_range())
        sampler = ShardSampler(len(dataset), shuffle=True, seed=int(self.cfg.seed), rank=rank, world_size=world,
                               pad=True)
        return self.train_loader(dataset, sampler=sampler, batch_size=self.stage_batch_size,
                                 drop_last=len(dataset) // world > self.stage_batch_size)

    def eval_samples(self) -> list[tuple[str, IqaSample]]:
        self.load()
        return [(es.name, s) for es in self.eval_sets for s in es.samples]

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        transform = eval_transform(self.size, self.mean, self.std, interpolation=self.interpolation)
        samples = [s for _, s in self.eval_samples()]
        sampler = ShardSampler(len(samples), shuffle=False, rank=rank, world_size=world, pad=False)
        return self.eval_loader(MosImages(samples, transform, None), sampler=sampler,
                            batch_size=int(self.cfg.eval.batch_size))

    def check_splits(self) -> dict[str, list[tuple[str, dict]]]:
        self.load()
        out: dict[str, list[tuple[str, dict]]] = {}
        if self.unlabeled:
            out["unlabeled"] = [(p, {}) for p in self.unlabeled]
        if self.labeled:
            out["labeled"] = [(s.path, {"mos": s.mos}) for s in self.labeled]
        for es in self.eval_sets:
            out[f"eval:{es.name}"] = [(s.path, {"mos": s.mos}) for s in es.samples]
        return out
