"""What every backend shares: one trial into the store, records of reused / pruned / failed trials,
per-epoch validation reports, the trial function and worker environments. Imports no backend."""

from __future__ import annotations

import importlib
import json
import math
import os
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.config import TrialConfig
from harness.curves import (
    TENSORBOARD_FOLDER,
    curves_resume_file,
    read_curves_file,
    test_scalars,
    write_tensorboard,
)
from harness.errors import ConfigError, InputError, TrialFailure
from harness.provenance import config_key
from harness.results import ResultStore, TrialRecord
from harness.results.records import IDENTITY_FIELDS
from harness.saved_models import MODELS_FOLDER, save_model
from harness.trial import TrialResult, run_trial

FINISHED = ("ok", "failed")
PROJECT_ROOT = Path(__file__).resolve().parents[2]

TrialFunction = Callable[..., TrialResult]


# --------------------------------------------------------------------------- the trial function


def import_trial_function(path: str) -> TrialFunction:
    """`package.module:function` -> the function (a stand-in for harness.trial.run_trial)."""
    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"trial function {path!r}: cannot import ({exc}); expected 'package.module:function'") \
            from None
    if not callable(fn):
        raise ConfigError(f"trial function {path!r} is not callable")
    return fn


def resolve_trial_function(fn: TrialFunction | str | None) -> TrialFunction:
    """The function that runs a trial: run_trial unless a callable or an import path is given."""
    if fn is None:
        return run_trial
    return import_trial_function(fn) if isinstance(fn, str) else fn


def trial_function_path(fn: TrialFunction | str | None) -> str | None:
    """An import path another process can resolve to the same function (None: run_trial)."""
    if fn is None or isinstance(fn, str):
        return fn
    path = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in path or import_trial_function(path) is not fn:
        raise ConfigError(f"trial function {path}: worker processes need a module-level function they can import")
    return path


# --------------------------------------------------------------------------- records


def base_record(cfg: TrialConfig, *, status: str, failure: str | None, started: float,
                info: dict[str, Any]) -> dict[str, Any]:
    """A failed or pruned record (TrialRecord) of a trial, as the store keeps it."""
    build = TrialRecord.pruned if status == "pruned" else TrialRecord.failed
    return build(cfg, failure or status, fields={"wall_seconds": time.time() - started, **info}).as_dict()


def execute_trial(cfg: TrialConfig, store: ResultStore, *, sweep: str, backend: str, trial_id: str,
                  trial_fn: TrialFunction | None = None, on_epoch: Callable | None = None,
                  on_iter: Callable[..., None] | None = None, extra: dict[str, Any] | None = None,
                  passthrough: tuple[type[BaseException], ...] = (), keep_model: bool = True,
                  test_protocols: bool = True, hparams: dict[str, Any] | None = None) -> TrialResult:
    """Run one trial and store its records atomically; any failure inside it becomes a failed record.

    Bad input (InputError: missing dataset, unknown backbone) is not a trial failure: it
    propagates so the user sees it. KeyboardInterrupt propagates too, leaving the checkpoint
    for the resumed run, and so do the backend's own control-flow exceptions in `passthrough`
    (e.g. Optuna's TrialPruned). The final network of an ok trial is kept under
    `<store>/models/` (harness.saved_models) unless `keep_model` is False; the training curves
    go into the store with the records and into `<store>/tensorboard/<label> [<key>]/`, where
    the label (`extra["label"]`, see harness.search.trial_label) names the swept keys: after
    every epoch (TensorBoard follows a running trial), then with the final test metrics and an
    HParams session of `hparams` (harness.search.trial_hparams; default method and seed).
    `test_protocols=False` (search trials) is passed on: the trial is scored on its validation
    protocol and never sees the test images.
    """
    info = {"sweep": sweep, "backend": backend, "trial_id": trial_id, **(extra or {})}
    started = time.time()
    run = trial_fn if trial_fn is not None else run_trial
    board = tensorboard_folder(store, cfg, info, config_key(cfg))
    try:
        result = run(cfg, workdir=store.folder / "checkpoints", on_epoch=on_epoch, on_iter=on_iter, extra=info,
                     test_protocols=test_protocols, on_curves=lambda rows: write_tensorboard(board, rows))
    except (InputError, KeyboardInterrupt, *passthrough):
        raise
    except Exception as exc:  # noqa: BLE001  (a crashing trial must not end the sweep)
        reason = f"{type(exc).__name__}: {exc}"
        record = base_record(cfg, status="failed", failure=reason, started=started,
                             info={**info, "traceback": traceback.format_exc(limit=8)})
        result = TrialResult(key=record["trial_key"], status="failed", failure=reason, records=[record],
                             checkpoint=store.folder / "checkpoints" / f"{record['trial_key']}.ckpt")
    if keep_model and result.trained is not None:
        save_model(store.folder / MODELS_FOLDER, result.key, result.trained, info={"sweep": sweep})
    result.trained = None  # the network is not needed past this point
    if result.curves:
        write_tensorboard(tensorboard_folder(store, cfg, info, result.key), result.curves,
                          final=test_scalars(result.records), hparams=hparams or default_hparams(cfg))
    # storing the records marks the trial finished: nothing but cleanup may follow
    store.put_trial(result.key, result.records, curves=result.curves)
    if result.checkpoint is not None:
        for leftover in (result.checkpoint, curves_resume_file(result.checkpoint)):
            leftover.unlink(missing_ok=True)
    return result


