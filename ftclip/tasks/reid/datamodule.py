"""Re-ID data: parse once, check images, then serve the loader each stage needs.

* stage ``prompts``: indices into the cached training features (the module holds the cache);
* stage ``image``: P x K batches of augmented training images;
* ``cache_dataloader``: training images, test transform, in order (to build the stage-1 cache);
* validation: query then gallery, test transform, sharded over ranks and gathered by index.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ftclip.data.images import check_images, read_image
from ftclip.data.module import StagedDataModule
from ftclip.data.samplers import PKBatchSampler, ShardSampler
from ftclip.data.transforms import apply, eval_transform, reid_train_transform
from ftclip.errors import FtclipError
from ftclip.tasks.reid.formats import ReidDataset, ReidSample, load_reid_dataset


class ReidImages(Dataset):
    """Images with (pid, camid, index); an item key is an index or an (index, aug_seed) pair."""

    def __init__(self, samples: list[ReidSample], transform):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        image = apply(self.transform, read_image(sample.path), seed)
        return {"image": image, "pid": sample.pid, "camid": sample.camid, "index": index}


class CachedSamples(Dataset):
    """``data.device_cache``: (index, aug_seed) -> labels only; the module gathers and augments the image."""

    def __init__(self, samples: list[ReidSample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        sample = self.samples[index]
        return {"pid": sample.pid, "camid": sample.camid, "index": index, "seed": seed}


class Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return {"index": index}


def _path(sample: ReidSample) -> str:
    return sample.path


class ReidDataModule(StagedDataModule):
    def __init__(self, cfg, preprocess_size: tuple[int, int], mean, std, interpolation: str | None = None):
        super().__init__(cfg, preprocess_size, mean, std, interpolation, stage_kind="image")
        self.dataset: ReidDataset | None = None
        self._image_cache: torch.Tensor | None = None  # data.device_cache: decoded uint8 training images

    # ------------------------------------------------------------------ parsing
    def load(self) -> ReidDataset:
        """Parse the data set and decode every image once (policy ``data.on_bad_image``)."""
        if self.dataset is not None:
            return self.dataset
        data = self.cfg.data
        if data.synthetic and not Path(data.root).exists():
            from ftclip.tasks.reid.synthetic import write_synthetic_reid

            print(f"writing the synthetic re-ID set to {data.root} (data.synthetic=true)", flush=True)
            write_synthetic_reid(data.root, num_ids=int(data.synthetic_ids), seed=int(self.cfg.seed))
        dataset = load_reid_dataset(data.format, data.root, csv_path=data.csv)
        where = f"of {dataset.name} data at {dataset.root}"
        dataset = replace(dataset, **{split: self.drop_repeats(getattr(dataset, split), _path, f"the {split} split {where}")
                                      for split in ("train", "query", "gallery")})
        if data.check_images:
            every = dataset.train + dataset.query + dataset.gallery
            _, bad = check_images([s.path for s in every], policy=data.on_bad_image,
                                  workers=max(1, int(data.num_workers)))
            if bad:
                skip = {path for path, _ in bad}
                self.bad_images = bad
                names = ", ".join(path for path, _ in bad[:5])
                print(f"skipped {len(bad)} unreadable image(s) (data.on_bad_image=skip): {names}"
                      + (" ..." if len(bad) > 5 else ""))
                dataset = replace(dataset, **{split: [s for s in getattr(dataset, split) if s.path not in skip]
                                              for split in ("train", "query", "gallery")})
        self.dataset = dataset
        self._check_pk_batches(dataset)
        return dataset

    def _check_pk_batches(self, dataset: ReidDataset) -> None:
        """P x K stages fail here, before any model is built, if their batch cannot be formed."""
        pids = [s.pid for s in dataset.train]
        for name, stage in self.cfg.stages.items():
            if stage.kind == "image":
                try:
                    PKBatchSampler(pids, int(stage.batch_size or self.cfg.data.batch_size),
                                   int(self.cfg.data.num_instances))
                except FtclipError as exc:
                    raise type(exc)(f"stage '{name}': {exc}") from None

    @property
    def info(self) -> dict:
        ds = self.load()
        return {"num_ids": ds.num_train_pids, "num_cameras": ds.num_cameras, "vehicle": ds.vehicle}

    def train_dataloader(self) -> DataLoader:
        ds = self.load()
        rank, world = self._rank()
        seed = int(self.cfg.seed)
        if self.stage_kind == "prompts":
            sampler = ShardSampler(len(ds.train), shuffle=True, seed=seed, rank=rank, world_size=world, pad=True)
            return self.train_loader(Indices(len(ds.train)), workers=0, sampler=sampler,
                                     batch_size=self.stage_batch_size)
        d = self.cfg.data
        transform = reid_train_transform(self.size, self.mean, self.std, flip_p=d.flip_p, pad=d.pad,
                                         erasing_p=d.erasing_p, interpolation=self.train_interpolation)
        sampler = PKBatchSampler([s.pid for s in ds.train], self.stage_batch_size, int(d.num_instances),
                                 seed=seed, rank=rank, world_size=world)
        if d.device_cache:  # the sampler still decides the batches; images come from train_image_cache()
            return self.train_loader(CachedSamples(ds.train), workers=0, batch_sampler=sampler)
        return self.train_loader(ReidImages(ds.train, transform), batch_sampler=sampler)

    def train_image_cache(self) -> torch.Tensor:
        """``data.device_cache``: every training image decoded and resized once (the training transform's
        resize, ``model.train_interpolation``), uint8 [N, 3, H, W] (CPU)."""
        if self._image_cache is None or tuple(self._image_cache.shape[2:]) != tuple(self.size):
            from ftclip.tasks.reid.gpu_augment import build_uint8_cache

            paths = [s.path for s in self.load().train]
            self._image_cache = build_uint8_cache(paths, self.size, self.train_interpolation,
                                                  workers=max(1, int(self.cfg.data.num_workers)))
        return self._image_cache

    def device_augment(self):
        """The training augmentation of :meth:`train_dataloader`, batched with torch ops (any device)."""
        from ftclip.tasks.reid.gpu_augment import ReidDeviceAugment

        d = self.cfg.data
        return ReidDeviceAugment(self.size, self.mean, self.std, flip_p=d.flip_p, pad=d.pad, erasing_p=d.erasing_p)

    def cache_dataloader(self) -> DataLoader:
        ds = self.load()
        transform = eval_transform(self.size, self.mean, self.std, interpolation=self.interpolation)
        return self.eval_loader(ReidImages(ds.train, transform), batch_size=int(self.cfg.eval.batch_size),
                            shuffle=False)

    def eval_samples(self) -> list[ReidSample]:
        ds = self.load()
        return ds.query + ds.gallery

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        transform = eval_transform(self.size, self.mean, self.std, interpolation=self.interpolation)
        samples = self.eval_samples()
        sampler = ShardSampler(len(samples), shuffle=False, rank=rank, world_size=world, pad=False)
        return self.eval_loader(ReidImages(samples, transform), sampler=sampler, batch_size=int(self.cfg.eval.batch_size))

    def summary(self) -> str:
        return self.load().summary()

    def check_splits(self) -> dict[str, list[tuple[str, dict]]]:
        ds = self.load()
        # the data set's own identities (training labels are relabelled 0..n-1 for the classifier)
        splits = {"train": [(s.path, {"id": ds.identity(s.pid), "camera": s.camid}) for s in ds.train]}
        splits.update({name: [(s.path, {"id": s.pid, "camera": s.camid}) for s in getattr(ds, name)]
                       for name in ("query", "gallery")})
        return splits
