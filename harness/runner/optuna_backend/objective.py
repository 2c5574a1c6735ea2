"""One Optuna trial = one harness trial, and the loop a worker runs until the study's queue is empty."""

from __future__ import annotations

import gc
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.config import TrialConfig
from harness.errors import TrialFailure
from harness.provenance import config_key
from harness.results import ResultStore
from harness.results.records import sampled_params
from harness.runner.common import (
    TrialFunction,
    execute_trial,
    finished_records,
    informative_value,
    objective_values,
    resolve_trial_function,
    store_pruned,
    validation_reporter,
)
from harness.runner.optuna_backend.job import OptunaJob
from harness.runner.optuna_backend.study import (
    DatabaseLock,
    FolderLock,
    record_heartbeat,
    study_lock,
    watch_running_trials,
)
from harness.search import GRID_INDEX, search_fields, suggest_space, trial_hparams, trial_label

GC_AFTER_SECONDS = 10.0


def display(update: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """A progress display that breaks must not fail the trial it shows."""
    try:
        update(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"progress display: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)


def progress_status(t: optuna.trial.FrozenTrial) -> str:
    outcome = t.user_attrs.get("outcome", "failed")
    return "skipped" if outcome.startswith("reused") else outcome


class Objective:
    """Runs the trial an Optuna trial stands for through execute_trial, its records in the sweep's store."""

    def __init__(self, job: OptunaJob, lock: FolderLock | DatabaseLock, progress: Any = None,
                 trial_fn: TrialFunction | None = None) -> None:
        self.job, self.lock, self.progress = job, lock, progress
        self.store = ResultStore(job.folder)
        self.trial_fn = trial_fn if trial_fn is not None else resolve_trial_function(job.trial_fn)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        # A trial without any heartbeat never turns stale: record one before anything can kill us.
        record_heartbeat(trial.study, trial.number)
        self.lock.release()  # the trial is asked: other workers may ask theirs
        job = self.job
        grid_index = int(trial.user_attrs.get(GRID_INDEX, 0))
        params = suggest_space(trial, job.spec.search.space) if job.spec.search else {}
        cfg = job.configs[grid_index].with_overrides(params, where=f"{job.spec.source}: optuna trial {trial.number}")
        key = config_key(cfg)
        trial.set_user_attr("trial_key", key)
        label = trial_label(cfg, job.swept)
        trial.set_user_attr("label", label)
        info = {"optuna_trial": trial.number, "label": label, **sampled_params(params), **search_fields(job.spec)}
        try:
            records = finished_records(self.store, key)
        except TrialFailure:
            trial.set_user_attr("outcome", "reused-failed")
            raise
        if records is not None:
            trial.set_user_attr("outcome", "reused-ok")
            return self._values(cfg, records, trial)
        if self.progress is not None:
            display(self.progress.trial_started, f"trial {trial.number} {label}",
                    epochs=cfg.train.epochs)
        history: dict[int, float] = {}
        started = time.time()
        try:
            result = execute_trial(cfg, self.store, sweep=job.spec.name, backend="optuna", trial_id=str(trial.number),
                                   trial_fn=self.trial_fn, on_epoch=self._epoch_callback(trial, history),
                                   on_iter=self.progress.iteration if self.progress else None, extra=info,
                                   passthrough=(optuna.TrialPruned,), keep_model=job.spec.keep_models,
                                   test_protocols=job.spec.search is None, hparams=trial_hparams(cfg, job.swept))
        except optuna.TrialPruned:
            sweep_info = {"sweep": job.spec.name, "backend": "optuna", "trial_id": str(trial.number), **info}
            store_pruned(self.store, cfg, history=history, info=sweep_info, started=started,
                         hparams=trial_hparams(cfg, job.swept))
            trial.set_user_attr("outcome", "pruned")
            raise
        if result.status != "ok":
            trial.set_user_attr("outcome", "failed")
            raise TrialFailure(result.failure or "trial failed")
        return self._values(cfg, result.records, trial)

    def _values(self, cfg: TrialConfig, records: list[dict[str, Any]], trial: optuna.Trial) -> float | list[float]:
        job = self.job
        if job.spec.search is None:  # a grid point has nothing to optimise: its value is informative only
            trial.set_user_attr("outcome", trial.user_attrs.get("outcome", "ok"))
            value = informative_value(records, job.objectives[0])
            return 0.0 if value is None else value
        try:
            values = objective_values(self.store, cfg, records, job.objectives)
        except TrialFailure:
            trial.set_user_attr("outcome", "failed")
            raise
        if "outcome" not in trial.user_attrs:
            trial.set_user_attr("outcome", "ok")
        return values if job.multi_objective else values[0]

    def _epoch_callback(self, trial: optuna.Trial, history: dict[int, float]) -> Callable[..., None]:
        progress, metric = self.progress, self.job.report_metric

        def report(value: float, epoch: int) -> None:
            history[epoch] = value
            trial.report(value, epoch + 1)  # steps are epochs 1..n, as the curves and TensorBoard number them
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {metric} {value:.2f} after epoch {epoch + 1}")

        validate = validation_reporter(metric, report)

        def on_epoch(epoch: int, losses: dict[str, float], validate_fn: Callable[[], dict[str, float]]) -> None:
            if progress is not None:
                display(progress.epoch, epoch, losses)
            validate(epoch, losses, validate_fn)

        return on_epoch

    def finished(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if self.progress is not None:
            display(self.progress.trial_finished, progress_status(frozen))
        if frozen.duration is not None and frozen.duration.total_seconds() > GC_AFTER_SECONDS:
            gc.collect()  # a finished model may sit in reference cycles; a full collection costs ~0.5 s


def work(job: OptunaJob, study: optuna.Study, *, progress: Any = None, quiet: bool = True,
         trial_fn: TrialFunction | None = None) -> None:
    """Run queued trials until none is left and no other worker's trial can still come back.

    While only trials of other (possibly dead) workers are RUNNING, the wait is announced once
    with how long a silent worker's trial takes to be retried (`--stale-after`).
    """
    lock = study_lock(job)
    objective = Objective(job, lock, progress, trial_fn=trial_fn)
    poll = min(job.heartbeat_interval, 2)
    announced: set[int] = set()
    while True:
        lock.acquire()
        try:
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial is queued again
            states = [t.state for t in study.get_trials(deepcopy=False)]
            if TrialState.WAITING in states:
                study.optimize(objective, n_trials=1, catch=(TrialFailure,), callbacks=[objective.finished])
                continue
            running = set(watch_running_trials(study)) if not announced and TrialState.RUNNING in states else set()
        finally:
            lock.release()
        if TrialState.RUNNING not in states:
            return
        if running and not quiet:
            print(f"optuna sweep {job.spec.name}: waiting for trial(s) {sorted(running)} of other workers; a "
                  f"stopped worker's trial is retried after {job.grace_period} s without a heartbeat "
                  "(--stale-after)", file=sys.stderr)
        announced |= running or {-1}
        time.sleep(poll)  # another worker's trial may finish, or go stale and need a retry
