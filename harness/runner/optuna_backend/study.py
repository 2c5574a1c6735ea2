"""The study in its storage: creation and resume, samplers, pruners, locks, stale trials."""

from __future__ import annotations

import os
import sqlite3
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from harness.errors import ConfigError, EnvironmentFault
from harness.runner.optuna_backend.job import LOCK_FILE, OptunaJob
from harness.runner.optuna_backend.storage_url import database_url, shown, storage_engine
from harness.search import GRID_INDEX

try:  # POSIX; elsewhere concurrent workers on one node run without the folder lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


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


def storage(job: OptunaJob) -> optuna.storages.RDBStorage:
    """The study's RDB storage (SQLite in the sweep folder, or the shared URL) with heartbeats on."""
    common = {"heartbeat_interval": job.heartbeat_interval, "grace_period": job.grace_period,
              "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback()}
    if job.storage is None:
        path = job.folder / "optuna.sqlite"
        try:
            return optuna.storages.RDBStorage(url=job.storage_url,
                                              engine_kwargs={"creator": lambda: _connect_sqlite(path)}, **common)
        except (sqlalchemy.exc.DatabaseError, sqlite3.DatabaseError) as exc:
            raise EnvironmentFault(f"{path}: not a readable Optuna study ({str(exc).splitlines()[0]}); move it away "
                                   "and rerun to start the study afresh") from None
    try:
        return optuna.storages.RDBStorage(url=job.storage, **common)
    except Exception as exc:  # noqa: BLE001  (driver missing, server down, bad credentials)
        raise EnvironmentFault(f"--storage {shown(job.storage)!r}: cannot open the study storage "
                               f"({type(exc).__name__}: {exc})") from None


def sampler(job: OptunaJob, worker: int, workers: int, known_trials: int = 0) -> optuna.samplers.BaseSampler:
    """A seeded sampler that differs per worker and per resume.

    Two workers with one seed would propose the same points at once, and a resumed run with the
    first run's seed would repeat its first random draws.
    """
    search = job.spec.search
    seed = job.seed + 7919 * worker + known_trials
    if search is not None and search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=workers > 1)
    return optuna.samplers.RandomSampler(seed=seed)  # grid slots are fully fixed: it never draws


def pruner(job: OptunaJob) -> optuna.pruners.BasePruner:
    search = job.spec.search
    if search is None or job.multi_objective or search.pruner == "none":
        return optuna.pruners.NopPruner()
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner()


def open_study(job: OptunaJob, *, worker: int = 0, workers: int = 1) -> optuna.Study:
    """The study as a worker sees it: its own seeded sampler, the spec's pruner."""
    with quiet_optuna():
        study = optuna.load_study(study_name=job.spec.name, storage=storage(job), pruner=pruner(job))
    drawn = study.get_trials(deepcopy=False, states=tuple(s for s in TrialState if s != TrialState.WAITING))
    study.sampler = sampler(job, worker, workers, known_trials=len(drawn))
    return study


