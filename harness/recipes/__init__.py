"""Named recipes: a published training recipe as one set of config values, applied in one step.

A recipe is a YAML file in this folder (`<name>.yaml`: `description` and `config`, a nested
mapping of config keys). A sweep spec names one with `recipe: <name>` and `vireid run` with
`--recipe <name>`; a path to a YAML file of the same form works too. Precedence, lowest first:
the config defaults, the recipe, the spec's `base` (or `--config`), its grid, `--set`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import TrialConfig, load_yaml
from harness.errors import ConfigError

RECIPE_DIR = Path(__file__).parent


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config: dict[str, Any]


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name: str, *, where: str = "recipe") -> Recipe:
    """A recipe by name (a file in this folder) or by path to a YAML file; its config is validated."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: expected a recipe name ({', '.join(recipe_names())}) or a YAML path, got {name!r}")
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        path = Path(name)
        if not (path.suffix in (".yaml", ".yml") and path.is_file()):
            raise ConfigError(f"{where}: unknown recipe {name!r}; available: {', '.join(recipe_names())} "
                              "(or a path to a recipe YAML file)")
    data = load_yaml(path)
    if not isinstance(data, dict) or set(data) - {"description", "config"} or not isinstance(data.get("config"), dict):
        raise ConfigError(f"{path}: a recipe is a mapping with 'description' and 'config' (a mapping of config keys)")
    TrialConfig.from_dict(data["config"], where=f"{path}: config")
    return Recipe(name=path.stem, description=str(data.get("description", "")).strip(), config=data["config"])


def merge_config(lower: dict[str, Any], upper: dict[str, Any]) -> dict[str, Any]:
    """Nested mappings merged key by key; `upper` wins (lists and scalars are replaced whole)."""
    merged = copy.deepcopy(lower)
    for key, value in upper.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_recipe(name: str | None, base: dict[str, Any], *, where: str = "recipe") -> dict[str, Any]:
    """`base` over the recipe `name` (None: `base` unchanged)."""
    if name is None:
        return base
    return merge_config(load_recipe(name, where=where).config, base)
