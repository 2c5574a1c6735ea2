"""What a search means, independent of the engine that runs it: objectives, directions, the plan.

Every backend reads the same answers from here, so one spec gives the same trials on each:

- Objectives are validation metrics (`val_*`, measured on held-out training identities) or costs
  (`train_img_per_s`, ...); test metrics never select hyper-parameters, and a search trial never
  evaluates the test protocols at all (`run_trial(..., test_protocols=False)`): its records are
  one `val` record carrying `search_fields` (the objectives), which the search table reads.
- The plan: one slot per grid point without a search; with a search, every grid point gets
  `n_trials` sampled trials (sampler `grid` enumerates the discretised space instead, `n_trials`
  capping the combinations per grid point with a seeded subset).
- A trial's label names its method and every swept key, so trials of one sweep can be told apart.

No engine is imported here: `suggest_space` takes anything with Optuna's `suggest_*` API.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from typing import Any

from harness.config import TrialConfig
from harness.errors import ConfigError, check_int
from harness.preflight import check_buildable
from harness.results.metrics import ACCURACY_METRICS, COST_METRICS, VALIDATION_PREFIX, objective_direction
from harness.results.records import objectives_field
from harness.sweep import MAX_GRID_POINTS, SweepSpec

GRID_INDEX = "grid_index"
"""The plan's key for the grid point a slot trains (an engine-internal coordinate, never a hyper-parameter)."""
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "hyperband", "none")


def objective_names(spec: SweepSpec) -> list[str]:
    search = spec.search
    if search is None:
        return ["val_mAP"]
    return list(search.objectives) if search.objectives else [search.objective]


def objective_directions(spec: SweepSpec) -> list[str]:
    """One direction per objective: the spec's for a single one, each metric's registered one for several."""
    names = objective_names(spec)
    if len(names) == 1:
        return [spec.search.direction if spec.search else "maximize"]
    return [objective_direction(n) for n in names]


def validation_key(objective: str) -> str | None:
    """`val_mAP` -> `mAP`, the key of `validate()`'s dict; None for a cost objective."""
    return objective[len(VALIDATION_PREFIX):] if objective.startswith(VALIDATION_PREFIX) else None


def search_fields(spec: SweepSpec) -> dict[str, Any]:
    """Record fields of every trial of a search (none for a grid): its objectives and their directions
    as JSON (`objectives`), which tells the tables a search's records from a grid's and how to rank them."""
    if spec.search is None:
        return {}
    return objectives_field(dict(zip(objective_names(spec), objective_directions(spec))))


def reports_every_epoch(spec: SweepSpec) -> str | None:
    """The validation metric to report after every epoch, or None where no pruner would read it."""
    names = objective_names(spec)
    if spec.search is None or len(names) > 1 or spec.search.pruner == "none":
        return None
    return validation_key(names[0])


# --------------------------------------------------------------------------- the space


def _is_primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def categorical_options(dist: dict[str, Any]) -> tuple[list[Any], bool]:
    """Engines store only scalars: other choices (lists, mappings) travel as JSON text."""
    choices = dist["choices"]
    if all(_is_primitive(c) for c in choices):
        return list(choices), False
    return [json.dumps(c, sort_keys=True) for c in choices], True


def suggest_space(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Dotted config key -> value, drawn from anything with Optuna's `suggest_*` API."""
    values: dict[str, Any] = {}
    for key, dist in space.items():
        kind = dist["type"]
        if kind == "categorical":
            options, encoded = categorical_options(dist)
            choice = trial.suggest_categorical(key, options)
            values[key] = json.loads(choice) if encoded else choice
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(dist["low"]), int(dist["high"]), step=int(dist.get("step") or 1),
                                            log=bool(dist.get("log", False)))
        else:
            step = dist.get("step")
            values[key] = trial.suggest_float(key, float(dist["low"]), float(dist["high"]),
                                              step=float(step) if step else None,
                                              log=kind == "loguniform" or bool(dist.get("log", False)))
    return values


def grid_values(where: str, dist: dict[str, Any]) -> list[Any]:
    """Every value of one distribution on the `grid` sampler (numbers need a step)."""
    kind = dist["type"]
    if kind == "categorical":
        return categorical_options(dist)[0]
    if kind == "int":
        values = range(int(dist["low"]), int(dist["high"]) + 1, int(dist.get("step") or 1))
        if len(values) > MAX_GRID_POINTS:
            raise ConfigError(f"{where}: {len(values):,} grid values; the limit is {MAX_GRID_POINTS:,}")
        return list(values)
    step = dist.get("step")
    if not step:
        raise ConfigError(f"{where}: sampler grid needs a 'step' for a {kind} distribution (or use categorical)")
    low, high, step = float(dist["low"]), float(dist["high"]), float(step)
    count = math.floor((high - low) / step + 1e-9) + 1
    if count > MAX_GRID_POINTS:
        raise ConfigError(f"{where}: {count:,} grid values; the limit is {MAX_GRID_POINTS:,}")
    return [round(low + i * step, 12) for i in range(count)]


