"""Local backend: the grid's trials in sequence in this process, resumable from the store."""

from __future__ import annotations

from harness.progress import SweepProgress
from harness.results import ResultStore
from harness.runner.common import FINISHED, execute_trial, resolve_trial_function
from harness.runner.registry import Backend, SweepRequest, register_backend
from harness.search import swept_keys, trial_label
from harness.trial import config_key


@register_backend
class LocalBackend(Backend):
    """Every grid point once, in order, in this process (a search needs optuna or ray)."""

    name = "local"
    supports = frozenset({"retry_failed"})
    description = "grid points in sequence in this process"

    def run(self, request: SweepRequest) -> None:
        spec = request.spec
        # identical grid points (e.g. a --set that pins a grid key) run once
        configs = list({config_key(c): c for c in spec.trials(request.overrides)}.values())
        trial_fn = resolve_trial_function(request.trial_fn)
        keys = swept_keys(spec)
        store = ResultStore(request.folder)
        done = store.statuses()
        skip = ("ok",) if request.retry_failed else FINISHED
        with SweepProgress(total=len(configs), title=spec.name, quiet=request.quiet) as progress:
            for i, cfg in enumerate(configs):
                key = config_key(cfg)
                if done.get(key) in skip:
                    progress.trial_skipped(done[key])
                    continue
                label = trial_label(cfg, keys)
                progress.trial_started(label, epochs=cfg.train.epochs)
                result = execute_trial(cfg, store, sweep=spec.name, backend=self.name, trial_id=str(i),
                                       trial_fn=trial_fn, on_iter=progress.iteration, keep_model=spec.keep_models,
                                       extra={"label": label},
                                       on_epoch=lambda e, losses, validate: progress.epoch(e, losses))
                ok = [r for r in result.records if r.get("status") == "ok"]
                progress.trial_finished(result.status, score=ok[0].get("rank1") if ok else None,
                                        failure=result.failure)