def superseded_numbers(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """Trials that were queued again (stale or interrupted): their copy stands for them."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    gone = superseded_numbers(trials)
    return [t for t in trials if t.state.is_finished() and t.number not in gone]


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

    def __enter__(self) -> FolderLock:  # noqa: PYI034
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class DatabaseLock:
    """The same exclusive lock for workers on several nodes: the database server's own advisory lock
    (PostgreSQL `pg_advisory_lock`, MySQL `GET_LOCK`), dropped by the server if the holder's connection dies."""

    def __init__(self, url: str, name: str) -> None:
        import sqlalchemy

        self.engine = storage_engine(database_url(url), poolclass=sqlalchemy.pool.NullPool)
        self.dialect = self.engine.dialect.name
        self.key = zlib.crc32(f"vireid:{name}".encode())
        self.name = f"vireid:{name}"
        self._conn: Any = None

    def acquire(self) -> None:
        import sqlalchemy

        if self._conn is not None:
            return
        try:
            self._conn = self.engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as exc:  # server down, bad credentials, driver missing
            raise EnvironmentFault(f"--storage {self.engine.url!r}: cannot connect ({exc.orig or exc})") from None
        if self.dialect == "postgresql":
            self._conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        else:
            self._conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": self.name})

    def release(self) -> None:
        import sqlalchemy

        if self._conn is None:
            return
        try:
            if self.dialect == "postgresql":
                self._conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            else:
                self._conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": self.name})
        finally:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> DatabaseLock:  # noqa: PYI034
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def study_lock(job: OptunaJob) -> FolderLock | DatabaseLock:
    """Held while a worker asks for a trial, so the queue is never overdrawn (the exact budget)."""
    if job.storage is None:
        return FolderLock(job.folder / LOCK_FILE)
    return DatabaseLock(job.storage, job.spec.name)


def watch_running_trials(study: optuna.Study) -> list[int]:
    """Fail stale trials (queued again by the retry callback) and start the clock on the others.

    A trial whose worker died before its first heartbeat has none, and Optuna never counts
    such a trial stale. Recording a heartbeat for every RUNNING trial makes a dead one stale
    after the grace period, while a live worker simply keeps beating. Returns the numbers of
    the trials still RUNNING.
    """
    optuna.storages.fail_stale_trials(study)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        record_heartbeat(study, t.number)
    return [t.number for t in running]


def record_heartbeat(study: optuna.Study, number: int) -> None:
    """Record trial `number`'s heartbeat now (the storage's own heartbeat thread does it every interval)."""
    store = study._storage  # the RDBStorage, possibly behind Optuna's cache: both keep heartbeats
    if getattr(store, "get_heartbeat_interval", lambda: None)():
        study_id = store.get_study_id_from_name(study.study_name)
        store.record_heartbeat(store.get_trial_id_from_study_id_trial_number(study_id, number))


def prepare_study(job: OptunaJob) -> optuna.Study:
    """Create or continue the study (once, before any worker starts) and queue every missing slot."""
    job.folder.mkdir(parents=True, exist_ok=True)
    with study_lock(job), quiet_optuna():
        where = shown(job.storage) if job.storage else str(job.folder / "optuna.sqlite")
        try:
            study = optuna.create_study(storage=storage(job), study_name=job.spec.name, directions=job.directions,
                                        sampler=sampler(job, 0, 1), pruner=pruner(job), load_if_exists=True)
        except sqlalchemy.exc.DatabaseError as exc:
            raise EnvironmentFault(f"{where}: not a readable Optuna study ({type(exc.orig).__name__}: {exc.orig}); "
                                   "move it away or rename the sweep to start over") from None
        recorded = study.user_attrs.get("spec_fingerprint")
        if recorded is None and study.get_trials(deepcopy=False):
            raise ConfigError(f"{where}: study {job.spec.name!r} was not created by this harness; "
                              "delete it or rename the sweep")
        if recorded is not None and recorded != job.fingerprint():
            raise ConfigError(
                f"{where}: study {job.spec.name!r} was created from a different sweep (base, grid, search space, "
                "objectives or --set overrides changed); rename the sweep or delete the study to start over")
        if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in job.directions]:
            raise ConfigError(f"{where}: study {job.spec.name!r} optimises {len(study.directions)} objective(s) "
                              f"with other directions than {job.directions}; rename the sweep or delete the study")
        study.set_user_attr("spec_fingerprint", job.fingerprint())
        study.set_metric_names(list(job.objectives))
        watch_running_trials(study)
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
            raise ConfigError(f"{where}: study {job.spec.name!r} already plans {max(slots - {None}) + 1} trials, "
                              f"more than the spec's {len(job.plan)}; search.n_trials can grow on resume, not shrink")
        for slot, params in enumerate(job.plan):
            if slot not in slots:
                fixed = {k: v for k, v in params.items() if k != GRID_INDEX}
                study.enqueue_trial(fixed, user_attrs={"slot": slot, GRID_INDEX: params[GRID_INDEX]},
                                    skip_if_exists=False)
    return study
