"""Prompt templates: the CLIP ImageNet ensemble, CoOp's per-data-set templates, recipe values."""

from __future__ import annotations

import pytest

from ftclip.errors import ConfigError
from ftclip.tasks.fewshot.templates import (
    CLIP_IMAGENET_SELECT,
    CLIP_IMAGENET_TEMPLATES,
    COOP_TEMPLATES,
    fill,
    template_set,
)


def test_the_clip_imagenet_ensemble() -> None:
    assert len(CLIP_IMAGENET_TEMPLATES) == 80 == len(set(CLIP_IMAGENET_TEMPLATES))
    assert all(t.count("{}") == 1 for t in CLIP_IMAGENET_TEMPLATES)
    assert CLIP_IMAGENET_TEMPLATES[0] == "a bad photo of a {}." and CLIP_IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."
    assert set(CLIP_IMAGENET_SELECT) <= set(CLIP_IMAGENET_TEMPLATES) and len(CLIP_IMAGENET_SELECT) == 7
    assert COOP_TEMPLATES["EuroSAT"] == "a centered satellite photo of {}."
    assert COOP_TEMPLATES["DescribableTextures"] == "{} texture."


def test_recipe_values() -> None:
    own = ("{} texture.",)
    assert template_set("dataset", own) == own
    assert template_set("clip_imagenet") == CLIP_IMAGENET_TEMPLATES
    assert template_set("default") == ("a photo of a {}.",)
    assert template_set("a sketch of a {}.") == ("a sketch of a {}.",)
    assert template_set(["a {}.", "the {}."]) == ("a {}.", "the {}.")
    assert fill(["a {}.", "the {}."], ["cat", "dog"]) == [["a cat.", "a dog."], ["the cat.", "the dog."]]
    with pytest.raises(ConfigError, match="'imagenet80' is not a template set"):
        template_set("imagenet80")
    with pytest.raises(ConfigError, match="exactly one"):
        template_set(["a {} of {}."])
    with pytest.raises(ConfigError, match="list is empty"):
        template_set([])
    with pytest.raises(ConfigError, match="braces other than"):
        template_set(["a {} {x}."])
