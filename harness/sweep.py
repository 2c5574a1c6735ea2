"""Sweep specs: a YAML file -> a validated list of trial configs (grid) and/or a search space."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import TrialConfig, field_paths, load_yaml, resolve_file_paths, set_dotted
from harness.errors import ConfigError, HarnessError, check_int
from harness.preflight import check_buildable
from harness.recipes import apply_recipe
from harness.results.metrics import metric

SPEC_KEYS = ("name", "description", "recipe", "backend", "base", "grid", "search", "table", "dry_run", "keep_models",
             "final")
SPACE_TYPES = ("uniform", "loguniform", "int", "categorical")
SEARCH_KEYS = ("space", "n_trials", "objective", "direction", "sampler", "pruner", "workers", "objectives")
FINAL_KEYS = ("seeds", "objective", "trial", "backend")
TABLE_KEYS = ("group_by", "baseline", "protocol", "protocols", "published", "metrics")


@dataclass
class SearchSpace:
    space: dict[str, dict[str, Any]]
    n_trials: int = 10
    objective: str = "val_mAP"
    direction: str = "maximize"
    objectives: list[str] = field(default_factory=list)
    sampler: str = "tpe"
    pruner: str = "median"
    workers: int = 1


@dataclass
class SweepSpec:
    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    backend: str = "local"
    search: SearchSpace | None = None
    table: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "<spec>"
    dry_run: dict[str, Any] = field(default_factory=dict)
    """Dotted overrides that turn a real-data spec into a quick run on synthetic data."""
    keep_models: bool = True
    """Keep each ok trial's final weights under results/<sweep>/models/ (harness.saved_models)."""
    final: dict[str, Any] = field(default_factory=dict)
    """The `final:` block of a search (harness.final): retrain the chosen configuration and test it."""

    def __post_init__(self) -> None:
        check_sweep_name(self.name, f"{self.source}: name")

    def as_dry_run(self) -> SweepSpec:
        if not self.dry_run:
            raise ConfigError(f"{self.source}: --dry-run needs a 'dry_run' mapping of config overrides in the spec")
        base = TrialConfig.from_dict(self.base, where=f"{self.source}: base").with_overrides(
            self.dry_run, where=f"{self.source}: dry_run").to_dict()
        grid = {k: v for k, v in self.grid.items() if k not in self.dry_run}
        return SweepSpec(name=f"{self.name}-dry-run", base=base, grid=grid, backend=self.backend, search=self.search,
                         table=self.table, description=self.description, source=self.source,
                         keep_models=self.keep_models, final=self.final)

    def trials(self, overrides: dict[str, Any] | None = None) -> list[TrialConfig]:
        """Every grid point as a validated config (command-line overrides applied last)."""
        keys = list(self.grid)
        points = math.prod(len(self.grid[k]) for k in keys)
        if points > MAX_GRID_POINTS:
            sizes = " x ".join(f"{len(self.grid[k])} ({k})" for k in keys)
            raise ConfigError(f"{self.source}: grid has {points:,} points ({sizes}); the limit is "
                              f"{MAX_GRID_POINTS:,} trials per sweep: split it into several specs")
        configs = []
        for values in itertools.product(*(self.grid[k] for k in keys)) if keys else [()]:
            tree = TrialConfig.from_dict(self.base, where=f"{self.source}: base").to_dict()
            for k, v in zip(keys, values):
                set_dotted(tree, k, v, where=f"{self.source}: grid")
            for k, v in (overrides or {}).items():
                set_dotted(tree, k, v, where="--set")
            where = f"{self.source}: grid point {dict(zip(keys, values))}" if keys else self.source
            configs.append(TrialConfig.from_dict(tree, where=where))
            check_buildable(configs[-1], where)
        return configs


MAX_GRID_POINTS = 10_000
"""Most grid points one sweep may have (every point is validated before the first trial)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,127}$")


def check_sweep_name(name: Any, where: str) -> str:
    """A sweep name names one folder inside --results-dir: no separators, no '.', '..' or hidden names."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{where}: sweep name {name!r} must be letters, digits, '.', '_', '+' or '-' (1-128 "
                          "characters, not starting with '.'): it names a folder inside --results-dir")
    return name


