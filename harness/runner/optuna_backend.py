"""Optuna backend: a sweep as one Optuna study in `<folder>/optuna.sqlite`, run by one or more workers.

Every planned trial is enqueued up front (a "slot"), so the budget is exact however many worker
processes share the study: a worker only asks for a trial while queued slots remain, under a
lock on the sweep folder.

- No search: one slot per grid point (`grid_index`); a point whose records are already
  finished in the store (ok or failed) is not run again.
- Search: the grid is crossed with the search: every grid point gets `n_trials` sampled trials
  (`grid_index` fixed per slot, the sampler fills the space), so a sweep of 2 grid points and
  `n_trials: 10` runs 20 trials. Sampler `grid` enqueues every combination of the discretised
  space instead (numbers need a `step`; `n_trials` caps the combinations per grid point, a
  seeded subset when there are more).

Objectives are validation metrics (`val_*`, measured on held-out training identities) or costs
(`train_img_per_s`, ...); test metrics never select hyper-parameters. Several objectives make a
multi-objective study (no pruning); its Pareto front goes to `pareto.csv`.

Resume: rerunning the same command continues the study. A worker killed mid-trial leaves its
trial RUNNING; heartbeats turn it stale after the grace period and a copy of it is queued again
(the trial resumes from its checkpoint). A trial interrupted by Ctrl-C or an input error is
queued again by the next run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import importlib
import itertools
import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import optuna
from optuna.trial import TrialState

from harness.config import TrialConfig
from harness.errors import HarnessError
from harness.sweep import SearchSpace, SweepSpec

try:  # POSIX; elsewhere concurrent workers run without the folder lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

STUDY_FILE = "optuna.sqlite"
LOCK_FILE = "optuna.lock"
JOB_FILE = "optuna_job.json"
TRIALS_CSV = "optuna_trials.csv"
PARETO_CSV = "pareto.csv"
GRID_PARAM = "grid_index"
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "hyperband", "none")
VALIDATION_PREFIX = "val_"
COST_OBJECTIVES = {"train_img_per_s": "maximize", "infer_img_per_s": "maximize", "peak_memory_mb": "minimize",
                   "num_params": "minimize", "wall_seconds": "minimize"}
"""Objectives that are not accuracy: throughput, memory, size, time (with their natural direction)."""
HEARTBEAT_INTERVAL = 60
GRACE_PERIOD = 180
GC_AFTER_SECONDS = 10.0


class TrialFailed(RuntimeError):
    """A trial ended without a usable objective; Optuna records it as FAIL and the study goes on."""


# --------------------------------------------------------------------------- search definition


def objective_names(spec: SweepSpec) -> list[str]:
    search = spec.search
    if search is None:
        return ["val_mAP"]
    return list(search.objectives) if search.objectives else [search.objective]


def objective_directions(spec: SweepSpec) -> list[str]:
    """One direction per objective: the spec's for a single one, each metric's natural one for several."""
    names = objective_names(spec)
    if len(names) == 1:
        return [spec.search.direction if spec.search else "maximize"]
    return [COST_OBJECTIVES.get(n, "maximize") for n in names]


def validation_key(objective: str) -> str | None:
    """`val_mAP` -> `mAP`, the key of `validate()`'s dict; None for a cost objective."""
    return objective[len(VALIDATION_PREFIX):] if objective.startswith(VALIDATION_PREFIX) else None


def _is_primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _categorical_options(dist: dict[str, Any]) -> tuple[list[Any], bool]:
    """Optuna stores only scalars: other choices (lists, mappings) travel as JSON text."""
    choices = dist["choices"]
    if all(_is_primitive(c) for c in choices):
        return list(choices), False
    return [json.dumps(c, sort_keys=True) for c in choices], True


