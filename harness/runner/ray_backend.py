"""Ray Tune backend: the sweep's trials as Tune trials, on a local Ray or an existing cluster.

Ray is imported only inside these functions, so the rest of the harness (and machines without
Ray) never needs it.

- No search: one Tune trial per grid point (`tune.grid_search` over the grid index).
- Search: the same trial slots as the Optuna backend (every grid point gets `n_trials` sampled
  trials; sampler `grid` enumerates the discretised space), drawn by Tune's OptunaSearch; with a
  pruner and a single validation objective, validation runs after every epoch and ASHA stops
  weak trials early (their records get status "pruned").

Each Tune trial runs `execute_trial` in its Ray worker, so its records land in the sweep's store
like every other backend's (the results folder must be on storage every node can reach).
Resources per trial come from the cluster: one GPU and its share of CPUs where there are GPUs,
else one node's CPUs; never a GPU on a cluster without one (such a trial would wait forever).

Resume: rerunning the command restores the Tune experiment in `<folder>/ray/<sweep>`; trials
that were running start again and `run_trial` continues them from their epoch checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from harness.config import TrialConfig
from harness.errors import HarnessError
from harness.runner.optuna_backend import (GRID_PARAM, PARETO_CSV, TrialFailed, check_search, import_trial_function,
                                           non_dominated, objective_directions, objective_names, objective_values,
                                           quiet_optuna, search_plan, store_pruned, stored_records, suggest_space,
                                           trial_function, validation_key)
from harness.sweep import SweepSpec

RAY_MISSING = "the ray backend needs ray[tune]: pip install 'vireid-harness[ray]'"
RAY_FOLDER = "ray"
TRIALS_CSV = "ray_trials.csv"


def trial_resources(cluster: dict[str, float], node_cpus: Sequence[float] = ()) -> dict[str, float]:
    """CPUs and GPUs of one trial, from `ray.cluster_resources()` and the CPUs of each node.

    With GPUs: one GPU and an equal share of the CPUs per GPU. Without: every CPU of the
    smallest node, one trial per node (CPU training already uses all the cores it gets).
    A trial never asks for more CPUs than the smallest node has, so every node can run one.
    """
    cpus = float(cluster.get("CPU", 0.0))
    gpus = float(cluster.get("GPU", 0.0))
    nodes = [float(c) for c in node_cpus if c and c > 0]
    smallest = min(nodes) if nodes else cpus
    if gpus >= 1:
        return {"cpu": max(1.0, min(math.floor(cpus / gpus), smallest)), "gpu": 1.0}
    return {"cpu": max(1.0, math.floor(smallest)), "gpu": 0.0}


class DefineByRun:
    """The search space as OptunaSearch's define-by-run function (a class, so Tune can pickle it)."""

    def __init__(self, space: dict[str, dict[str, Any]], n_grid: int) -> None:
        self.space, self.n_grid = space, n_grid

    def __call__(self, trial: Any) -> dict[str, Any]:
        trial.suggest_categorical(GRID_PARAM, list(range(self.n_grid)))
        return suggest_space(trial, self.space)  # decoded values replace Optuna's stored form


def _trial_config(payload: dict[str, Any], config: dict[str, Any]) -> tuple[TrialConfig, dict[str, Any]]:
    params = {k: v for k, v in config.items() if k != GRID_PARAM}
    base = TrialConfig.from_dict(payload["configs"][int(config.get(GRID_PARAM, 0))])
    return base.with_overrides(params, where=f"{payload['source']}: ray trial"), params


