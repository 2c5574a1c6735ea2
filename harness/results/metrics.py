"""The metric registry: one place that knows each metric's name, label, direction and digits.

Tables (columns, rounding, which way is "best"), search objectives (their optimisation
direction) and published-number columns are all derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.errors import ConfigError

Direction = Literal["max", "min"]


@dataclass(frozen=True)
class Metric:
    name: str                 # record column, e.g. "rank1"
    label: str                # table header, e.g. "Rank-1"
    short: str                # narrow header for the terminal, e.g. "R1"
    direction: Direction      # "max": higher is better
    digits: int               # decimals printed
    unit: str = "%"
    accuracy: bool = True     # a retrieval metric in percent (CMC/mAP/mINP), reported by papers

    @property
    def optuna_direction(self) -> str:
        return "maximize" if self.direction == "max" else "minimize"


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


for _name, _label, _short in (("rank1", "Rank-1", "R1"), ("rank5", "Rank-5", "R5"), ("rank10", "Rank-10", "R10"),
                              ("rank20", "Rank-20", "R20"), ("mAP", "mAP", "mAP"), ("mINP", "mINP", "mINP")):
    register_metric(Metric(_name, _label, _short, "max", 2))
register_metric(Metric("train_img_per_s", "train img/s", "tr/s", "max", 1, unit="img/s", accuracy=False))
register_metric(Metric("infer_img_per_s", "infer img/s", "inf/s", "max", 1, unit="img/s", accuracy=False))
register_metric(Metric("peak_memory_mb", "peak memory (MiB)", "MiB", "min", 0, unit="MiB", accuracy=False))
register_metric(Metric("wall_seconds", "wall time (s)", "s", "min", 0, unit="s", accuracy=False))
register_metric(Metric("num_params", "parameters", "params", "min", 0, unit="", accuracy=False))

ACCURACY_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if m.accuracy)
"""Every retrieval metric a trial records per protocol (each also with its gallery-trial std)."""
TABLE_METRICS: tuple[str, ...] = ("rank1", "rank10", "rank20", "mAP", "mINP")
"""The columns papers print, and the default columns of every table."""
COST_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS.values() if not m.accuracy)
VALIDATION_PREFIX = "val_"


def metric(name: str) -> Metric:
    """The registered metric `name`; `val_<metric>` is the same metric on the validation identities."""
    if name in METRICS:
        return METRICS[name]
    if name.startswith(VALIDATION_PREFIX) and name[len(VALIDATION_PREFIX):] in METRICS:
        base = METRICS[name[len(VALIDATION_PREFIX):]]
        if base.accuracy:
            return Metric(name, f"val {base.label}", f"v{base.short}", base.direction, base.digits)
    raise ConfigError(f"unknown metric {name!r}; known: {', '.join(known_metric_names())}")


def known_metric_names() -> list[str]:
    return [*METRICS, *(VALIDATION_PREFIX + m for m in ACCURACY_METRICS)]


def objective_direction(name: str) -> str:
    """Optuna-style direction ("maximize"/"minimize") of a search objective."""
    return metric(name).optuna_direction
