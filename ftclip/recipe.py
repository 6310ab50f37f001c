"""Recipes: YAML -> typed, validated config.

A recipe is a YAML file. It may start with a ``defaults:`` list naming pieces under
``configs/`` (``model/vit_b16``, ``trainer/gpu``, ...) that are merged first, in order; the
recipe's own keys go on top, then command-line overrides ``a.b=value``. The result is merged
into the task's structured schema (the shared pieces in :mod:`ftclip.config`, the task's own in
``ftclip/tasks/<task>/schema.py``), so an unknown key, a wrong type, a missing required value or
a value outside the key's domain (:mod:`ftclip.domains`) is one :class:`ConfigError` naming the
key -- before any run directory, model or data is touched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ftclip.config import REPO_ROOT
from ftclip.domains import check_values
from ftclip.errors import ConfigError
from ftclip.tasks import get_task, task_names


def configs_dir_for(recipe_path: Path) -> Path:
    """The ``configs/`` folder a recipe includes from: the nearest one above it, else the bundled one."""
    for parent in recipe_path.resolve().parents:
        candidate = parent / "configs"
        if candidate.is_dir():
            return candidate
    return REPO_ROOT / "configs"


def bundled_recipes() -> list[Path]:
    root = REPO_ROOT / "recipes"
    return sorted(root.rglob("*.yaml")) if root.is_dir() else []


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A path, or the name of a bundled recipe (``reid_two_stage``, ``demo/reid_synthetic``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    for candidate in (REPO_ROOT / "recipes" / f"{recipe}.yaml", REPO_ROOT / "recipes" / str(recipe)):
        if candidate.is_file():
            return candidate
    names = ", ".join(str(p.relative_to(REPO_ROOT / "recipes").with_suffix("")) for p in bundled_recipes())
    raise ConfigError(f"recipe '{recipe}' not found: give a YAML file path or a bundled recipe name ({names})")


def _read_yaml(path: Path) -> DictConfig:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}{_yaml_problem(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return OmegaConf.create(data)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``, line 5, column 1: not valid YAML: <what> (<while ...> at line 4)`` -- the parser's report on one line."""
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        at = f" at line {context_mark.line + 1}" if context_mark is not None else ""
        problem = f"{problem} ({context}{at})"
    return f"{where}: not valid YAML: {problem}"


def _compose(path: Path, configs_dir: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Read a YAML file and merge its ``defaults:`` includes under it (recursively)."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'defaults' includes form a cycle: {' -> '.join(map(str, seen + (path,)))}")
    node = _read_yaml(path)
    includes = node.pop("defaults", [])
    if not isinstance(includes, (list, ListConfig)):
        raise ConfigError(f"{path}: 'defaults' must be a list of config names like 'model/vit_b16'")
    merged = OmegaConf.create({})
    for include in includes:
        name = str(include).lstrip("/")
        target = configs_dir / (name if name.endswith(".yaml") else f"{name}.yaml")
        if not target.is_file():
            available = sorted(str(p.relative_to(configs_dir).with_suffix("")) for p in configs_dir.rglob("*.yaml"))
            raise ConfigError(
                f"{path}: 'defaults' names '{include}' but {target} does not exist; available: {', '.join(available)}"
            )
        merged = OmegaConf.merge(merged, _compose(target, configs_dir, seen + (path,)))
    return OmegaConf.merge(merged, node)


def parse_overrides(overrides: list[str]) -> DictConfig:
    """``a.b=value`` strings -> a config; values are parsed as YAML (``[1,2]``, ``true``, ``null``)."""
    result = OmegaConf.create({})
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. trainer.devices=2)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        OmegaConf.update(result, key, value, force_add=True)
    return result


def _explain(exc: OmegaConfBaseException, source: str) -> str:
    key = getattr(exc, "full_key", None) or ""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        return f"{source}: unknown key '{key}'; check the spelling (see docs/recipes.md for every key)"
    if "Value '" in msg or "could not be converted" in msg or "is not a subclass" in msg or "Invalid type" in msg:
        return f"{source}: key '{key}' has a value of the wrong type: {msg}"
    return f"{source}: key '{key}': {msg}" if key else f"{source}: {msg}"


