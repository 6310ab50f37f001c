"""Stage mos: the MOS scale each labeled layout is mapped to [0, 1] from (CLIP-IQA+ trains on MOS / 100)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ftclip.tasks.iqa import TASK
from ftclip.tasks.iqa.datamodule import IqaDataModule

HEADER = "image_name,c1,c2,c3,c4,c5,c_total,MOS,SD"


def _datamodule(root: Path, fmt: str) -> IqaDataModule:
    cfg = OmegaConf.merge(OmegaConf.structured(TASK.schema), {
        "name": "t", "model": {"name": "ftclip-tiny-vit", "image_size": [64, 64]},
        "data": {"format": fmt, "root": str(root), "check_images": False},
        "strategies": {"antonym": {"context_tokens": 2}},
        "stages": {"m": {"kind": "mos", "train": ["prompts"]}}})
    dm = IqaDataModule(cfg, (64, 64), [0.5] * 3, [0.5] * 3)
    dm.load()
    return dm


def _images(root: Path, *names: str) -> None:
    (root / "1024x768").mkdir()
    for name in names:
        (root / "1024x768" / name).write_bytes(b"")  # never decoded (data.check_images=false)


def _mapped(dm: IqaDataModule) -> list[float]:
    lo, hi = dm.mos_range()
    return [(s.mos - lo) / (hi - lo) for s in dm.labeled]


@pytest.mark.parametrize("fmt", ["koniq10k", "koniq", "auto"])
def test_koniq_distributions_sets_mos_is_on_the_0_100_scale(tmp_path, fmt):
    # the official koniq10k_distributions_sets.csv: MOS on 0-100 (SD on the 1-5 rating scale)
    _images(tmp_path, "a.jpg", "b.jpg", "c.jpg")
    (tmp_path / "koniq10k_distributions_sets.csv").write_text(
        HEADER + ",set\n"
        "a.jpg,0,0,0.238,0.695,0.067,105,77.38,0.53,training\n"
        "b.jpg,0.853,0.147,0,0,0,109,4.47,0.36,training\n"
        "c.jpg,0,0.03,0.47,0.49,0.01,100,68.67,0.59,test\n")
    dm = _datamodule(tmp_path, fmt)
    assert dm.mos_range() == (0.0, 100.0)
    assert _mapped(dm) == pytest.approx([0.7738, 0.0447, 0.6867])


def test_koniq_scores_file_mos_is_on_the_1_5_scale(tmp_path):
    # koniq10k_scores_and_distributions.csv: MOS is the mean 1-5 rating (MOS_zscore is the 0-100 one)
    _images(tmp_path, "a.jpg", "b.jpg")
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(
        HEADER + ",MOS_zscore\n"
        "a.jpg,0,0,0.2,0.7,0.1,100,3.9,0.5,77.4\n"
        "b.jpg,0.8,0.2,0,0,0,100,1.2,0.4,4.5\n")
    dm = _datamodule(tmp_path, "koniq10k")
    assert dm.mos_range() == (1.0, 5.0)
    assert _mapped(dm) == pytest.approx([0.725, 0.05])


@pytest.mark.parametrize(("kind", "losses", "bad"), [
    ("mos", {"msee": 1.0}, "msee"),  # used to train plain MSE silently
    ("mos", {"rank": 1.0, "rank_margn": 0.1}, "rank_margn"),
    ("qualiclip", {"cons": 1.0, "margin_rnak": 0.1}, "margin_rnak"),
    ("qualiclip", {"mse": 1.0}, "mse"),
])
def test_an_unknown_loss_name_is_one_config_error(tmp_path, kind, losses, bad):
    from ftclip.errors import ConfigError

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    cfg = OmegaConf.merge(OmegaConf.structured(TASK.schema), {
        "name": "t", "model": {"name": "ftclip-tiny-vit", "image_size": [64, 64]},
        "data": {"images": str(folder), "format": "csv", "root": str(tmp_path / "none.csv"), "check_images": False},
        "strategies": {"antonym": {"context_tokens": 2}},
        "stages": {"s": {"kind": kind, "train": ["prompts"], "losses": losses}}})
    with pytest.raises(ConfigError, match=rf"stages\.s\.losses\.{bad}") as err:
        TASK.check_config(cfg)
    assert "\n" not in str(err.value)


def test_a_mos_stage_with_every_loss_weight_zero_is_a_config_error(tmp_path):
    from ftclip.errors import ConfigError

    cfg = OmegaConf.merge(OmegaConf.structured(TASK.schema), {
        "name": "t", "model": {"name": "ftclip-tiny-vit", "image_size": [64, 64]},
        "data": {"format": "csv", "root": str(tmp_path / "none.csv")},
        "strategies": {"antonym": {"context_tokens": 2}},
        "stages": {"s": {"kind": "mos", "train": ["prompts"], "losses": {"mse": 0.0}}}})
    with pytest.raises(ConfigError, match=r"stages\.s\.losses"):
        TASK.check_config(cfg)