def search_plan(spec: SweepSpec, n_grid: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """The fixed parameters of every trial slot, in order: `grid_index` plus any fixed search values."""
    search = spec.search
    if search is None:
        return [{GRID_INDEX: g} for g in range(n_grid)]
    if search.sampler != "grid":
        return [{GRID_INDEX: r % n_grid} for r in range(search.n_trials * n_grid)]
    keys = list(search.space)
    values = [grid_values(f"{spec.source}: search.space.{k}", search.space[k]) for k in keys]
    if math.prod(len(v) for v in values) * n_grid > MAX_GRID_POINTS:
        sizes = " x ".join(f"{len(v)} ({k})" for k, v in zip(keys, values))
        raise ConfigError(f"{spec.source}: the grid sampler's space has {sizes} values for {n_grid} grid point(s); "
                          f"the limit is {MAX_GRID_POINTS:,} trials per sweep: use larger steps or another sampler")
    points = list(itertools.product(*values))
    if len(points) > search.n_trials:
        random.Random(seed).shuffle(points)
        points = points[:search.n_trials]
    return [{GRID_INDEX: g, **dict(zip(keys, p))} for p in points for g in range(n_grid)]


def check_search(spec: SweepSpec, configs: Sequence[TrialConfig]) -> None:
    """Reject a search that cannot run, before anything runs."""
    search = spec.search
    if search is None:
        return
    src = spec.source
    if search.sampler not in SAMPLERS:
        raise ConfigError(f"{src}: search.sampler {search.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if search.pruner not in PRUNERS:
        raise ConfigError(f"{src}: search.pruner {search.pruner!r} is not one of {', '.join(PRUNERS)}")
    check_int(search.workers, f"{src}: search.workers", minimum=1)
    if not isinstance(search.objectives, list):
        raise ConfigError(f"{src}: search.objectives must be a list of metric names, got {search.objectives!r}")
    names = objective_names(spec)
    if len(set(names)) != len(names):
        raise ConfigError(f"{src}: search.objectives lists a metric twice: {names}")
    for name in names:
        if not isinstance(name, str) or not (validation_key(name) in ACCURACY_METRICS or name in COST_METRICS):
            accepted = ", ".join(VALIDATION_PREFIX + m for m in ACCURACY_METRICS)
            raise ConfigError(
                f"{src}: search objective {name!r} is not a validation metric; use one of {accepted} "
                f"(held-out training identities) or a cost ({', '.join(COST_METRICS)}): test metrics never "
                "select hyper-parameters")
    if "data.val_identities" not in search.space:  # a search trial is scored on validation identities only
        for i, cfg in enumerate(configs):
            if cfg.data.val_identities <= 0:
                raise ConfigError(
                    f"{src}: search objective {names[0]!r} needs validation data but data.val_identities is "
                    f"{cfg.data.val_identities} (grid point {i}); set data.val_identities > 0 in base so some "
                    "training identities are held out for validation (search trials never evaluate the test "
                    "protocols)")
    for key, dist in search.space.items():
        where = f"{src}: search.space.{key}"
        kind = dist["type"]
        if kind == "loguniform" and dist.get("step"):
            raise ConfigError(f"{where}: loguniform cannot have a step")
        if kind == "int" and dist.get("log") and int(dist.get("step") or 1) != 1:
            raise ConfigError(f"{where}: an int with log: true cannot have a step other than 1")
        if dist.get("step") is not None and (not isinstance(dist["step"], (int, float)) or dist["step"] <= 0):
            raise ConfigError(f"{where}: step must be a positive number, got {dist['step']!r}")
        if kind == "categorical":
            samples = dist["choices"]
        elif kind == "int":
            samples = [int(dist["low"]), int(dist["high"])]
        else:
            samples = [float(dist["low"]), float(dist["high"])]
        for value in samples:  # a value the config cannot take fails here, not in trial 37
            for cfg in configs:
                check_buildable(cfg.with_overrides({key: value}, where=where), where)


# --------------------------------------------------------------------------- labels


def swept_keys(spec: SweepSpec) -> list[str]:
    """The dotted keys that vary between the sweep's trials (grid keys, then search keys)."""
    keys = [k for k in spec.grid if len(spec.grid[k]) > 1]
    if spec.search is not None:
        keys += [k for k in spec.search.space if k not in keys]
    return keys


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def trial_hparams(cfg: TrialConfig, keys: Sequence[str]) -> dict[str, Any]:
    """What TensorBoard's HParams view compares a trial by: its method, seed and every swept key's value."""
    tree = cfg.to_dict()
    return {"method": cfg.method, "seed": cfg.seed, **{key: _dotted(tree, key) for key in keys}}


def _dotted(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def trial_label(cfg: TrialConfig, keys: Sequence[str]) -> str:
    """`agw data.trial=3 seed=0`: the method, then every swept key with this trial's value."""
    tree = cfg.to_dict()
    parts = [cfg.method]
    for key in keys:
        if key != "method":
            parts.append(f"{key}={_short(_dotted(tree, key))}")
    if "seed" not in keys:
        parts.append(f"seed={cfg.seed}")
    return " ".join(parts)
