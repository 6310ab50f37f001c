"""Every numeric recipe key declares its domain, and every value outside it is one ConfigError naming
the key, the value and the domain -- before a run directory, data or model exists.

The cases are generated from the schema dataclasses of every registered task (ftclip/domains.py),
not listed by hand: a new key without a domain, or a domain the validation misses, fails here.
"""

from __future__ import annotations

import math
import typing

import pytest
import yaml
from omegaconf import OmegaConf

from ftclip.cli import main
from ftclip.domains import AnyOf, Each, Interval, OneOf, domain_of, entry_type, is_numeric, show, violations, walk
from ftclip.errors import ConfigError
from ftclip.recipe import bundled_recipes, load_recipe, validate
from ftclip.tasks import get_task, task_names

RECIPE = "recipes/demo/reid_synthetic.yaml"


def _recipe_of(task: str):
    """A bundled recipe of ``task`` that loads as it is."""
    for path in bundled_recipes():
        if (yaml.safe_load(path.read_text()) or {}).get("task") != task:
            continue
        try:
            return path, load_recipe(path)
        except ConfigError:
            continue
    raise AssertionError(f"task '{task}' has no bundled recipe that loads without overrides (recipes/demo/...)")


def _yaml(value) -> str:
    """A value as an override writes it."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return '"' + value + '"'
    return repr(value)


def _bad_values(task: str) -> tuple[str, list[dict]]:
    """A bundled recipe of ``task`` and rounds of bad values: round ``r`` gives every key with a domain its
    ``r``-th value outside it (entries of a mapping of sections: one the recipe has, e.g. its first stage)."""
    path, cfg = _recipe_of(task)
    outside: dict[str, tuple] = {}
    for key, field, kind in walk(get_task(task).schema):
        domain = domain_of(field)
        if domain is None:
            continue
        parts = key.split(".")
        if "<name>" in parts:
            at = parts.index("<name>")
            mapping = OmegaConf.select(cfg, ".".join(parts[:at]))
            parts[at] = next(iter(mapping)) if mapping else "walk"
        outside[".".join(parts)] = (domain, domain.outside())
    rounds = max(len(values) for _, values in outside.values())
    return str(path), [{key: (domain, values[r]) for key, (domain, values) in outside.items() if len(values) > r}
                       for r in range(rounds)]


@pytest.mark.parametrize("task", task_names())
def test_each_value_outside_its_domain_is_named_with_key_value_and_domain(task):
    """Fed through the recipe's own validation (the typed merge, then the domain walk), round by round."""
    recipe, rounds = _bad_values(task)
    plain = OmegaConf.to_container(load_recipe(recipe), resolve=True)
    schema = get_task(task).schema
    assert sum(len(r) for r in rounds) >= 20
    for bad in rounds:
        raw = OmegaConf.create(plain)
        for key, (domain, value) in bad.items():
            assert not domain.contains(value), (key, value)
            OmegaConf.update(raw, key, value, merge=False, force_add=True)
        with pytest.raises(ConfigError) as info:
            validate(raw, recipe)
        assert "\n" not in str(info.value) and "is not allowed: it must be" in str(info.value)
        found = violations(OmegaConf.merge(OmegaConf.structured(schema), raw), schema)
        for key, (domain, value) in bad.items():
            line = next((f for f in found if f.startswith(f"{key}=")), None)
            assert line is not None, f"{key}={show(value)} was not refused"
            assert line.endswith(f"is not allowed: it must be {domain.text}"), line
            if not isinstance(value, (dict, list)):  # (an int given to a float key reads back as a float)
                shown = {show(value)} | ({show(float(value))} if isinstance(value, int) else set())
                assert any(line.startswith(f"{key}={text} is not allowed") for text in shown), line
        assert len(found) == len(bad), [f for f in found if f.split("=")[0] not in bad]