def stored_records(store: ResultStore, key: str) -> list[dict[str, Any]]:
    df = store.dataframe()
    if df.empty:
        return []
    rows = df[df["trial_key"] == key].drop(columns=["record_id"])
    return [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
            for r in rows.to_dict("records")]


def finished_records(store: ResultStore, key: str) -> list[dict[str, Any]] | None:
    """The records of an identical config already finished (resumed sweep, repeated sample), else None.

    A finished failure raises TrialFailure: the engine sees the trial fail again without rerunning it.
    """
    done = store.statuses().get(key)
    if done not in FINISHED:
        return None
    records = stored_records(store, key)
    if done != "ok":
        raise TrialFailure(f"trial {key} failed before: {records[0].get('failure') if records else ''}")
    return records


def tensorboard_folder(store: ResultStore, cfg: TrialConfig, info: dict[str, Any], key: str) -> Path:
    """`<store>/tensorboard/<label> [<key>]/`: a trial's TensorBoard run, named by its label."""
    label = str(info.get("label") or f"{cfg.method} seed={cfg.seed}").replace(os.sep, "_")
    return store.folder / TENSORBOARD_FOLDER / f"{label} [{key}]"


def default_hparams(cfg: TrialConfig) -> dict[str, Any]:
    return {"method": cfg.method, "seed": cfg.seed}


def store_pruned(store: ResultStore, cfg: TrialConfig, *, history: dict[int, float], info: dict[str, Any],
                 started: float, hparams: dict[str, Any] | None = None) -> None:
    """A stopped trial keeps one record (status "pruned", why in "failure", `val_history` the values
    reported after epochs 1..n) and the curves of the epochs it trained (store and TensorBoard); its
    checkpoint and the curves waiting beside it go. `history` maps 0-based epochs to values."""
    epochs = max(history) + 1 if history else 0
    reason = f"pruned after epoch {epochs}" + (f" (validation {history[epochs - 1]:.2f})" if history else "")
    record = base_record(cfg, status="pruned", failure=reason, started=started,
                         info={**info, "epochs": epochs,  # history by 0-based epoch, stored as epochs 1..n
                               "val_history": json.dumps({str(k + 1): v for k, v in sorted(history.items())})})
    key = record["trial_key"]
    checkpoint = store.folder / "checkpoints" / f"{key}.ckpt"
    curves = read_curves_file(curves_resume_file(checkpoint))
    if curves:
        write_tensorboard(tensorboard_folder(store, cfg, info, key), curves, hparams=hparams or default_hparams(cfg))
    store.put_trial(key, [record], curves=curves or None)
    for leftover in (checkpoint, curves_resume_file(checkpoint)):
        leftover.unlink(missing_ok=True)


def objective_values(store: ResultStore, cfg: TrialConfig, records: list[dict[str, Any]],
                     objectives: Sequence[str]) -> list[float]:
    """The objectives of a finished trial; a missing or non-finite one replaces its records by one failure.

    Optuna would mark NaN as FAIL but inf as COMPLETE, and a trial whose objective is not
    finite must not look usable in the tables either. The failed record keeps the first
    record's measurements and bookkeeping, so the offending values stay visible.
    """
    first = records[0] if records else {}
    values = [first.get(name) for name in objectives]
    bad = [f"{n}={v}" for n, v in zip(objectives, values)
           if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)]
    if bad:
        reason = f"objective not finite: {', '.join(bad)}"
        kept = {k: v for k, v in first.items() if k not in IDENTITY_FIELDS}
        record = TrialRecord.failed(cfg, reason, fields=kept).as_dict()
        store.put_trial(record["trial_key"], [record])
        raise TrialFailure(reason)
    return [float(v) for v in values]


def informative_value(records: list[dict[str, Any]], objective: str) -> float | None:
    """A grid point's objective, shown but never optimised: None where it is missing or not finite."""
    value = records[0].get(objective) if records else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def validation_reporter(metric: str | None, report: Callable[[float, int], None],
                        *, last_epoch: int | None = None) -> Callable[[int, dict[str, float], Callable], None]:
    """An `on_epoch` callback that validates and reports `metric` after each epoch (before `last_epoch`).

    A non-finite validation value fails the trial; `report` may raise the engine's stop signal.
    """
    def on_epoch(epoch: int, losses: dict[str, float], validate: Callable[[], dict[str, float]]) -> None:
        if metric is None or (last_epoch is not None and epoch >= last_epoch):
            return
        value = validate()[metric]
        if not math.isfinite(value):
            raise TrialFailure(f"validation {metric} is not finite after epoch {epoch}: {value}")
        report(value, epoch)

    return on_epoch


# --------------------------------------------------------------------------- processes


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker process: this package importable from where the parent found it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def sweep_failures(store: ResultStore) -> list[str] | None:
    """Every failure of a store in which no trial finished ok ('key: reason'), else None."""
    df = store.dataframe()
    if df.empty or "status" not in df or (df["status"] == "ok").any() or not (df["status"] == "failed").any():
        return None
    failed = df[df["status"] == "failed"].drop_duplicates("trial_key")
    return [f"{row['trial_key']} ({row.get('method', '?')} seed={row.get('seed', '?')}): {row.get('failure')}"
            for row in failed.to_dict("records")]
