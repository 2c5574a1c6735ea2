"""The one record type every backend stores: a frozen `TrialRecord` with ok/failed/pruned constructors.

A trial stores one ok record per evaluation protocol, or a single failed or pruned record. The
identity fields (key, method, backbone, dataset, seed, full config) are derived from the trial's
config in one place, so every status of one configuration lands in the same table group.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from harness.provenance import config_key

if TYPE_CHECKING:
    from harness.config import DataConfig, TrialConfig

Status = Literal["ok", "failed", "pruned"]
STATUSES: tuple[str, ...] = ("ok", "failed", "pruned")
IDENTITY_FIELDS = ("trial_key", "status", "method", "backbone", "dataset", "seed", "config", "failure", "protocol")
PARAM_PREFIX = "param_"
"""Record fields `param_<dotted key>` repeat a search's sampled values (as Optuna names them);
the configuration holds them too, so tables read them from there."""


OBJECTIVES_FIELD = "objectives"
"""Record field of every trial of a search: {objective: "maximize" | "minimize"} as JSON. It tells a
search's records (one `val` record per trial, no test protocol) from a grid's, and ranks them."""


def objectives_field(objectives: Mapping[str, str]) -> dict[str, str]:
    """The record field naming a search's objectives and their directions."""
    return {OBJECTIVES_FIELD: json.dumps(dict(objectives))}


def sampled_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A search trial's sampled values as record fields (`param_train.lr`, ...)."""
    return {f"{PARAM_PREFIX}{key}": value for key, value in params.items()}


def dataset_label(data: DataConfig) -> str:
    """The dataset name a table shows: the real dataset, or `synthetic[-<layout>]` for generated data."""
    if data.dataset == "synthetic":
        layout = data.synthetic.layout
        return "synthetic" if layout == "sysu" else f"synthetic-{layout}"
    return data.dataset


@dataclass(frozen=True)
class TrialRecord:
    trial_key: str
    status: Status
    method: str
    backbone: str
    dataset: str
    seed: int
    config: str
    """The full configuration as sorted-key JSON (what tables group by)."""
    failure: str | None = None
    protocol: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    """Everything else: metrics, speed, environment, backend bookkeeping."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"record status {self.status!r} is not one of {', '.join(STATUSES)}")
        clash = set(self.fields) & set(IDENTITY_FIELDS)
        if clash:
            raise ValueError(f"record fields may not redefine {', '.join(sorted(clash))}")

    @classmethod
    def _from_config(cls, cfg: TrialConfig, status: Status, *, failure: str | None, protocol: str | None,
                     fields: Mapping[str, Any] | None, key: str | None = None) -> TrialRecord:
        return cls(trial_key=key or config_key(cfg), status=status, method=cfg.method, backbone=cfg.model.backbone,
                   dataset=dataset_label(cfg.data), seed=cfg.seed,
                   config=json.dumps(cfg.to_dict(), sort_keys=True, default=str), failure=failure,
                   protocol=protocol, fields=dict(fields or {}))

    @classmethod
    def ok(cls, cfg: TrialConfig, *, protocol: str, fields: Mapping[str, Any], key: str | None = None) -> TrialRecord:
        """The result of a finished trial on one evaluation protocol (`key`: another record key than
        the config's, e.g. an evaluation of a saved model)."""
        return cls._from_config(cfg, "ok", failure=None, protocol=protocol, fields=fields, key=key)

    @classmethod
    def failed(cls, cfg: TrialConfig, reason: str, *, fields: Mapping[str, Any] | None = None) -> TrialRecord:
        """A trial that broke (non-finite loss, crash): counted in tables, never averaged."""
        return cls._from_config(cfg, "failed", failure=reason, protocol=None, fields=fields)

    @classmethod
    def pruned(cls, cfg: TrialConfig, reason: str, *, fields: Mapping[str, Any] | None = None) -> TrialRecord:
        """A trial a search scheduler stopped early: counted apart from failures."""
        return cls._from_config(cfg, "pruned", failure=reason, protocol=None, fields=fields)

    def as_dict(self) -> dict[str, Any]:
        """The flat JSON-ready mapping the store keeps (identity fields first)."""
        return {name: getattr(self, name) for name in IDENTITY_FIELDS} | dict(self.fields)


REQUIRED_FIELDS = ("trial_key", "status", "method", "config")
"""What a stored record needs to land in a table: without them it would become a silent 'nan' row."""


def parse_stored_record(text: Any) -> dict[str, Any]:
    """A stored record's JSON text as a mapping, or ValueError saying what is wrong with it."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a JSON record ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON record (a {type(data).__name__}, expected an object)")
    missing = [name for name in REQUIRED_FIELDS if not isinstance(data.get(name), str) or not data[name]]
    if missing:
        raise ValueError(f"the record has no {', '.join(repr(m) for m in missing)} (every record carries "
                         f"{', '.join(REQUIRED_FIELDS)}; it was written by another program or version)")
    if data["status"] not in STATUSES:
        raise ValueError(f"the record's 'status' is {data['status']!r}, expected one of {', '.join(STATUSES)}")
    try:
        config = json.loads(data["config"])
    except ValueError as exc:
        raise ValueError(f"the record's 'config' is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"the record's 'config' is a {type(config).__name__}, expected a JSON object")
    return data


def as_record_dict(record: TrialRecord | Mapping[str, Any]) -> dict[str, Any]:
    return record.as_dict() if isinstance(record, TrialRecord) else dict(record)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def record_json(record: TrialRecord | Mapping[str, Any]) -> str:
    """The stored form of a record (a TrialRecord, or the plain mapping a stored record was read as)."""
    return json.dumps(as_record_dict(record), default=_json_default)