def suggest_space(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Dotted config key -> value, drawn from an Optuna trial (or anything with its suggest_* API)."""
    values: dict[str, Any] = {}
    for key, dist in space.items():
        kind = dist["type"]
        if kind == "categorical":
            options, encoded = _categorical_options(dist)
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


def _grid_values(where: str, dist: dict[str, Any]) -> list[Any]:
    kind = dist["type"]
    if kind == "categorical":
        return _categorical_options(dist)[0]
    if kind == "int":
        return list(range(int(dist["low"]), int(dist["high"]) + 1, int(dist.get("step") or 1)))
    step = dist.get("step")
    if not step:
        raise HarnessError(f"{where}: sampler grid needs a 'step' for a {kind} distribution (or use categorical)")
    low, high, step = float(dist["low"]), float(dist["high"]), float(step)
    count = int(math.floor((high - low) / step + 1e-9)) + 1
    return [round(low + i * step, 12) for i in range(count)]


def search_plan(spec: SweepSpec, n_grid: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """The fixed parameters of every trial slot, in the order they are enqueued."""
    search = spec.search
    if search is None:
        return [{GRID_PARAM: g} for g in range(n_grid)]
    if search.sampler != "grid":
        return [{GRID_PARAM: r % n_grid} for r in range(search.n_trials * n_grid)]
    keys = list(search.space)
    points = list(itertools.product(*(_grid_values(f"{spec.source}: search.space.{k}", search.space[k])
                                      for k in keys)))
    if len(points) > search.n_trials:
        random.Random(seed).shuffle(points)
        points = points[:search.n_trials]
    return [{GRID_PARAM: g, **dict(zip(keys, p))} for p in points for g in range(n_grid)]


def check_search(spec: SweepSpec, configs: Sequence[TrialConfig]) -> None:
    """Reject a search that cannot run, before anything runs."""
    search = spec.search
    if search is None:
        return
    src = spec.source
    if search.sampler not in SAMPLERS:
        raise HarnessError(f"{src}: search.sampler {search.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if search.pruner not in PRUNERS:
        raise HarnessError(f"{src}: search.pruner {search.pruner!r} is not one of {', '.join(PRUNERS)}")
    if not isinstance(search.workers, int) or isinstance(search.workers, bool) or search.workers < 1:
        raise HarnessError(f"{src}: search.workers must be a positive integer, got {search.workers!r}")
    if not isinstance(search.objectives, list):
        raise HarnessError(f"{src}: search.objectives must be a list of metric names, got {search.objectives!r}")
    names = objective_names(spec)
    if len(set(names)) != len(names):
        raise HarnessError(f"{src}: search.objectives lists a metric twice: {names}")
    for name in names:
        if not isinstance(name, str) or not (name.startswith(VALIDATION_PREFIX) and len(name) > 4
                                             or name in COST_OBJECTIVES):
            raise HarnessError(
                f"{src}: search objective {name!r} is not a validation metric; use val_mAP, val_rank1, val_mINP "
                f"(held-out training identities) or a cost ({', '.join(COST_OBJECTIVES)}): test metrics never "
                "select hyper-parameters")
    if any(validation_key(n) for n in names) and "data.val_identities" not in search.space:
        for i, cfg in enumerate(configs):
            if cfg.data.val_identities <= 0:
                raise HarnessError(
                    f"{src}: search objective {names[0]!r} needs validation data but data.val_identities is "
                    f"{cfg.data.val_identities} (grid point {i}); set data.val_identities > 0 in base so some "
                    "training identities are held out for validation")
    for key, dist in search.space.items():
        where = f"{src}: search.space.{key}"
        kind = dist["type"]
        if kind == "loguniform" and dist.get("step"):
            raise HarnessError(f"{where}: loguniform cannot have a step")
        if kind == "int" and dist.get("log") and int(dist.get("step") or 1) != 1:
            raise HarnessError(f"{where}: an int with log: true cannot have a step other than 1")
        if dist.get("step") is not None and (not isinstance(dist["step"], (int, float)) or dist["step"] <= 0):
            raise HarnessError(f"{where}: step must be a positive number, got {dist['step']!r}")
        if kind == "categorical":
            samples = dist["choices"]
        elif kind == "int":
            samples = [int(dist["low"]), int(dist["high"])]
        else:
            samples = [float(dist["low"]), float(dist["high"])]
        for value in samples:  # a value the config cannot take fails here, not in trial 37
            configs[0].with_overrides({key: value}, where=where)


# --------------------------------------------------------------------------- shared by the backends


def import_trial_function(path: str) -> Callable[..., Any]:
    """`package.module:function` -> the function (a stand-in for harness.trial.run_trial)."""
    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise HarnessError(f"trial function {path!r}: cannot import ({exc}); expected 'package.module:function'") \
            from None
    if not callable(fn):
        raise HarnessError(f"trial function {path!r} is not callable")
    return fn


@contextmanager
def trial_function(path: str | None) -> Iterator[None]:
    """Run trials with another function than run_trial (tests use a fast fake one)."""
    if not path:
        yield
        return
    from harness.runner import common

    saved = common.run_trial
    common.run_trial = import_trial_function(path)
    try:
        yield
    finally:
        common.run_trial = saved


def store_pruned(store: Any, cfg: TrialConfig, *, history: dict[int, float], info: dict[str, Any],
                 started: float) -> None:
    """A stopped trial keeps one record (status "pruned", why in "failure") and loses its checkpoint."""
    from harness.trial import config_key

    epochs = max(history) + 1 if history else 0
    reason = f"pruned after epoch {epochs}" + (f" (validation {history[epochs - 1]:.2f})" if history else "")
    record = {"trial_key": config_key(cfg), "method": cfg.method, "backbone": cfg.model.backbone,
              "dataset": cfg.data.dataset, "seed": cfg.seed, "config": json.dumps(cfg.to_dict(), sort_keys=True),
              "status": "pruned", "failure": reason, "epochs": epochs, "wall_seconds": time.time() - started,
              "val_history": json.dumps({str(k): v for k, v in sorted(history.items())}), **info}
    store.put_trial(record["trial_key"], [record])
    checkpoint = store.folder / "checkpoints" / f"{record['trial_key']}.ckpt"
    if checkpoint.exists():
        checkpoint.unlink()


def stored_records(store: Any, key: str) -> list[dict[str, Any]]:
    df = store.dataframe()
    if df.empty:
        return []
    rows = df[df["trial_key"] == key].drop(columns=["record_id"])
    return [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
            for r in rows.to_dict("records")]


def objective_values(store: Any, key: str, records: list[dict[str, Any]], objectives: Sequence[str]) -> list[float]:
    """The objectives of a finished trial; a missing or non-finite one turns its records into failures.

    Optuna would mark NaN as FAIL but inf as COMPLETE, and a trial whose objective is not
    finite must not look usable in the tables either.
    """
    first = records[0] if records else {}
    values = [first.get(name) for name in objectives]
    bad = [f"{n}={v}" for n, v in zip(objectives, values)
           if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)]
    if bad:
        reason = f"objective not finite: {', '.join(bad)}"
        store.put_trial(key, [{**r, "status": "failed", "failure": reason} for r in records])
        raise TrialFailed(reason)
    return [float(v) for v in values]


def non_dominated(values: Any, directions: Sequence[str]) -> Any:
    """Boolean mask of the rows of `values` (n, k) that no other row dominates."""
    import numpy as np

    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    pts = np.asarray(values, dtype=float).reshape(-1, len(directions)) * sign
    at_least = (pts[None, :, :] >= pts[:, None, :]).all(-1)
    better = (pts[None, :, :] > pts[:, None, :]).any(-1)
    return ~(at_least & better).any(1)


# --------------------------------------------------------------------------- study


@dataclass
class OptunaJob:
    """Everything a worker needs to run trials of a study; written to `optuna_job.json` for worker processes."""

    spec: SweepSpec
    folder: Path
    overrides: dict[str, Any]
    trial_fn: str | None = None
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()
        self.configs = self.spec.trials(self.overrides)
        check_search(self.spec, self.configs)
        self.objectives = objective_names(self.spec)
        self.directions = objective_directions(self.spec)
        self.seed = self.configs[0].seed
        self.plan = search_plan(self.spec, len(self.configs), seed=self.seed)
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise HarnessError(f"optuna heartbeat: interval {self.heartbeat_interval} s must be >= 1 and below the "
                               f"grace period {self.grace_period} s")

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def report_epochs(self) -> bool:
        """Validate after every epoch only where a pruner uses it."""
        search = self.spec.search
        return (search is not None and not self.multi_objective and search.pruner != "none"
                and validation_key(self.objectives[0]) is not None)

    def fingerprint(self) -> str:
        search = self.spec.search
        blob = {"base": self.spec.base, "grid": self.spec.grid, "overrides": self.overrides,
                "objectives": self.objectives, "directions": self.directions,
                "space": search.space if search else None, "sampler": search.sampler if search else None}
        return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"spec": dataclasses.asdict(self.spec), "folder": str(self.folder),
                           "overrides": self.overrides, "trial_fn": self.trial_fn,
                           "heartbeat_interval": self.heartbeat_interval, "grace_period": self.grace_period},
                          indent=1, default=str)

    @classmethod
    def from_json(cls, text: str) -> "OptunaJob":
        data = json.loads(text)
        spec_data = dict(data["spec"])
        if spec_data.get("search") is not None:
            spec_data["search"] = SearchSpace(**spec_data["search"])
        return cls(spec=SweepSpec(**spec_data), folder=Path(data["folder"]), overrides=data["overrides"],
                   trial_fn=data["trial_fn"], heartbeat_interval=data["heartbeat_interval"],
                   grace_period=data["grace_period"])


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Our progress display reports trials; Optuna's per-trial log lines and experimental warnings would repeat it."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(level)


def _connect_sqlite(path: Path) -> sqlite3.Connection:
    """WAL lets workers read while one writes; synchronous=NORMAL drops the fsync of every commit
    (a power cut may lose the last commits, never corrupt the file)."""
    con = sqlite3.connect(path, timeout=120, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    return con


def _storage(job: OptunaJob) -> optuna.storages.RDBStorage:
    path = job.folder / STUDY_FILE
    return optuna.storages.RDBStorage(
        url=f"sqlite:///{path}", engine_kwargs={"creator": lambda: _connect_sqlite(path)},
        heartbeat_interval=job.heartbeat_interval, grace_period=job.grace_period,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())


def _sampler(job: OptunaJob, worker: int, workers: int, known_trials: int = 0) -> optuna.samplers.BaseSampler:
    """A seeded sampler that differs per worker and per resume.

    Two workers with one seed would propose the same points at once, and a resumed run with the
    first run's seed would repeat its first random draws.
    """
    search = job.spec.search
    seed = job.seed + 7919 * worker + known_trials
    if search is not None and search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=workers > 1)
    return optuna.samplers.RandomSampler(seed=seed)  # grid slots are fully fixed: it never draws


def _pruner(job: OptunaJob) -> optuna.pruners.BasePruner:
    search = job.spec.search
    if search is None or job.multi_objective or search.pruner == "none":
        return optuna.pruners.NopPruner()
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner()


def open_study(job: OptunaJob, *, worker: int = 0, workers: int = 1) -> optuna.Study:
    """The study as a worker sees it: its own seeded sampler, the spec's pruner."""
    with quiet_optuna():
        study = optuna.load_study(study_name=job.spec.name, storage=_storage(job), pruner=_pruner(job))
    drawn = study.get_trials(deepcopy=False, states=tuple(s for s in TrialState if s != TrialState.WAITING))
    study.sampler = _sampler(job, worker, workers, known_trials=len(drawn))
    return study


def superseded_numbers(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """Trials that were queued again (stale or interrupted): their copy stands for them."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


class FolderLock:
    """An exclusive lock among processes sharing the sweep folder; the OS drops it if the holder dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def prepare_study(job: OptunaJob) -> optuna.Study:
    """Create or continue the study (once, before any worker starts) and queue every missing slot."""
    job.folder.mkdir(parents=True, exist_ok=True)
    with FolderLock(job.folder / LOCK_FILE), quiet_optuna():
        directions = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
                      for d in job.directions]
        study = optuna.create_study(storage=_storage(job), study_name=job.spec.name, directions=job.directions,
                                    sampler=_sampler(job, 0, 1), pruner=_pruner(job), load_if_exists=True)
        recorded = study.user_attrs.get("spec_fingerprint")
        path = job.folder / STUDY_FILE
        if recorded is None and study.get_trials(deepcopy=False):
            raise HarnessError(f"{path}: study {job.spec.name!r} was not created by this harness; "
                               "delete the file or rename the sweep")
        if recorded is not None and recorded != job.fingerprint():
            raise HarnessError(
                f"{path}: study {job.spec.name!r} was created from a different sweep (base, grid, search space, "
                "objectives or --set overrides changed); rename the sweep or delete the file to start over")
        if list(study.directions) != directions:
            raise HarnessError(f"{path}: study {job.spec.name!r} optimises {len(study.directions)} objective(s) with "
                               f"other directions than {job.directions}; rename the sweep or delete the file")
        study.set_user_attr("spec_fingerprint", job.fingerprint())
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        gone = superseded_numbers(trials)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback()
        for t in trials:  # interrupted (Ctrl-C, input error): no outcome was recorded, so run it again
            if t.state == TrialState.FAIL and "outcome" not in t.user_attrs and t.number not in gone:
                retry(study, t)
        trials = study.get_trials(deepcopy=False)
        gone = superseded_numbers(trials)
        slots = {t.user_attrs.get("slot") for t in trials if t.number not in gone}
        if slots - {None} and max(slots - {None}) >= len(job.plan):
            raise HarnessError(f"{path}: study {job.spec.name!r} already plans {max(slots - {None}) + 1} trials, "
                               f"more than the spec's {len(job.plan)}; search.n_trials can grow on resume, not shrink")
        for slot, params in enumerate(job.plan):
            if slot not in slots:
                study.enqueue_trial(params, user_attrs={"slot": slot})
    return study


def display(update: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """A progress display that breaks must not fail the trial it shows."""
    try:
        update(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"progress display: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    gone = superseded_numbers(trials)
    return [t for t in trials if t.state.is_finished() and t.number not in gone]


def _progress_status(t: optuna.trial.FrozenTrial) -> str:
    outcome = t.user_attrs.get("outcome", "failed")
    return "skipped" if outcome.startswith("reused") else outcome


def _first_heartbeat(trial: optuna.Trial, study_name: str) -> None:
    """Record the trial's heartbeat now, not when its heartbeat thread gets to it.

    A trial without any heartbeat never turns stale, so a worker killed in its first moments
    would leave a RUNNING trial that nothing retries.
    """
    storage = trial.storage
    if isinstance(storage, optuna.storages.RDBStorage) and storage.heartbeat_interval:
        study_id = storage.get_study_id_from_name(study_name)
        storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))


class Objective:
    """One Optuna trial = one harness trial through execute_trial, its records in the sweep's store."""

    def __init__(self, job: OptunaJob, lock: FolderLock, progress: Any = None) -> None:
        from harness.results import ResultStore

        self.job, self.lock, self.progress = job, lock, progress
        self.store = ResultStore(job.folder)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        _first_heartbeat(trial, self.job.spec.name)
        self.lock.release()  # the trial is asked: other workers may ask theirs
        from harness.runner.common import FINISHED, execute_trial
        from harness.trial import config_key

        job = self.job
        grid_index = trial.suggest_categorical(GRID_PARAM, list(range(len(job.configs))))
        params = suggest_space(trial, job.spec.search.space) if job.spec.search else {}
        cfg = job.configs[grid_index].with_overrides(params, where=f"{job.spec.source}: optuna trial {trial.number}")
        key = config_key(cfg)
        trial.set_user_attr("trial_key", key)
        info = {"optuna_trial": trial.number, **{f"param_{k}": v for k, v in params.items()}}
        done = self.store.statuses().get(key)
        if done in FINISHED:  # identical config already finished (resumed sweep, repeated sample)
            records = stored_records(self.store, key)
            trial.set_user_attr("outcome", f"reused-{done}")
            if done != "ok":
                raise TrialFailed(f"trial {key} failed before: {records[0].get('failure') if records else ''}")
            return self._values(key, records, trial)
        if self.progress is not None:
            display(self.progress.trial_started, f"trial {trial.number} {cfg.method} seed={cfg.seed}",
                    epochs=cfg.train.epochs)
        history: dict[int, float] = {}
        started = time.time()
        try:
            result = execute_trial(cfg, self.store, sweep=job.spec.name, backend="optuna", trial_id=str(trial.number),
                                   on_epoch=self._epoch_callback(trial, history),
                                   on_iter=self.progress.iteration if self.progress else None, extra=info,
                                   passthrough=(optuna.TrialPruned,))
        except optuna.TrialPruned:
            sweep_info = {"sweep": job.spec.name, "backend": "optuna", "trial_id": str(trial.number), **info}
            store_pruned(self.store, cfg, history=history, info=sweep_info, started=started)
            trial.set_user_attr("outcome", "pruned")
            raise
        if result.status != "ok":
            trial.set_user_attr("outcome", "failed")
            raise TrialFailed(result.failure or "trial failed")
        return self._values(key, result.records, trial)

    def _values(self, key: str, records: list[dict[str, Any]], trial: optuna.Trial) -> float | list[float]:
        job = self.job
        if job.spec.search is None:  # a grid point has nothing to optimise: its value is informative only
            value = records[0].get(job.objectives[0]) if records else None
            trial.set_user_attr("outcome", trial.user_attrs.get("outcome", "ok"))
            return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0
        try:
            values = objective_values(self.store, key, records, job.objectives)
        except TrialFailed:
            trial.set_user_attr("outcome", "failed")
            raise
        if "outcome" not in trial.user_attrs:
            trial.set_user_attr("outcome", "ok")
        return values if job.multi_objective else values[0]

    def _epoch_callback(self, trial: optuna.Trial, history: dict[int, float]) -> Callable[..., None]:
        progress, job = self.progress, self.job
        metric = validation_key(job.objectives[0])

        def on_epoch(epoch: int, losses: dict[str, float], validate: Callable[[], dict[str, float]]) -> None:
            if progress is not None:
                display(progress.epoch, epoch, losses)
            if not job.report_epochs:
                return
            value = validate()[metric]
            if not math.isfinite(value):
                raise ValueError(f"validation {metric} is not finite after epoch {epoch}: {value}")
            history[epoch] = value
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {metric} {value:.2f} after epoch {epoch}")

        return on_epoch

    def finished(self, study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if self.progress is not None:
            display(self.progress.trial_finished, _progress_status(frozen))
        if frozen.duration is not None and frozen.duration.total_seconds() > GC_AFTER_SECONDS:
            gc.collect()  # a finished model may sit in reference cycles; a full collection costs ~0.5 s


def work(job: OptunaJob, study: optuna.Study, *, progress: Any = None) -> None:
    """Run queued trials until none is left and no other worker's trial can still come back."""
    lock = FolderLock(job.folder / LOCK_FILE)
    objective = Objective(job, lock, progress)
    poll = min(job.heartbeat_interval, 2)
    while True:
        lock.acquire()
        try:
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial is queued again
            states = [t.state for t in study.get_trials(deepcopy=False)]
            if TrialState.WAITING in states:
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[objective.finished])
                continue
        finally:
            lock.release()
        if TrialState.RUNNING not in states:
            return
        time.sleep(poll)  # another worker's trial may finish, or go stale and need a retry


def write_study_tables(job: OptunaJob, study: optuna.Study) -> None:
    """`optuna_trials.csv` (every trial; `is_pareto` for several objectives) and `pareto.csv`."""
    from harness.results import atomic_write_text

    attrs = ("number", "values" if job.multi_objective else "value", "state", "params", "user_attrs",
             "datetime_start", "duration")
    df = study.trials_dataframe(attrs=attrs)
    if df.empty:
        atomic_write_text(job.folder / TRIALS_CSV, "")
        return
    if job.multi_objective:
        df = df.rename(columns={f"values_{i}": name for i, name in enumerate(job.objectives)})
    else:
        df = df.rename(columns={"value": job.objectives[0]})
    df["retried"] = df["number"].isin(superseded_numbers(study.get_trials(deepcopy=False)))
    if job.multi_objective:
        front = {t.number for t in study.best_trials}
        df["is_pareto"] = df["number"].isin(front)
        atomic_write_text(job.folder / PARETO_CSV, df[df["is_pareto"]].to_csv(index=False))
    atomic_write_text(job.folder / TRIALS_CSV, df.to_csv(index=False))


# --------------------------------------------------------------------------- entry points


def write_job(job: OptunaJob) -> Path:
    from harness.results import atomic_write_text

    path = job.folder / JOB_FILE
    atomic_write_text(path, job.to_json())
    return path


def worker_command(job_path: Path, worker: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "harness.runner.optuna_backend", "--job", str(job_path), "--worker", str(worker),
            "--workers", str(workers)]


def _worker_env() -> dict[str, str]:
    """Workers import this package from where the parent did, installed or not."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _run_worker_processes(job: OptunaJob, study: optuna.Study, workers: int, progress: Any) -> None:
    path = write_job(job)
    procs = [subprocess.Popen(worker_command(path, i, workers), env=_worker_env(), stdout=subprocess.DEVNULL)
             for i in range(workers)]
    seen = {t.number for t in _finished(study)}
    try:
        while True:
            running = any(p.poll() is None for p in procs)
            for t in _finished(study):
                if t.number not in seen:
                    seen.add(t.number)
                    display(progress.trial_finished, _progress_status(t))
            if not running:
                break
            time.sleep(1.0)
    finally:
        for p in procs:  # Ctrl-C reaches the workers too; give them a moment to record it
            if p.poll() is None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    bad = [f"worker {i}: exit code {p.returncode}" for i, p in enumerate(procs) if p.returncode != 0]
    if bad:
        raise HarnessError(f"optuna sweep {job.spec.name!r}: {'; '.join(bad)} (their messages are above); "
                           "rerun the same command to resume")


def run_optuna(spec: SweepSpec, folder: Path, *, overrides: dict[str, Any] | None = None, workers: int | None = None,
               quiet: bool = False, trial_fn: str | None = None, heartbeat_interval: int = HEARTBEAT_INTERVAL,
               grace_period: int = GRACE_PERIOD) -> None:
    """Run (or resume) the sweep as an Optuna study; `workers` > 1 starts that many worker processes.

    `trial_fn` ("package.module:function") replaces run_trial, in this process and the workers.
    """
    from harness.progress import SweepProgress

    job = OptunaJob(spec=spec, folder=Path(folder), overrides=dict(overrides or {}), trial_fn=trial_fn,
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    workers = workers if workers is not None else (spec.search.workers if spec.search else 1)
    if not isinstance(workers, int) or workers < 1:
        raise HarnessError(f"--workers: expected a positive integer, got {workers!r}")
    with quiet_optuna():
        study = prepare_study(job)
        with SweepProgress(total=len(job.plan), title=spec.name, quiet=quiet) as progress:
            for _ in _finished(study):
                progress.trial_skipped("resumed")
            try:
                if workers == 1:
                    with trial_function(trial_fn):
                        work(job, open_study(job), progress=progress)
                else:
                    _run_worker_processes(job, study, workers, progress)
            finally:
                write_study_tables(job, study)


def main(argv: Sequence[str] | None = None) -> int:
    """A worker process: `python -m harness.runner.optuna_backend --job <folder>/optuna_job.json --worker N`."""
    parser = argparse.ArgumentParser(prog="python -m harness.runner.optuna_backend",
                                     description="one worker of an Optuna sweep (started by `vireid sweep`)")
    parser.add_argument("--job", required=True, type=Path, help="the sweep's optuna_job.json")
    parser.add_argument("--worker", type=int, default=0, help="worker index (seeds its sampler)")
    parser.add_argument("--workers", type=int, default=1, help="how many workers share the study")
    args = parser.parse_args(argv)
    try:
        if not args.job.is_file():
            raise HarnessError(f"{args.job}: no such job file; start sweeps with `vireid sweep`")
        job = OptunaJob.from_json(args.job.read_text())
        with quiet_optuna():
            study = open_study(job, worker=args.worker, workers=args.workers)
            with trial_function(job.trial_fn):
                work(job, study)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
