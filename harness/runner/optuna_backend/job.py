"""One Optuna sweep as plain data: what every worker process needs, written to `optuna_job.json`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.runner.optuna_backend.storage_url import database_url
from harness.search import (
    check_search,
    objective_directions,
    objective_names,
    reports_every_epoch,
    search_plan,
    swept_keys,
)
from harness.sweep import SearchSpace, SweepSpec

STUDY_FILE = "optuna.sqlite"
LOCK_FILE = "optuna.lock"
JOB_FILE = "optuna_job.json"
TRIALS_CSV = "optuna_trials.csv"
PARETO_CSV = "pareto.csv"
HEARTBEAT_INTERVAL = 60
STALE_AFTER = 180
"""Seconds without a heartbeat after which a RUNNING trial counts as its worker's death (and is retried)."""


@dataclass
class OptunaJob:
    """The sweep, where its study lives and how workers keep it alive."""

    spec: SweepSpec
    folder: Path
    overrides: dict[str, Any]
    trial_fn: str | None = None
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = STALE_AFTER
    storage: str | None = None
    """An RDB URL shared by several nodes (postgresql://..., given the installed driver); None: the
    sweep folder's `optuna.sqlite`."""

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()
        if self.storage is not None:  # the documented bare form gets the installed driver
            self.storage = database_url(self.storage)
        self.configs = self.spec.trials(self.overrides)
        check_search(self.spec, self.configs)
        self.objectives = objective_names(self.spec)
        self.directions = objective_directions(self.spec)
        self.seed = self.configs[0].seed
        self.plan = search_plan(self.spec, len(self.configs), seed=self.seed)
        self.swept = swept_keys(self.spec)
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise ConfigError(f"--stale-after: {self.grace_period} s must exceed the heartbeat interval "
                              f"{self.heartbeat_interval} s (and the interval must be >= 1 s)")

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def report_metric(self) -> str | None:
        """The validation metric reported after every epoch (for the pruner), or None."""
        return reports_every_epoch(self.spec)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{self.folder / STUDY_FILE}"

    def fingerprint(self) -> str:
        search = self.spec.search
        blob = {"base": self.spec.base, "grid": self.spec.grid, "overrides": self.overrides,
                "objectives": self.objectives, "directions": self.directions,
                "space": search.space if search else None, "sampler": search.sampler if search else None}
        return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"spec": dataclasses.asdict(self.spec), "folder": str(self.folder),
                           "overrides": self.overrides, "trial_fn": self.trial_fn, "storage": self.storage,
                           "heartbeat_interval": self.heartbeat_interval, "grace_period": self.grace_period},
                          indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> OptunaJob:
        data = json.loads(text)
        spec_data = dict(data["spec"])
        if spec_data.get("search") is not None:
            spec_data["search"] = SearchSpace(**spec_data["search"])
        return cls(spec=SweepSpec(**spec_data), folder=Path(data["folder"]), overrides=data["overrides"],
                   trial_fn=data["trial_fn"], heartbeat_interval=data["heartbeat_interval"],
                   grace_period=data["grace_period"], storage=data.get("storage"))