def _check_keys(where: str, data: dict[str, Any], accepted: tuple[str, ...]) -> None:
    for k in data:
        if k not in accepted:
            raise ConfigError(f"{where}: unknown key {k!r}; accepted keys: {', '.join(accepted)}")


def _parse_space(src: str, space: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{src}: search.space must map config keys to distributions")
    paths = set(field_paths()) | {"method", "seed"}
    out = {}
    for key, dist in space.items():
        where = f"{src}: search.space.{key}"
        if key not in paths:
            import difflib

            close = difflib.get_close_matches(key, sorted(paths), n=3)
            raise ConfigError(f"{where}: unknown config key" + (f"; did you mean {', '.join(close)}?" if close else ""))
        if not isinstance(dist, dict) or "type" not in dist:
            raise ConfigError(f"{where}: expected a mapping with 'type' (one of {', '.join(SPACE_TYPES)})")
        kind = dist["type"]
        if kind not in SPACE_TYPES:
            raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(SPACE_TYPES)}")
        if kind == "categorical":
            if not isinstance(dist.get("choices"), list) or not dist["choices"]:
                raise ConfigError(f"{where}: categorical needs a non-empty list 'choices'")
        else:
            for b in ("low", "high"):
                if not isinstance(dist.get(b), (int, float)) or isinstance(dist.get(b), bool):
                    raise ConfigError(f"{where}: {kind} needs numeric 'low' and 'high'")
            if not dist["low"] < dist["high"]:
                raise ConfigError(f"{where}: low ({dist['low']}) must be below high ({dist['high']})")
            if kind == "loguniform" and dist["low"] <= 0:
                raise ConfigError(f"{where}: loguniform needs low > 0, got {dist['low']}")
            if kind == "int" and not (float(dist["low"]).is_integer() and float(dist["high"]).is_integer()):
                raise ConfigError(f"{where}: int needs integer bounds")
        extra = set(dist) - {"type", "low", "high", "choices", "step", "log"}
        if extra:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(extra))}")
        out[key] = dict(dist)
    return out


def _check_table(where: str, table: dict[str, Any]) -> None:
    """`table.group_by` names record keys or dotted config keys (never the seed); `table.metrics` registered metrics."""
    from harness.results.tables import RECORD_KEYS, REPLICATE_KEYS

    for name in ("group_by", "metrics", "protocols"):
        value = table.get(name)
        if value is not None and (not isinstance(value, list) or not value or
                                  not all(isinstance(v, str) for v in value)):
            raise ConfigError(f"{where}.{name}: expected a non-empty list of names, got {value!r}")
    valid = [*RECORD_KEYS, *(p for p in field_paths() if p not in REPLICATE_KEYS)]
    for key in table.get("group_by") or []:
        if key not in valid:
            import difflib

            close = difflib.get_close_matches(key, valid, n=3)
            raise ConfigError(f"{where}.group_by: unknown key {key!r}" +
                               (f"; did you mean {', '.join(close)}?" if close else "") +
                               f" (valid: {', '.join(RECORD_KEYS)} or a dotted config key other than "
                               f"{', '.join(REPLICATE_KEYS)})")
    for name in table.get("metrics") or []:
        try:
            metric(name)
        except HarnessError as exc:
            raise ConfigError(f"{where}.metrics: {exc}") from None


