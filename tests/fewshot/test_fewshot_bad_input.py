"""Issue 12, item 7: through `ftclip fit`, every bad few-shot input is one line naming what is wrong and what to
do, before any model is built; the half-made run directory is removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fit_helpers import image, image_tree, write_recipe

from ftclip.cli import main


def _good(root: Path) -> Path:
    return image_tree(root, {"train": {"cat": 3, "dog": 3}, "test": {"cat": 1, "dog": 1}})


def _few_cats(root):
    image_tree(root, {"train": {"cat": 1, "dog": 3}, "test": {"cat": 1, "dog": 1}})
    return {}


def _empty_class(root):
    _good(root)
    (root / "train" / "bird").mkdir()
    (root / "train" / "bird" / "readme.txt").write_text("no images here")
    return {}


def _test_only_class(root):
    _good(root)
    image(root / "test" / "fox" / "0.png")
    return {}


def _duplicate_names(root):
    _good(root)
    image_tree(root, {"train": {"red_fox": 3, "red fox": 3}})
    return {}


def _classnames_mismatch(root):
    _good(root)
    (root / "names.json").write_text(json.dumps({"cat": "tabby cat", "wolf": "grey wolf"}))
    return {"data": {"classnames": str(root / "names.json")}}


def _csv_unknown_label(root):
    _good(root)
    (root / "labels.csv").write_text("path,label,split\ntrain/cat/cat_0.png,cat,train\ntrain/dog/dog_0.png,dog,train\n"
                                     "test/cat/cat_0.png,cat,test\ntest/dog/dog_0.png,dgo,test\n")
    return {"data": {"format": "csv", "root": None, "csv": str(root / "labels.csv")}}


def _zero_shots(root):
    _good(root)
    return {"data": {"shots": 0}}


def _corrupt_shot(root):
    _good(root)
    (root / "train" / "cat" / "cat_0.png").write_bytes(b"")
    return {"data": {"shots": 3}}


@pytest.mark.parametrize("make, message", [
    (_few_cats, "1 class(es) have fewer than data.shots=2 training images: 'cat' (1). Lower data.shots to 1"),
    (_empty_class, "holds no images (1 other file(s), 0 sub-folder(s)"),
    (_test_only_class, "test class folder(s) 'fox' have no folder in"),
    (_duplicate_names, "classes 'red fox', 'red_fox' all get the class name 'red fox'"),
    (_classnames_mismatch, "does not match the 2 classes of folder: it lacks class(es) 'dog'; it names class(es) the "
                           "data set does not have: 'wolf'"),
    (_csv_unknown_label, "1 row(s) have labels no train row has: 'dgo' (line 5)"),
    (_zero_shots, "data.shots=0 is not allowed: it must be an integer >= 1"),
    (_corrupt_shot, "is empty (0 bytes)"),
], ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "")
def test_bad_input_is_one_error_before_any_model(tmp_path, monkeypatch, capsys, make, message):
    from ftclip.backbone import Backbone

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the bad input was found")

    monkeypatch.setattr(Backbone, "from_config", classmethod(no_model))
    root = tmp_path / "data"
    extra = make(root)
    recipe = write_recipe(tmp_path / "r.yaml", root, {"zs": {"kind": "zeroshot"}},
                          run={"dir": str(tmp_path / "run")}, **extra)
    assert main(["fit", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftclip: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_skip_drops_an_unreadable_image_and_draws_the_shots_again(tmp_path, capsys):
    from ftclip.recipe import load_recipe
    from ftclip.tasks import get_task

    root = image_tree(tmp_path / "data", {"train": {"cat": 4, "dog": 4}, "test": {"cat": 2, "dog": 2}})
    recipe = write_recipe(tmp_path / "r.yaml", root, {"zs": {"kind": "zeroshot"}})
    cfg = load_recipe(recipe, ["data.shots=3", "data.val_shots=1"])
    drawn = get_task("fewshot").build_datamodule(cfg).split
    victim = drawn.train[0][0]
    Path(victim).write_bytes(b"broken")
    with pytest.raises(Exception, match="1 of 12 images are unreadable"):
        get_task("fewshot").build_datamodule(cfg)
    cfg.data.on_bad_image = "skip"
    datamodule = get_task("fewshot").build_datamodule(cfg)
    split = datamodule.split
    assert victim not in {p for p, _ in split.train + split.val + split.test}
    assert len(split.train) == 6 and datamodule.bad_images[0][0] == victim
    assert "skipped 1 unreadable training/evaluation image(s)" in capsys.readouterr().out
