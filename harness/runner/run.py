"""The public entry point of every sweep: `run_sweep(spec, backend=...)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.atomic import prepare_output_folder
from harness.results.store import ResultStore
from harness.runner.registry import SweepRequest, check_request, get_backend
from harness.search import check_search
from harness.sweep import SweepSpec


def sweep_folder(spec: SweepSpec, results_dir: str | Path = "results") -> Path:
    return Path(results_dir) / spec.name


def run_sweep(spec: SweepSpec, *, backend: str | None = None, overrides: dict[str, Any] | None = None,
              results_dir: str | Path = "results", quiet: bool = False, trial_fn: Any = None,
              workers: int | None = None, address: str | None = None, storage: str | None = None,
              gpus: str | None = None, trials_per_gpu: int | None = None, gpus_per_trial: float | None = None,
              retry_failed: bool = False, stale_after: int | None = None) -> Path:
    """Run (or resume) every trial of `spec` on a registered backend; returns the sweep's results folder.

    Options a backend does not take, and values it cannot run with, are refused (ConfigError, exit 2)
    before the results folder is created;
    `trial_fn` replaces harness.trial.run_trial (a callable, or 'package.module:function' where
    trials run in other processes).
    """
    chosen = get_backend(backend or spec.backend)
    request = SweepRequest(spec=spec, folder=sweep_folder(spec, results_dir), overrides=dict(overrides or {}),
                           trial_fn=trial_fn, quiet=quiet, workers=workers, address=address, storage=storage,
                           gpus=gpus, trials_per_gpu=trials_per_gpu, gpus_per_trial=gpus_per_trial,
                           retry_failed=retry_failed, stale_after=stale_after)
    check_request(chosen, request)
    check_search(spec, spec.trials(request.overrides))  # every grid point and the search block, before any file
    chosen.check(request)  # the backend's option values (workers, GPUs, storage URL), before any file
    prepare_output_folder(request.folder)
    ResultStore(request.folder).check_writable()
    chosen.run(request)
    return request.folder