def validate(raw: DictConfig, source: str) -> DictConfig:
    """Merge a raw config into its task's schema; every problem is one ConfigError."""
    task = raw.get("task")
    if task is None:
        raise ConfigError(f"{source}: the recipe has no 'task' key (one of: {', '.join(task_names())})")
    task_def = get_task(str(task))
    for name, resolver in task_def.recipe_resolvers.items():  # ${<task>.<name>:...} in this task's recipes
        OmegaConf.register_resolver(f"{task_def.name}.{name}", resolver, replace=True)
    schema = task_def.schema
    base = OmegaConf.structured(schema)
    # stages are a free-form mapping of names to StageConfig: type each entry explicitly
    stages = raw.get("stages") or {}
    if not isinstance(stages, (dict, DictConfig)):
        raise ConfigError(f"{source}: 'stages' must be a mapping of stage name -> settings")
    try:
        cfg = OmegaConf.merge(base, raw)
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc, source)) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{source}: required key(s) without a value: {', '.join(missing)}; set them in the recipe or as "
            f"overrides, e.g. {missing[0]}=..."
        )
    if not cfg.stages:
        raise ConfigError(f"{source}: the recipe declares no stages; to evaluate a model without training, "
                          "use `ftclip eval RECIPE` (e.g. with model.pretrained=...)")
    try:
        OmegaConf.to_container(cfg, resolve=True)  # every ${...} resolves (a task resolver's error names its key)
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc, source)) from None
    check_values(cfg, schema, source)
    _check_stage_groups(cfg, task_def, source)
    OmegaConf.set_readonly(cfg, False)
    return cfg


def _check_stage_groups(cfg: DictConfig, task, source: str) -> None:
    """A stage of a closed-form kind (``Task.closed_form_kinds``) trains no group; every other stage trains some."""
    for name, stage in cfg.stages.items():
        if stage.kind not in task.stage_kinds:
            continue  # Task.check_config names the kinds there are
        if stage.kind in task.closed_form_kinds and stage.train:
            raise ConfigError(f"{source}: stages.{name}.train={list(stage.train)} is not allowed: a '{stage.kind}' "
                              "stage is fitted without an optimizer and trains no parameter group; remove the key")
        if stage.kind not in task.closed_form_kinds and not stage.train:
            raise ConfigError(f"{source}: stages.{name}.train=[] is not allowed: it must be a non-empty list (the "
                              f"parameter groups a '{stage.kind}' stage trains, e.g. [image])")


def _merge_overrides(raw: DictConfig, overrides: list[str]) -> DictConfig:
    """``raw`` with ``overrides`` on top, in order; ``key={}`` empties the key's mapping (``stages={}``
    drops the recipe's stages, so later overrides can declare others) instead of merging nothing."""
    merged = raw
    for item in overrides:
        key, _, value = item.partition("=")
        if value.strip().replace(" ", "") == "{}":
            OmegaConf.update(merged, key.strip(), {}, merge=False, force_add=True)
        else:
            merged = OmegaConf.merge(merged, parse_overrides([item]))
    return merged


def load_recipe(recipe: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """Recipe file (or bundled name) + overrides -> validated config."""
    path = resolve_recipe_path(recipe)
    raw = _compose(path, configs_dir_for(path))
    if overrides:
        raw = _merge_overrides(raw, overrides)
    source = str(path) + (f" (with overrides {' '.join(overrides)})" if overrides else "")
    return validate(raw, source)


def with_overrides(cfg: DictConfig, overrides: list[str], source: str) -> DictConfig:
    """A resolved config (a run's, an export's recipe) with ``overrides`` on top, validated again."""
    raw = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if overrides:
        raw = _merge_overrides(raw, overrides)
    return validate(raw, source + (f" (with overrides {' '.join(overrides)})" if overrides else ""))


#: keys earlier ftclip versions wrote into every resolved config (run directories' config.yaml, export manifests)
#: and that are gone now: dropped when such a saved config is read, so old runs still resume and evaluate; a
#: recipe that sets one gets "unknown key"
RETIRED_KEYS = ("trainer.num_sanity_val_steps",)


def _without_retired(cfg: DictConfig) -> DictConfig:
    for key in RETIRED_KEYS:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and name in node:
            del node[name]
    return cfg


def config_from_text(text: str, source: str) -> DictConfig:
    """A resolved recipe stored as YAML text (an export's manifest), validated."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the recorded recipe is not a mapping of keys")
    return validate(_without_retired(OmegaConf.create(data)), source)


def load_saved_config(path: str | Path) -> DictConfig:
    """A run directory's resolved ``config.yaml`` (no includes left)."""
    path = Path(path)
    return validate(_without_retired(_read_yaml(path)), str(path))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def config_hash(cfg: DictConfig) -> str:
    """Stable short hash of the resolved config (recorded in exports)."""
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16]