def tune_trial(config: dict[str, Any], payload: dict[str, Any]) -> None:
    """The Tune trainable: one harness trial, run inside a Ray worker."""
    from ray import tune

    from harness.results import ResultStore
    from harness.runner.common import FINISHED, execute_trial
    from harness.trial import config_key

    cfg, params = _trial_config(payload, config)
    key = config_key(cfg)
    store = ResultStore(payload["folder"])
    objectives = payload["objectives"]
    trial_id = tune.get_context().get_trial_id()
    info = {"ray_trial": trial_id, **{f"param_{k}": v for k, v in params.items()}}
    metric = payload["report_metric"]

    def on_epoch(epoch: int, losses: dict[str, float], validate: Any) -> None:
        if metric is None or epoch >= cfg.train.epochs - 1:  # the last epoch is reported with the records
            return
        value = validate()[metric]
        if not math.isfinite(value):
            raise ValueError(f"validation {metric} is not finite after epoch {epoch}: {value}")
        tune.report({objectives[0]: value, "epoch": epoch + 1})

    done = store.statuses().get(key)
    reused = done in FINISHED
    if reused:  # identical config already finished (resumed sweep, repeated sample)
        records = stored_records(store, key)
        if done != "ok":
            raise TrialFailed(f"trial {key} failed before: {records[0].get('failure') if records else ''}")
    else:
        with trial_function(payload["trial_fn"]):
            result = execute_trial(cfg, store, sweep=payload["sweep"], backend="ray", trial_id=trial_id,
                                   on_epoch=on_epoch, extra=info)
        if result.status != "ok":
            raise TrialFailed(result.failure or "trial failed")
        records = result.records
    metrics: dict[str, Any] = {"trial_status": "ok", "trial_key": key, "reused": reused}
    if payload["search"]:
        metrics.update(zip(objectives, objective_values(store, key, records, objectives)))
    else:
        value = records[0].get(objectives[0]) if records else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics[objectives[0]] = float(value)
    tune.report(metrics)


def _cause(error: BaseException | None) -> BaseException | None:
    """The exception a trainable raised, unwrapped from Tune's and Ray's wrappers."""
    for _ in range(10):
        inner = getattr(error, "cause", None) or getattr(error, "__cause__", None)
        if inner is None or inner is error:
            break
        error = inner
    return error


def _store_pruned_trials(results: Any, payload: dict[str, Any]) -> dict[str, int]:
    """Trials that Tune stopped early get a "pruned" record; counts of trial outcomes."""
    from harness.results import ResultStore
    from harness.trial import config_key

    store = ResultStore(payload["folder"])
    statuses = store.statuses()
    counts = {"ok": 0, "failed": 0, "pruned": 0, "unfinished": 0}
    for result in results:
        last = result.metrics or {}
        if result.error is not None:
            counts["failed"] += 1
            continue
        if last.get("trial_status"):
            counts["ok"] += 1
            continue
        if not last.get("done"):  # interrupted (Ctrl-C) before it finished: the restored run continues it
            counts["unfinished"] += 1
            continue
        counts["pruned"] += 1  # done without its final report: the scheduler stopped it
        cfg, params = _trial_config(payload, result.config or {})
        if statuses.get(config_key(cfg)) in ("ok", "failed", "pruned"):
            continue
        objective = payload["objectives"][0]
        history = {int(last["epoch"]) - 1: float(last[objective])} if objective in last and "epoch" in last else {}
        trial_id = last.get("trial_id", "")
        info = {"sweep": payload["sweep"], "backend": "ray", "trial_id": trial_id, "ray_trial": trial_id,
                **{f"param_{k}": v for k, v in params.items()}}
        store_pruned(store, cfg, history=history, info=info, started=time.time() - float(last.get("time_total_s", 0)))
    return counts


def _write_tables(results: Any, folder: Path, objectives: list[str], directions: list[str]) -> None:
    """`ray_trials.csv` (Tune's view of every trial; `is_pareto` for several objectives) and `pareto.csv`."""
    import numpy as np

    from harness.results import atomic_write_text

    df = results.get_dataframe()
    if len(objectives) > 1 and not df.empty:
        df["is_pareto"] = False
        if "trial_status" in df and all(c in df for c in objectives):
            ok = df[df["trial_status"] == "ok"]
            values = ok[objectives].to_numpy(dtype=float)
            finite = np.isfinite(values).all(1)
            df.loc[ok.index[finite], "is_pareto"] = non_dominated(values[finite], directions)
        atomic_write_text(folder / PARETO_CSV, df[df["is_pareto"]].to_csv(index=False))
    atomic_write_text(folder / TRIALS_CSV, df.to_csv(index=False))


