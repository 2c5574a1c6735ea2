"""Local backend: the grid's trials in sequence in this process, resumable from the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.progress import SweepProgress
from harness.results import ResultStore
from harness.runner.common import FINISHED, execute_trial
from harness.sweep import SweepSpec
from harness.trial import config_key


def run_local(spec: SweepSpec, folder: Path, *, overrides: dict[str, Any] | None = None,
              retry_failed: bool = False, quiet: bool = False) -> None:
    # identical grid points (e.g. a --set that pins a grid key) run once
    configs = list({config_key(c): c for c in spec.trials(overrides)}.values())
    store = ResultStore(folder)
    done = store.statuses()
    skip = ("ok",) if retry_failed else FINISHED
    with SweepProgress(total=len(configs), title=spec.name, quiet=quiet) as progress:
        for i, cfg in enumerate(configs):
            key = config_key(cfg)
            if done.get(key) in skip:
                progress.trial_skipped(done[key])
                continue
            label = f"{cfg.method} seed={cfg.seed}"
            progress.trial_started(label, epochs=cfg.train.epochs)
            result = execute_trial(cfg, store, sweep=spec.name, backend="local", trial_id=str(i),
                                   on_iter=progress.iteration, keep_model=spec.keep_models,
                                   on_epoch=lambda e, losses, validate: progress.epoch(e, losses))
            ok = [r for r in result.records if r.get("status") == "ok"]
            progress.trial_finished(result.status, score=ok[0].get("rank1") if ok else None,
                                    failure=result.failure)