def _keep_models(source: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: keep_models must be true or false, got {value!r}")
    return value


def check_final_block(where: str, block: Any, search: SearchSpace | None) -> dict[str, Any]:
    """The `final:` block of a spec (harness.final), validated (unknown keys, types, objective names)."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(FINAL_KEYS)}")
    unknown = [k for k in block if k not in FINAL_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; accepted keys: {', '.join(FINAL_KEYS)}")
    if search is None:
        raise ConfigError(f"{where}: a final step needs a search block to take its best configuration from")
    seeds = block.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds:
            raise ConfigError(f"{where}.seeds: expected a non-empty list of seeds, got {seeds!r}")
        for s in seeds:
            check_int(s, f"{where}.seeds", minimum=0)
    if "objective" in block:
        metric(block["objective"])
        allowed = search.objectives or [search.objective]
        if block["objective"] not in allowed:
            raise ConfigError(f"{where}.objective: {block['objective']!r} is not an objective of the search "
                              f"({', '.join(allowed)})")
    for key in ("trial", "backend"):
        if key in block and not isinstance(block[key], str):
            raise ConfigError(f"{where}.{key}: expected a string, got {block[key]!r}")
    return dict(block)


def _resolve_spec_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The spec's relative path keys (model.pretrained_file, data.root, data.cache_dir) in base, grid,
    dry_run and categorical search choices, resolved against the spec's folder."""
    out = dict(data)
    for part in ("base", "grid", "dry_run"):
        if isinstance(data.get(part), dict):
            out[part] = resolve_file_paths(data[part], folder)
    search = data.get("search")
    if isinstance(search, dict) and isinstance(search.get("space"), dict):
        space = {}
        for key, dist in search["space"].items():
            if isinstance(dist, dict) and isinstance(dist.get("choices"), list):
                dist = {**dist, "choices": resolve_file_paths({key: dist["choices"]}, folder)[key]}
            space[key] = dist
        out["search"] = {**search, "space": space}
    return out


def parse_spec(data: Any, *, source: str = "<spec>", folder: str | Path | None = None) -> SweepSpec:
    """A validated spec from its YAML data; `folder` (the spec file's) is what relative paths in it
    are read from (none given: the working folder, as for --set values)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a sweep spec is a YAML mapping with keys {', '.join(SPEC_KEYS)}")
    _check_keys(source, data, SPEC_KEYS)
    if folder is not None:
        data = _resolve_spec_paths(data, Path(folder))
    name = data.get("name") or Path(source).stem
    check_sweep_name(name, f"{source}: name")
    backend = data.get("backend", "local")
    from harness.runner.registry import backend_names  # the registry imports no spec code: no cycle

    if backend not in backend_names():
        raise ConfigError(f"{source}: backend {backend!r} is not one of {', '.join(backend_names())}")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{source}: base must be a mapping of config keys")
    base = apply_recipe(data.get("recipe"), base, where=f"{source}: recipe")
    TrialConfig.from_dict(base, where=f"{source}: base")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{source}: grid must map dotted config keys to lists of values")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{source}: grid.{k} must be a non-empty list of values, got {v!r}")
    search = None
    if data.get("search") is not None:
        s = data["search"]
        if not isinstance(s, dict):
            raise ConfigError(f"{source}: search must be a mapping")
        _check_keys(f"{source}: search", s, SEARCH_KEYS)
        search = SearchSpace(space=_parse_space(source, s.get("space")),
                             **{k: s[k] for k in SEARCH_KEYS if k in s and k != "space"})
        if search.direction not in ("maximize", "minimize"):
            raise ConfigError(f"{source}: search.direction must be maximize or minimize")
        n_grid = math.prod(len(v) for v in grid.values())
        check_int(search.n_trials, f"{source}: search.n_trials", minimum=1, maximum=max(1, MAX_GRID_POINTS // n_grid))
    table = data.get("table") or {}
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: table must be a mapping")
    _check_keys(f"{source}: table", table, TABLE_KEYS)
    _check_table(f"{source}: table", table)
    dry_run = data.get("dry_run") or {}
    if not isinstance(dry_run, dict):
        raise ConfigError(f"{source}: dry_run must map dotted config keys to values")
    spec = SweepSpec(name=name, base=base, grid=grid, backend=backend, search=search, table=table,
                     description=str(data.get("description", "")), source=source, dry_run=dry_run,
                     keep_models=_keep_models(source, data.get("keep_models", True)),
                     final=check_final_block(f"{source}: final", data.get("final"), search))
    if dry_run:
        spec.as_dry_run().trials()
    else:
        spec.trials()  # validate every grid point before anything runs
    return spec


def load_spec(path: str | Path) -> SweepSpec:
    """The spec in file `path`; its relative paths are read from the file's folder."""
    return parse_spec(load_yaml(path), source=str(path), folder=Path(path).parent)
