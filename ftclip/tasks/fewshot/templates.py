"""Prompt templates: ``"{}"`` is replaced by the class name.

* :data:`DEFAULT_TEMPLATE` -- ``"a photo of a {}."``, CLIP's basic prompt; CLIP-LoRA uses it for
  every data set (its ``datasets/*.py`` override their per-set templates with it).
* :data:`CLIP_IMAGENET_TEMPLATES` -- the 80 ImageNet templates of CLIP's notebook
  ``notebooks/Prompt_Engineering_for_ImageNet.ipynb`` (the same list, in the same order, as
  CoOp's ``trainers/imagenet_templates.py`` and WiSE-FT's ``src/templates/openai_imagenet_template.py``).
* :data:`CLIP_IMAGENET_SELECT` -- the 7 of them the notebook found best together (CoOp's
  ``IMAGENET_TEMPLATES_SELECT``; Tip-Adapter's ImageNet ensemble).
* :data:`COOP_TEMPLATES` -- CoOp's one hand-made template per data set (``CUSTOM_TEMPLATES`` in
  ``trainers/zsclip.py``), which Tip-Adapter and LP++ also use.

:func:`template_set` resolves a recipe's ``templates`` value (a set name or a list of
templates); :func:`fill` writes the prompts, class names first, template inner.
"""

from __future__ import annotations

from collections.abc import Sequence

from ftclip.errors import ConfigError

__all__ = [
    "DEFAULT_TEMPLATE",
    "CLIP_IMAGENET_TEMPLATES",
    "CLIP_IMAGENET_SELECT",
    "COOP_TEMPLATES",
    "TEMPLATE_SETS",
    "template_set",
    "fill",
]

DEFAULT_TEMPLATE = "a photo of a {}."

CLIP_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

CLIP_IMAGENET_SELECT: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: Keyed by the Dassl data set names (see ftclip.tasks.fewshot.formats.dassl).
COOP_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
}

#: Named sets a recipe can ask for; "dataset" means the data set's own templates.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": (DEFAULT_TEMPLATE,),
    "clip_imagenet": CLIP_IMAGENET_TEMPLATES,
    "clip_imagenet_select": CLIP_IMAGENET_SELECT,
}


def _check(template: object, key: str) -> str:
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ConfigError(
            f"{key}: template {template!r} must be a string with exactly one '{{}}' where the class name "
            "goes, e.g. 'a photo of a {}.'"
        )
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        raise ConfigError(
            f"{key}: template {template!r} has braces other than one '{{}}'; double literal ones"
        ) from None
    return template


def template_set(
    value: str | Sequence[str], dataset_templates: Sequence[str] = (), key: str = "templates"
) -> tuple[str, ...]:
    """The templates a recipe value names: ``"dataset"`` (the data set's own), a name in
    :data:`TEMPLATE_SETS`, or an explicit non-empty list of templates."""
    if isinstance(value, str):
        if value == "dataset":
            if not dataset_templates:
                raise ConfigError(f"{key}: 'dataset' asks for the data set's own templates, but it has none")
            return tuple(_check(t, key) for t in dataset_templates)
        if value in TEMPLATE_SETS:
            return TEMPLATE_SETS[value]
        if "{}" in value:
            return (_check(value, key),)
        raise ConfigError(
            f"{key}: {value!r} is not a template set; use dataset, {', '.join(TEMPLATE_SETS)}, "
            "one template with '{}' or a list of them"
        )
    templates = tuple(_check(t, key) for t in value)
    if not templates:
        raise ConfigError(f"{key}: the template list is empty; give at least one, e.g. ['a photo of a {{}}.']")
    return templates


def fill(templates: Sequence[str], classnames: Sequence[str]) -> list[list[str]]:
    """``prompts[t][c]``: template ``t`` filled with class name ``c``."""
    return [[t.format(name) for name in classnames] for t in templates]
