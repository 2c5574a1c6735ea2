"""Local backend: the grid's trials on this machine, resumable from the store.

One worker (the default without GPUs): in sequence in this process. Several (`--workers`,
`--gpus`, `--trials-per-gpu`; by default one per visible GPU): a pool of spawned worker
processes, each pinned to its GPU by CUDA_VISIBLE_DEVICES before torch starts in it.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from harness.config import TrialConfig
from harness.progress import SweepProgress
from harness.provenance import config_key
from harness.results import ResultStore
from harness.runner.common import (
    FINISHED,
    execute_trial,
    resolve_trial_function,
    trial_function_path,
)
from harness.runner.devices import parse_gpus, visible_gpus, worker_devices
from harness.runner.registry import Backend, SweepRequest, register_backend
from harness.search import swept_keys, trial_hparams, trial_label


def _pin_worker(devices: Any) -> None:
    """Pool initializer: this worker's GPU, set before anything in it initialises CUDA."""
    os.environ["CUDA_VISIBLE_DEVICES"] = devices.get()


def _run_in_worker(cfg_tree: dict[str, Any], folder: str, sweep: str, trial_id: str, trial_fn: str | None,
                   keys: list[str], keep_model: bool) -> tuple[str, str | None, float | None]:
    """One trial in a pool worker; returns (status, failure, Rank-1) for the parent's progress display."""
    cfg = TrialConfig.from_dict(cfg_tree)
    result = execute_trial(cfg, ResultStore(folder), sweep=sweep, backend="local", trial_id=trial_id,
                           trial_fn=resolve_trial_function(trial_fn), extra={"label": trial_label(cfg, keys)},
                           keep_model=keep_model, hparams=trial_hparams(cfg, keys))
    ok = [r for r in result.records if r.get("status") == "ok"]
    return result.status, result.failure, ok[0].get("rank1") if ok else None


@register_backend
class LocalBackend(Backend):
    """Every grid point once on this machine: in this process, or in pinned worker processes."""

    name = "local"
    supports = frozenset({"retry_failed", "workers", "gpus", "trials_per_gpu"})
    description = "grid points on this machine, in sequence or one worker process per GPU"

    @staticmethod
    def _workers(request: SweepRequest) -> tuple[list[str], bool]:
        """Each worker's CUDA_VISIBLE_DEVICES, and whether they are a pool of processes (else: this one)."""
        explicit = parse_gpus(request.gpus)
        devices = worker_devices(explicit if explicit is not None else visible_gpus(), workers=request.workers,
                                 trials_per_gpu=request.trials_per_gpu)
        return devices, not (len(devices) == 1 and explicit is None and request.trials_per_gpu is None)

    def check(self, request: SweepRequest) -> None:
        _, pooled = self._workers(request)
        resolve_trial_function(request.trial_fn)
        if pooled:
            trial_function_path(request.trial_fn)  # the workers import it

    def run(self, request: SweepRequest) -> None:
        spec = request.spec
        # identical grid points (e.g. a --set that pins a grid key) run once; each key is computed
        # once here (it reads the pretrained weights file, if any)
        keyed = {config_key(c): c for c in spec.trials(request.overrides)}
        configs = list(keyed.values())
        devices, pooled = self._workers(request)
        trial_fn = resolve_trial_function(request.trial_fn)
        keys = swept_keys(spec)
        store = ResultStore(request.folder)
        done = store.statuses()
        skip = ("ok",) if request.retry_failed else FINISHED
        todo = [(i, cfg) for i, (key, cfg) in enumerate(keyed.items()) if done.get(key) not in skip]
        with SweepProgress(total=len(configs), title=spec.name, quiet=request.quiet) as progress:
            for key in keyed:
                if done.get(key) in skip:
                    progress.trial_skipped(done[key])
            if not pooled:
                for i, cfg in todo:
                    label = trial_label(cfg, keys)
                    progress.trial_started(label, epochs=cfg.train.epochs)
                    result = execute_trial(cfg, store, sweep=spec.name, backend=self.name, trial_id=str(i),
                                           trial_fn=trial_fn, on_iter=progress.iteration,
                                           keep_model=spec.keep_models, extra={"label": label},
                                           hparams=trial_hparams(cfg, keys),
                                           on_epoch=lambda e, losses, validate: progress.epoch(e, losses))
                    ok = [r for r in result.records if r.get("status") == "ok"]
                    progress.trial_finished(result.status, score=ok[0].get("rank1") if ok else None,
                                            failure=result.failure)
            elif todo:
                self._run_pool(request, todo, devices, keys, progress)

    def _run_pool(self, request: SweepRequest, todo: list[tuple[int, TrialConfig]], devices: list[str],
                  keys: list[str], progress: SweepProgress) -> None:
        spec, path = request.spec, trial_function_path(request.trial_fn)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: CUDA not yet initialised
        queue = context.Queue()
        for device in devices:
            queue.put(device)
        pool = ProcessPoolExecutor(max_workers=len(devices), mp_context=context, initializer=_pin_worker,
                                   initargs=(queue,))
        pending: set[Future] = set()
        try:
            for i, cfg in todo:
                pending.add(pool.submit(_run_in_worker, cfg.to_dict(), str(request.folder), spec.name, str(i), path,
                                        keys, spec.keep_models))
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    status, failure, score = future.result()  # bad input in a worker is raised here
                    progress.trial_finished(status, score=score, failure=failure)
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
