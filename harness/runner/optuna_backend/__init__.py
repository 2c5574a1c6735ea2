"""Optuna backend: a sweep as one Optuna study, run by one or more workers.

Every planned trial is enqueued up front (a "slot", see `harness.search.search_plan`), so the
budget is exact however many worker processes share the study: a worker only asks for a trial
while queued slots remain, under a lock (the sweep folder's, or the database server's for a
shared `--storage` URL). Each slot carries its grid point as the user attribute `grid_index`;
the sampler fills the search space.

Modules: `job` (the sweep as plain data), `storage_url` (a `--storage` URL's driver and reachability),
`study` (storage, samplers, pruners, locks, stale trials), `objective` (one trial, the worker loop),
`tables` (CSV), `driver` (processes, GPUs, signals; the worker CLI).

Resume: rerunning the same command continues the study. A worker killed mid-trial leaves its
trial RUNNING; without a heartbeat for `--stale-after` seconds it is queued again (and resumes
from its checkpoint). A trial interrupted by Ctrl-C, SIGTERM or an input error is queued again
by the next run.
"""

from __future__ import annotations

from harness.runner.registry import Backend, SweepRequest, register_backend


@register_backend
class OptunaBackend(Backend):
    """Grids and searches as one Optuna study; parallel workers pinned to GPUs; shared RDB storage."""

    name = "optuna"
    supports = frozenset({"search", "workers", "storage", "gpus", "trials_per_gpu", "stale_after"})
    description = "an Optuna study (SQLite or a shared database), one or more pinned worker processes"

    def check(self, request: SweepRequest) -> None:
        from harness.runner.optuna_backend.driver import check_optuna
        from harness.runner.optuna_backend.job import STALE_AFTER

        check_optuna(request.spec, workers=request.workers, gpus=request.gpus, trials_per_gpu=request.trials_per_gpu,
                     trial_fn=request.trial_fn, storage=request.storage,
                     grace_period=request.stale_after if request.stale_after is not None else STALE_AFTER)

    def run(self, request: SweepRequest) -> None:
        from harness.runner.optuna_backend.driver import run_optuna
        from harness.runner.optuna_backend.job import STALE_AFTER

        run_optuna(request.spec, request.folder, overrides=request.overrides, workers=request.workers,
                   quiet=request.quiet, trial_fn=request.trial_fn, storage=request.storage, gpus=request.gpus,
                   trials_per_gpu=request.trials_per_gpu,
                   grace_period=request.stale_after if request.stale_after is not None else STALE_AFTER)
