"""What every backend shares: running one trial into the store, and the sweep entry point."""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from harness.config import TrialConfig
from harness.errors import HarnessError
from harness.results import ResultStore
from harness.saved_models import MODELS_FOLDER, save_model
from harness.curves import TENSORBOARD_FOLDER, curves_resume_file, write_tensorboard
from harness.sweep import SweepSpec
from harness.trial import TrialResult, config_key, run_trial

FINISHED = ("ok", "failed")


def sweep_folder(spec: SweepSpec, results_dir: str | Path = "results") -> Path:
    return Path(results_dir) / spec.name


def execute_trial(cfg: TrialConfig, store: ResultStore, *, sweep: str, backend: str, trial_id: str,
                  on_epoch: Callable | None = None, on_iter: Callable[[int, int], None] | None = None,
                  extra: dict[str, Any] | None = None,
                  passthrough: tuple[type[BaseException], ...] = (), keep_model: bool = True) -> TrialResult:
    """Run one trial and store its records atomically; any exception becomes a failed record.

    A HarnessError (bad input: missing dataset, unknown backbone) is not a trial failure: it
    propagates so the user sees it. KeyboardInterrupt propagates too, leaving the checkpoint
    for the resumed run, and so do the backend's own control-flow exceptions in `passthrough`
    (e.g. Optuna's TrialPruned). The final network of an ok trial is kept under
    `<store>/models/` (harness.saved_models) unless `keep_model` is False; the training curves
    go into the store with the records and into `<store>/tensorboard/<label> [<key>]/`.
    """
    info = {"sweep": sweep, "backend": backend, "trial_id": trial_id, **(extra or {})}
    started = time.time()
    try:
        result = run_trial(cfg, workdir=store.folder / "checkpoints", on_epoch=on_epoch, on_iter=on_iter,
                           extra=info)
    except (HarnessError, KeyboardInterrupt, *passthrough):
        raise
    except Exception as exc:  # a crashing trial must not end the sweep
        reason = f"{type(exc).__name__}: {exc}"
        record = {"trial_key": config_key(cfg), "method": cfg.method, "backbone": cfg.model.backbone,
                  "dataset": cfg.data.dataset, "seed": cfg.seed, "config": json.dumps(cfg.to_dict(), sort_keys=True),
                  "status": "failed", "failure": reason, "traceback": traceback.format_exc(limit=8),
                  "wall_seconds": time.time() - started, **info}
        result = TrialResult(key=record["trial_key"], status="failed", failure=reason, records=[record],
                             checkpoint=store.folder / "checkpoints" / f"{record['trial_key']}.ckpt")
    if keep_model and result.trained is not None:
        save_model(store.folder / MODELS_FOLDER, result.key, result.trained, info={"sweep": sweep})
    result.trained = None  # the network is not needed past this point
    store.put_trial(result.key, result.records, curves=result.curves)
    if result.curves:
        label = str(info.get("label") or f"{cfg.method} seed={cfg.seed}").replace(os.sep, "_")
        write_tensorboard(store.folder / TENSORBOARD_FOLDER / f"{label} [{result.key}]", result.curves)
    if result.checkpoint is not None:
        for leftover in (result.checkpoint, curves_resume_file(result.checkpoint)):
            leftover.unlink(missing_ok=True)
    return result


def run_sweep(spec: SweepSpec, *, backend: str | None = None, overrides: dict[str, Any] | None = None,
              results_dir: str | Path = "results", workers: int | None = None, retry_failed: bool = False,
              quiet: bool = False, address: str | None = None) -> Path:
    backend = backend or spec.backend
    folder = sweep_folder(spec, results_dir)
    if backend == "local":
        from harness.runner.local import run_local

        run_local(spec, folder, overrides=overrides, retry_failed=retry_failed, quiet=quiet)
    elif backend == "optuna":
        from harness.runner.optuna_backend import run_optuna

        run_optuna(spec, folder, overrides=overrides, workers=workers, quiet=quiet)
    elif backend == "ray":
        from harness.runner.ray_backend import run_ray

        run_ray(spec, folder, overrides=overrides, quiet=quiet, address=address)
    else:
        raise HarnessError(f"--backend: {backend!r} is not one of local, optuna, ray")
    return folder
