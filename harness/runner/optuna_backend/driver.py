"""Running a study: in this process, or as worker processes pinned to GPUs, with signals forwarded."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from harness.atomic import atomic_write_text
from harness.errors import ConfigError, EnvironmentFault, check_int
from harness.runner.common import (
    resolve_trial_function,
    trial_function_path,
    worker_env,
)
from harness.runner.devices import parse_gpus, visible_gpus, worker_devices
from harness.runner.optuna_backend.job import (
    HEARTBEAT_INTERVAL,
    JOB_FILE,
    STALE_AFTER,
    OptunaJob,
)
from harness.runner.optuna_backend.objective import display, progress_status, work
from harness.runner.optuna_backend.storage_url import check_storage
from harness.runner.optuna_backend.study import (
    finished_trials,
    open_study,
    prepare_study,
    quiet_optuna,
)
from harness.runner.optuna_backend.tables import write_study_tables
from harness.sweep import SweepSpec

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
STOP_WAIT_SECONDS = 30


def write_job(job: OptunaJob) -> Path:
    path = job.folder / JOB_FILE
    atomic_write_text(path, job.to_json())
    return path


def worker_command(job_path: Path, worker: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "harness.runner.optuna_backend", "--job", str(job_path), "--worker", str(worker),
            "--workers", str(workers)]


class ForwardSignals:
    """While active, SIGTERM / SIGHUP to this process are passed on to the workers (which record
    the interruption and exit); the parent then waits for them instead of leaving them orphaned."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self.procs = procs
        self.received: list[int] = []
        self._saved: dict[int, Any] = {}

    def _forward(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signum)

    def __enter__(self) -> ForwardSignals:  # noqa: PYI034
        for sig in FORWARDED_SIGNALS:
            self._saved[sig] = signal.signal(sig, self._forward)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _stop(procs: list[subprocess.Popen], timeout: float) -> None:
    """Wait for every worker (Ctrl-C and forwarded signals reach them too); kill one that hangs."""
    deadline = time.time() + timeout
    for p in procs:
        if p.poll() is None:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_worker_processes(job: OptunaJob, study: optuna.Study, devices: list[str], progress: Any) -> None:
    path = write_job(job)
    procs: list[subprocess.Popen] = []
    with ForwardSignals(procs) as forwarded:
        try:
            for i, device in enumerate(devices):
                procs.append(subprocess.Popen(worker_command(path, i, len(devices)), stdout=subprocess.DEVNULL,
                                              env=worker_env({"CUDA_VISIBLE_DEVICES": device})))
            seen = {t.number for t in finished_trials(study)}
            while True:
                running = any(p.poll() is None for p in procs)
                for t in finished_trials(study):
                    if t.number not in seen:
                        seen.add(t.number)
                        display(progress.trial_finished, progress_status(t))
                if not running:
                    break
                time.sleep(1.0)
        finally:
            _stop(procs, STOP_WAIT_SECONDS)
    if forwarded.received:
        raise KeyboardInterrupt(f"optuna sweep {job.spec.name!r} stopped by signal "
                                f"{signal.Signals(forwarded.received[0]).name}; its workers recorded the interruption")
    bad = [f"worker {i}: exit code {p.returncode}" for i, p in enumerate(procs) if p.returncode != 0]
    if bad:
        raise EnvironmentFault(f"optuna sweep {job.spec.name!r}: {'; '.join(bad)} (their messages are above); "
                               "rerun the same command to resume")