def test_a_bad_override_is_refused_by_load_recipe():
    with pytest.raises(ConfigError, match=r"overrides stages.image.epochs=0\): stages.image.epochs=0 is not allowed: "
                                          r"it must be an integer >= 1 \(to evaluate without training, use `ftclip eval"):
        load_recipe(RECIPE, ["stages.image.epochs=0"])


@pytest.mark.parametrize("task", task_names())
def test_every_numeric_key_of_every_task_declares_a_domain(task):
    undeclared = [key for key, field, kind in walk(get_task(task).schema)
                  if is_numeric(kind) and domain_of(field) is None]
    assert not undeclared, f"numeric keys without a domain (use ftclip.domains.within): {undeclared}"


@pytest.mark.parametrize("recipe", bundled_recipes(), ids=lambda p: p.stem)
def test_every_bundled_recipe_is_inside_the_domains(recipe):
    try:
        load_recipe(recipe)
    except ConfigError as exc:  # a recipe that needs the user's data path: give one
        assert "required key(s) without a value" in str(exc), str(exc)
        missing = str(exc).split("without a value: ")[1].split(";")[0].split(", ")
        load_recipe(recipe, [f"{key}=/data/x" for key in missing])


def test_domain_semantics():
    assert Interval(1, integer=True).contains(3) and not Interval(1, integer=True).contains(True)
    assert not Interval(0, low_open=True).contains(0) and not Interval().contains(math.nan)
    assert not Interval(0, 1).contains(float("inf")) and Interval(0, 1).contains(1)
    assert OneOf("a", "b").contains("a") and not OneOf(-1).contains("-1") and OneOf(-1).contains(-1)
    either = OneOf(-1) | Interval(1, integer=True)
    assert isinstance(either, AnyOf) and either.contains(-1) and not either.contains(0) and either.contains(7)
    assert 0 in either.outside()
    three = Each(Interval(0, low_open=True), length=3)
    assert three.contains([1.0, 2, 3.5]) and not three.contains([1, 2]) and not three.contains([0, 1, 1])
    assert Each(Interval(0), mapping=True).contains({"id": 1.0}) and not Each(Interval(0), mapping=True).contains([1])


def test_precision_names_are_lightnings():
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    from ftclip.config import PRECISIONS

    assert set(PRECISIONS) == set(typing.get_args(_PRECISION_INPUT_STR)) | set(typing.get_args(_PRECISION_INPUT_STR_ALIAS))


def test_stage_entries_are_walked_by_their_dataclass():
    from ftclip.config import RecipeBase, StageConfig

    assert entry_type(typing.get_type_hints(RecipeBase)["stages"]) is StageConfig


# --------------------------------------------------------------------------- the cases, end to end


@pytest.mark.parametrize("override, key", [
    ("data.batch_size=0", "data.batch_size"),  # hung in the P x K sampler
    ("data.batch_size=-8", "data.batch_size"),
    ("stages.image.batch_size=-4", "stages.image.batch_size"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("seed=-1", "seed"),
    ("trainer.ckpt_every_n_steps=-1", "trainer.ckpt_every_n_steps"),
    ("stages.image.optimizer.lr=.nan", "stages.image.optimizer.lr"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("model.std=[0,0,0]", "model.std"),
])
def test_bad_values_stop_fit_with_one_line_and_no_run_directory(tmp_path, capsys, override, key):
    run = tmp_path / "run"
    assert main(["fit", RECIPE, f"run.dir={run}", "data.root=/nowhere", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ftclip: error: ") and "\n" not in err, err
    assert f"{key}=" in err and "is not allowed: it must be" in err
    assert not run.exists()


def test_docs_list_every_domain():
    """docs/resilience.md's tables are the real domains (regenerate them when a key changes)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "resilience.md").read_text()
    missing = [f"| `{key}` | {domain_of(field).text} |" for task in task_names()
               for key, field, _ in walk(get_task(task).schema)
               if domain_of(field) is not None and f"| `{key}` | {domain_of(field).text} |" not in doc]
    assert not missing, "docs/resilience.md lacks:\n" + "\n".join(missing)
