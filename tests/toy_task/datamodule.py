"""The toy task's data: every image of ``data.root``, for training and evaluation alike."""

from __future__ import annotations

from torch.utils.data import Dataset

from ftclip.backbone import model_preprocess
from ftclip.data.images import list_images, read_image
from ftclip.data.module import StagedDataModule
from ftclip.data.samplers import ShardSampler
from ftclip.data.transforms import apply, eval_transform


class Images(Dataset):
    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return {"image": apply(self.transform, read_image(self.paths[index])), "index": index}


class ToyDataModule(StagedDataModule):
    def __init__(self, cfg):
        pre = model_preprocess(cfg.model)  # the model's own preprocessing unless the recipe sets it
        super().__init__(cfg, pre.image_size, pre.mean, pre.std, pre.interpolation, stage_kind="align")
        self.paths: list[str] = []

    def load(self):
        if not self.paths:
            self.paths = list_images(self.cfg.data.root)
        return self.paths

    def summary(self) -> str:
        return f"toy: {len(self.load())} images in {self.cfg.data.root}"

    @property
    def info(self) -> dict:
        return {"num_images": len(self.load())}

    def check_splits(self) -> dict[str, list[tuple[str, dict]]]:
        return {"train": [(p, {}) for p in self.load()]}

    def _images(self) -> Images:
        return Images(self.load(), eval_transform(self.size, self.mean, self.std, interpolation=self.interpolation))

    def train_dataloader(self):
        rank, world = self._rank()
        sampler = ShardSampler(len(self.load()), shuffle=True, seed=int(self.cfg.seed), rank=rank, world_size=world)
        return self.train_loader(self._images(), sampler=sampler, batch_size=self.stage_batch_size)

    def val_dataloader(self):
        return self.eval_loader(self._images(), batch_size=int(self.cfg.eval.batch_size))
