"""Few-shot data: parse the data set once, draw the K-shot protocol, decode what the run uses, serve loaders.

* Parsing: ``data.format`` (folder, csv, dassl or auto) at ``data.root`` -> ``ClassificationData``
  (every bad-input check of :mod:`ftclip.tasks.fewshot.dataset` and the formats runs here, before
  any model is built).
* Protocol (:mod:`ftclip.tasks.fewshot.protocol`): ``data.shots`` images per class drawn with
  ``data.seed`` (default: the run's seed), val ``min(K, 4)`` per class, the whole test split;
  ``data.split=base2new`` trains and tests the first ``ceil(n/2)`` classes and tests the rest
  zero-shot. Only those images are decoded (``data.check_images``; with ``data.on_bad_image=skip``
  an unreadable image is dropped from the data set and the shots are drawn again).
* Training images per stage kind (:data:`TRAIN_AUGMENT`): each method's reference augmentation,
  torchvision-style RandomResizedCrop (PIL resize, ``model.train_interpolation``) + horizontal flip,
  seeded per sample by the sampler.
* Evaluation (Lightning's validation loop, after every stage): the test split -- or the base and
  new test splits -- then the optional ``eval.retain`` set and ``eval.captions`` images, all
  concatenated, sharded over ranks and gathered by index. The model's own preprocessing
  (``eval_transform``). The protocol's val split is read only by the module's own selection
  steps (C, Tip-Adapter's beta/alpha, LP++'s epoch) through :meth:`FewshotDataModule.image_loader`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from ftclip.data.images import check_images, read_image
from ftclip.data.samplers import ShardSampler
from ftclip.data.tables import read_table
from ftclip.data.transforms import apply, crop_train_transform, eval_transform
from ftclip.data.module import StagedDataModule
from ftclip.errors import ConfigError, DataError
from ftclip.tasks.fewshot.dataset import ClassificationData, Item, few
from ftclip.tasks.fewshot.formats import LoadOptions, load_classification_data
from ftclip.tasks.fewshot.protocol import FewShotSplit, few_shot_split, subsample_classes
from ftclip.tasks.fewshot.templates import fill, template_set

#: Stage kind -> (RandomResizedCrop scale, horizontal flip probability) of its training images.
TRAIN_AUGMENT: dict[str, tuple[tuple[float, float], float]] = {
    "coop": ((0.08, 1.0), 0.5),  # Dassl random_resized_crop + random_flip
    "clip_lora": ((0.08, 1.0), 0.5),  # CLIP-LoRA main.py
    "tip_adapter_f": ((0.5, 1.0), 0.5),  # Tip-Adapter main.py (fresh augmentations every epoch)
    "finetune": ((0.9, 1.0), 0.0),  # WiSE-FT / FLYP train preprocessing
    "flyp": ((0.9, 1.0), 0.0),
}
#: The augmentation of the Tip-Adapter cache passes and of LP++'s one feature pass.
CACHE_AUGMENT: tuple[tuple[float, float], float] = ((0.5, 1.0), 0.5)


class ClassImages(Dataset):
    """``(path, label)`` items -> ``{"image", "label", "index"}``; keys are ``(index, augmentation seed)``."""

    def __init__(self, items, transform):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.items[index]
        return {"image": apply(self.transform, read_image(path), seed), "label": int(label), "index": index}


class CaptionImages(ClassImages):
    """``(path, caption)`` rows -> ``{"image", "caption", "index"}`` (FLYP's contrastive batches)."""

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, caption = self.items[index]
        return {"image": apply(self.transform, read_image(path), seed), "caption": caption, "index": index}


@dataclass(frozen=True)
class EvalSet:
    """One evaluated set: ``test`` (or ``base`` / ``new``), ``retain``, or ``captions`` (retrieval)."""

    name: str
    items: tuple[Item, ...]  # (path, label); for captions: (path, image index)
    classnames: tuple[str, ...] = ()
    captions: tuple[str, ...] = ()  # captions only: the texts, and the image each one describes
    caption_image: tuple[int, ...] = ()


def read_captions(path: str | Path, what: str) -> list[tuple[str, str]]:
    """``path,caption`` rows (paths relative to the CSV's folder) -> ``[(absolute path, caption), ...]``."""
    file = Path(path).expanduser().absolute()
    if not file.is_file():
        raise DataError(f"{what} {file} does not exist: give a CSV with path,caption columns")
    rows = read_table(file, ["path", "caption"], what)
    bad = [line for line, row in rows if not row["path"] or not row["caption"]]
    if bad:
        raise DataError(f"{what} {file}: line(s) {few(bad)} have an empty path or caption")
    if not rows:
        raise DataError(f"{what} {file} has a header but no rows: add one 'path,caption' row per pair")
    out = []
    for _, row in rows:
        p = Path(row["path"]).expanduser()
        out.append((str(p if p.is_absolute() else (file.parent / p).resolve()), row["caption"]))
    return out


class FewshotDataModule(StagedDataModule):
    def __init__(self, cfg):
        size = tuple(int(s) for s in cfg.model.image_size)
        first = next(iter(cfg.stages.values())).kind if cfg.stages else "zeroshot"
        super().__init__(cfg, size, cfg.model.mean, cfg.model.std, cfg.model.interpolation, stage_kind=str(first))
        self.data: ClassificationData | None = None
        self.split: FewShotSplit | None = None  # what the run trains and selects on (base classes for base2new)
        self.eval_sets: list[EvalSet] = []
        self.flyp_pairs: list[tuple[str, str]] | None = None

    # ------------------------------------------------------------------ parsing
    def _root(self) -> str:
        d = self.cfg.data
        if d.root is None:
            if d.csv is None:
                raise ConfigError("data.root is not set: give the data set folder, e.g. data.root=/data/eurosat "
                                  "(format csv: or the list file, data.csv=labels.csv)")
            return str(Path(d.csv).expanduser().absolute().parent)
        root = Path(d.root).expanduser()
        if d.synthetic and not (root / "synthetic.json").is_file() and (not root.exists() or not any(root.iterdir())):
            from ftclip.tasks.fewshot.synthetic import write_synthetic_fewshot

            print(f"writing the synthetic few-shot set to {root} (data.synthetic=true)", flush=True)
            write_synthetic_fewshot(root, seed=0)
        return str(root)

    def _check(self, paths: list[str], what: str) -> set[str]:
        """Decode ``paths`` once; return the unreadable ones (``data.on_bad_image=skip``; ``error`` raises)."""
        d = self.cfg.data
        if not d.check_images or not paths:
            return set()
        _, bad = check_images(paths, policy=str(d.on_bad_image), workers=max(1, int(d.num_workers)))
        if bad:
            self.bad_images += bad
            print(f"skipped {len(bad)} unreadable {what} image(s) (data.on_bad_image=skip): "
                  f"{few(p for p, _ in bad)}", flush=True)
        return {p for p, _ in bad}

    def _draw(self, data: ClassificationData) -> tuple[ClassificationData, FewShotSplit]:
        """The K-shot split of ``data``; unreadable images (skip policy) leave the data set and the draw is redone."""
        d = self.cfg.data
        seed = int(self.cfg.seed if d.seed is None else d.seed)
        checked: set[str] = set()
        while True:
            split = few_shot_split(data, int(d.shots), seed=seed, val_shots=d.val_shots)
            used = [p for p, _ in split.train + split.val + split.test if p not in checked]
            bad = self._check(used, "training/evaluation")
            checked.update(used)
            if not bad:
                return data, split

            def keep(items):
                return None if items is None else tuple(item for item in items if item[0] not in bad)

            data = replace(data, train=keep(data.train), val=keep(data.val), test=keep(data.test))

    def load(self) -> FewShotSplit:
        if self.split is not None:
            return self.split
        d = self.cfg.data
        options = LoadOptions(csv_path=d.csv, dataset=d.dataset, test_fraction=float(d.test_fraction),
                              seed=int(d.split_seed))
        data = load_classification_data(d.format, self._root(), options=options, classnames_file=d.classnames)
        self.data, full = self._draw(data)
        if str(d.split) == "base2new":
            self.split = subsample_classes(full, "base")
            new = subsample_classes(full, "new")
            self.eval_sets = [EvalSet("base", self.split.test, self.split.classnames),
                              EvalSet("new", new.test, new.classnames)]
        else:
            self.split = full
            self.eval_sets = [EvalSet("test", full.test, full.classnames)]
        self.eval_sets += self._retain() + self._captions()
        if any(stage.kind == "flyp" for stage in self.cfg.stages.values()):
            self.flyp_pairs = self._flyp_pairs()
        return self.split

    def _retain(self) -> list[EvalSet]:
        r = self.cfg.eval.retain
        if r.root is None:
            return []
        data = load_classification_data(r.format, r.root, options=LoadOptions(csv_path=r.csv, dataset=r.dataset),
                                        classnames_file=r.classnames)
        bad = self._check([p for p, _ in data.test], "eval.retain")
        items = tuple(item for item in data.test if item[0] not in bad)
        if not items:
            raise DataError(f"eval.retain ({r.root}) has no readable test image")
        return [EvalSet("retain", items, data.classnames)]

    def _captions(self) -> list[EvalSet]:
        if self.cfg.eval.captions is None:
            return []
        pairs = read_captions(self.cfg.eval.captions, "eval.captions")
        bad = self._check(sorted({p for p, _ in pairs}), "eval.captions")
        pairs = [(p, c) for p, c in pairs if p not in bad]
        images = sorted({p for p, _ in pairs})
        index = {p: i for i, p in enumerate(images)}
        return [EvalSet("captions", tuple((p, i) for i, p in enumerate(images)), (),
                        tuple(c for _, c in pairs), tuple(index[p] for p, _ in pairs))]

    def _flyp_pairs(self) -> list[tuple[str, str]]:
        """FLYP's training pairs: ``strategies.flyp.captions``, else every K-shot image x every template."""
        flyp = self.cfg.strategies.flyp
        if flyp.captions is not None:
            pairs = read_captions(flyp.captions, "strategies.flyp.captions")
            bad = self._check(sorted({p for p, _ in pairs}), "strategies.flyp.captions")
            return [(p, c) for p, c in pairs if p not in bad]
        templates = template_set(self.cfg.strategies.zeroshot.templates, self.data.templates,
                                 "strategies.zeroshot.templates")
        prompts = fill(templates, self.split.classnames)
        return [(path, prompts[t][label]) for path, label in self.split.train for t in range(len(templates))]

    @property
    def info(self) -> dict:
        split = self.load()
        sets = {es.name: list(es.classnames) for es in self.eval_sets}
        return {"classnames": list(split.classnames), "new_classnames": sets.get("new"),
                "retain_classnames": sets.get("retain"), "templates": list(self.data.templates),
                "dataset": self.data.name, "shots": split.shots, "num_train": len(split.train)}

    def summary(self) -> str:
        split = self.load()
        d = self.cfg.data
        lines = [self.data.summary(),
                 f"{split.shots}-shot protocol (seed {split.seed}): train {len(split.train)}, val {len(split.val)} "
                 f"({split.val_shots} per class from {'the val split' if split.val_source == 'val' else 'the rest of train'}), "
                 f"test {len(split.test)}"]
        if split.short_val:
            lines.append(f"warning: class(es) {few(repr(k) for k in split.short_val)} have fewer than "
                         f"{split.val_shots} val images")
        if str(d.split) == "base2new":
            new = self.eval_sets[1]
            lines.append(f"base2new: {split.num_classes} base classes trained and tested, {len(new.classnames)} new "
                         f"classes tested zero-shot ({len(new.items)} images)")
        for es in self.eval_sets:
            if es.name == "retain":
                lines.append(f"retain set: {len(es.classnames)} classes, {len(es.items)} test images (zero-shot)")
            if es.name == "captions":
                lines.append(f"captions: {len(es.items)} images, {len(es.captions)} captions (retrieval R@1/5/10)")
        if self.flyp_pairs is not None:
            lines.append(f"flyp: {len(self.flyp_pairs)} (image, caption) training pairs")
        return "\n".join(lines)

    def check_splits(self) -> dict[str, list[tuple[str, dict]]]:
        split = self.load()
        out = {name: [(p, {"label": split.classnames[y]}) for p, y in getattr(split, name)]
               for name in ("train", "val")}
        for es in self.eval_sets:
            out[es.name] = [(p, {}) for p, _ in es.items]
        return out

    # ------------------------------------------------------------------ loaders
    def _eval_transform(self):
        return eval_transform(self.size, self.mean, self.std, interpolation=self.interpolation)

    def _train_transform(self, scale: tuple[float, float], flip_p: float):
        return crop_train_transform(self.size, self.mean, self.std, scale=scale, flip_p=flip_p,
                                    interpolation=self.train_interpolation)

    def image_loader(self, split: str, augment: tuple[tuple[float, float], float] | None = None,
                     epoch: int = 0) -> DataLoader:
        """Every image of ``split`` ("train" or "val") in order, on every rank (no sharding), for the
        module's own fitting steps: test preprocessing, or ``augment`` = (crop scale, flip p) seeded by
        (run seed, ``epoch``), so each augmented pass differs and the same images come in the same order."""
        items = getattr(self.load(), split)
        transform = self._eval_transform() if augment is None else self._train_transform(*augment)
        sampler = ShardSampler(len(items), shuffle=False, seed=int(self.cfg.seed), pad=False)
        sampler.set_epoch(epoch)
        return self.eval_loader(ClassImages(items, transform), sampler=sampler, batch_size=int(self.cfg.eval.batch_size))

    def train_dataloader(self) -> DataLoader:
        split = self.load()
        rank, world = self._rank()
        if self.stage_kind == "flyp":
            dataset = CaptionImages(self.flyp_pairs, self._train_transform(*TRAIN_AUGMENT["flyp"]))
        elif self.stage_kind in TRAIN_AUGMENT:
            dataset = ClassImages(split.train, self._train_transform(*TRAIN_AUGMENT[self.stage_kind]))
        else:  # a closed-form stage: Lightning asks for a loader it never iterates (0 optimizer steps)
            return self.eval_loader(ClassImages(split.train, self._eval_transform()), batch_size=self.stage_batch_size)
        sampler = ShardSampler(len(dataset), shuffle=True, seed=int(self.cfg.seed), rank=rank, world_size=world, pad=True)
        return self.train_loader(dataset, sampler=sampler, batch_size=self.stage_batch_size,
                                 drop_last=len(dataset) // world > self.stage_batch_size)

    def eval_items(self) -> list[tuple[str, Item]]:
        """``(set name, (path, label))`` of every evaluated image, in loader index order."""
        self.load()
        return [(es.name, item) for es in self.eval_sets for item in es.items]

    def eval_image_loader(self) -> DataLoader:
        """Every evaluated image in :meth:`eval_items` order, on every rank (WiSE-FT's sweep)."""
        items = [item for _, item in self.eval_items()]
        return self.eval_loader(ClassImages(items, self._eval_transform()), batch_size=int(self.cfg.eval.batch_size))

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank()
        items = [item for _, item in self.eval_items()]
        sampler = ShardSampler(len(items), shuffle=False, rank=rank, world_size=world, pad=False)
        return self.eval_loader(ClassImages(items, self._eval_transform()), sampler=sampler,
                                batch_size=int(self.cfg.eval.batch_size))
