"""A toy third task, built from the task contract alone (ftclip/tasks/base.py), for the test suite only.

Task ``toy``: pull every image's feature towards one text prompt ("a photo."). One stage kind,
``align``; its metric is the mean cosine between the images and the prompt. It touches nothing
of ftclip but the contract's base classes and the generic data pieces, and is registered with
``ftclip.tasks.register_task("toy", "toy_task")``.
"""

from __future__ import annotations

from toy_task.datamodule import ToyDataModule
from toy_task.module import ToyModule
from toy_task.schema import Schema

from ftclip.tasks.base import Task


class ToyTask(Task):
    name = "toy"
    schema = Schema
    stage_kinds = ("align",)
    loss_settings = {"align": ("cosine",)}
    loss_weights = {"align": ("cosine",)}
    default_loss_kinds = ("align",)
    module_class = ToyModule
    datamodule_class = ToyDataModule

    def build_datamodule(self, cfg) -> ToyDataModule:
        datamodule = ToyDataModule(cfg)
        datamodule.load()
        return datamodule

    def build_module(self, cfg, info: dict) -> ToyModule:
        return ToyModule(cfg, info)


TASK = ToyTask()