def worker_plan(spec: SweepSpec, *, workers: int | None, gpus: str | None, trials_per_gpu: int | None,
                trial_fn: Callable[..., Any] | str | None, grace_period: int) -> tuple[list[str], bool, str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES, whether the trials run in this process, and the trial
    function's import path for worker processes; ConfigError for a value that cannot run."""
    check_int(grace_period, "--stale-after", minimum=2)
    default = spec.search.workers if spec.search else 1
    explicit_gpus = parse_gpus(gpus)
    devices = worker_devices(explicit_gpus if explicit_gpus is not None else visible_gpus(), workers=workers,
                             trials_per_gpu=trials_per_gpu, default_workers=default)
    in_process = len(devices) == 1 and explicit_gpus is None and trials_per_gpu is None
    path = None if in_process else trial_function_path(trial_fn)
    resolve_trial_function(trial_fn)  # a bad path fails here, not in every worker
    return devices, in_process, path


def check_optuna(spec: SweepSpec, *, workers: int | None = None, gpus: str | None = None,
                 trials_per_gpu: int | None = None, trial_fn: Callable[..., Any] | str | None = None,
                 storage: str | None = None, grace_period: int = STALE_AFTER) -> None:
    """Everything `run_optuna` would refuse, checked before any file is written (the storage URL is
    connected to once)."""
    worker_plan(spec, workers=workers, gpus=gpus, trials_per_gpu=trials_per_gpu, trial_fn=trial_fn,
                grace_period=grace_period)
    if storage is not None:
        check_storage(storage)


def run_optuna(spec: SweepSpec, folder: Path, *, overrides: dict[str, Any] | None = None, workers: int | None = None,
               quiet: bool = False, trial_fn: Callable[..., Any] | str | None = None, storage: str | None = None,
               gpus: str | None = None, trials_per_gpu: int | None = None,
               heartbeat_interval: int = HEARTBEAT_INTERVAL, grace_period: int = STALE_AFTER) -> None:
    """Run (or resume) the sweep as an Optuna study.

    One worker and no `gpus` given: trials run in this process. Otherwise one worker process per
    entry of the device list (`--gpus`, default every visible GPU; K per GPU with
    `trials_per_gpu`; CPU workers where there is no GPU), each pinned by CUDA_VISIBLE_DEVICES.
    `trial_fn` replaces run_trial (worker processes need it as an importable function).
    """
    from harness.progress import SweepProgress

    devices, in_process, path = worker_plan(spec, workers=workers, gpus=gpus, trials_per_gpu=trials_per_gpu,
                                            trial_fn=trial_fn, grace_period=grace_period)
    heartbeat_interval = min(heartbeat_interval, max(1, grace_period // 3))
    job = OptunaJob(spec=spec, folder=Path(folder), overrides=dict(overrides or {}), trial_fn=path,
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period, storage=storage)
    run_trial_fn = resolve_trial_function(trial_fn)
    with quiet_optuna():
        study = prepare_study(job)
        with SweepProgress(total=len(job.plan), title=spec.name, quiet=quiet) as progress:
            for _ in finished_trials(study):
                progress.trial_skipped("resumed")
            try:
                if in_process:
                    work(job, open_study(job), progress=progress, quiet=quiet, trial_fn=run_trial_fn)
                else:
                    run_worker_processes(job, study, devices, progress)
            finally:
                write_study_tables(job, study)


def main(argv: list[str] | None = None) -> int:
    """A worker process: `python -m harness.runner.optuna_backend --job <folder>/optuna_job.json --worker N`."""
    import argparse

    from harness.errors import InputError

    parser = argparse.ArgumentParser(prog="python -m harness.runner.optuna_backend",
                                     description="one worker of an Optuna sweep (started by `vireid sweep`)")
    parser.add_argument("--job", required=True, type=Path, help="the sweep's optuna_job.json")
    parser.add_argument("--worker", type=int, default=0, help="worker index (seeds its sampler)")
    parser.add_argument("--workers", type=int, default=1, help="how many workers share the study")
    args = parser.parse_args(argv)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in FORWARDED_SIGNALS:  # the trial is recorded as interrupted and runs again on resume
        signal.signal(sig, interrupt)
    try:
        if not args.job.is_file():
            raise ConfigError(f"{args.job}: no such job file; start sweeps with `vireid sweep`")
        job = OptunaJob.from_json(args.job.read_text())
        with quiet_optuna():
            work(job, open_study(job, worker=args.worker, workers=args.workers), quiet=False)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