def _tuner(tune: Any, spec: SweepSpec, payload: dict[str, Any], plan: list[dict[str, Any]], storage: Path,
           resources: dict[str, float], quiet: bool) -> Any:
    trainable = tune.with_resources(tune.with_parameters(tune_trial, payload=payload), resources)
    experiment = storage / spec.name
    search = spec.search
    param_space = {GRID_PARAM: tune.grid_search(list(range(len(payload["configs"]))))} if search is None else {}
    if tune.Tuner.can_restore(str(experiment)):
        return tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True,
                                  param_space=param_space or None)
    # Reusing trial actors spares each trial a new process (and its torch import).
    tune_config = tune.TuneConfig(num_samples=1, reuse_actors=True)
    if search is not None:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        objectives = payload["objectives"]
        modes = ["max" if d == "maximize" else "min" for d in payload["directions"]]
        seed = TrialConfig.from_dict(payload["configs"][0]).seed
        sampler = (optuna.samplers.TPESampler(seed=seed) if search.sampler == "tpe"
                   else optuna.samplers.RandomSampler(seed=seed))
        searcher = OptunaSearch(space=DefineByRun(search.space, len(payload["configs"])),
                                metric=objectives if len(objectives) > 1 else objectives[0],
                                mode=modes if len(modes) > 1 else modes[0], points_to_evaluate=plan, sampler=sampler)
        scheduler = None
        if payload["report_metric"] is not None:
            from ray.tune.schedulers import ASHAScheduler

            max_epochs = max(c["train"]["epochs"] for c in payload["configs"])
            scheduler = ASHAScheduler(time_attr="training_iteration", metric=objectives[0], mode=modes[0],
                                      max_t=max(max_epochs, 1), grace_period=1, reduction_factor=3)
        tune_config = tune.TuneConfig(num_samples=len(plan), search_alg=searcher, scheduler=scheduler,
                                      reuse_actors=True)
    run_config = tune.RunConfig(name=spec.name, storage_path=str(storage), verbose=0 if quiet else 1,
                                failure_config=tune.FailureConfig(max_failures=0))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def run_ray(spec: SweepSpec, folder: Path, *, overrides: dict[str, Any] | None = None, quiet: bool = False,
            address: str | None = None, trial_fn: str | None = None, num_cpus: int | None = None) -> None:
    """Run (or resume) the sweep on Ray Tune; `address` joins an existing cluster, else a local Ray starts.

    `trial_fn` ("package.module:function") replaces run_trial in the Ray workers; `num_cpus`
    sizes a local Ray (default: every core).
    """
    try:
        import ray
        from ray import tune
    except ImportError:
        raise HarnessError(RAY_MISSING) from None
    folder = Path(folder).resolve()
    configs = spec.trials(overrides)
    check_search(spec, configs)
    objectives, directions = objective_names(spec), objective_directions(spec)
    report_metric = None
    if spec.search is not None and len(objectives) == 1 and spec.search.pruner != "none":
        report_metric = validation_key(objectives[0])
    plan = search_plan(spec, len(configs), seed=configs[0].seed)
    payload = {"configs": [c.to_dict() for c in configs], "folder": str(folder), "sweep": spec.name,
               "source": spec.source, "objectives": objectives, "directions": directions,
               "report_metric": report_metric, "search": spec.search is not None, "trial_fn": trial_fn}
    if trial_fn:
        import_trial_function(trial_fn)  # a bad path fails here, not in every trial
    folder.mkdir(parents=True, exist_ok=True)
    started_here = not ray.is_initialized()
    try:
        if started_here:
            root = str(Path(__file__).resolve().parents[2])
            env = {"RAY_CHDIR_TO_TRIAL_DIR": "0",
                   "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
            kwargs: dict[str, Any] = {"address": address or None, "include_dashboard": False, "log_to_driver": False,
                                      "logging_level": "warning", "runtime_env": {"env_vars": env}}
            if address is None:
                kwargs["num_cpus"] = num_cpus or os.cpu_count()
            ray.init(**kwargs)
        nodes = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
        resources = trial_resources(ray.cluster_resources(), nodes)
        with quiet_optuna():  # OptunaSearch's in-memory study logs every trial otherwise
            tuner = _tuner(tune, spec, payload, plan, folder / RAY_FOLDER, resources, quiet)
            results = tuner.fit()
        counts = _store_pruned_trials(results, payload)
        _write_tables(results, folder, objectives, directions)
        for result in results:
            cause = _cause(result.error)
            if isinstance(cause, HarnessError):
                raise HarnessError(str(cause)) from None
            if result.error is not None and not isinstance(cause, TrialFailed):
                raise HarnessError(f"ray sweep {spec.name!r}: a trial crashed outside the harness: "
                                   f"{type(cause).__name__}: {cause}; rerun the same command to resume it")
        if counts["unfinished"]:
            raise KeyboardInterrupt(f"ray sweep {spec.name!r} interrupted with {counts['unfinished']} trial(s) "
                                    "unfinished; rerun the same command to resume")
        if not quiet:
            print(f"ray sweep {spec.name}: {counts['ok']} ok, {counts['failed']} failed, {counts['pruned']} pruned")
    finally:
        if started_here:
            ray.shutdown()
