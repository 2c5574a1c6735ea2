"""Ray Tune backend: the sweep's trials as Tune trials, on a local Ray or an existing cluster.

Ray is imported only inside these functions, so the rest of the harness (and machines without
Ray) never needs it.

- No search: one Tune trial per grid point (`tune.grid_search` over the grid points' labels).
- Search: the same trial slots as every backend (`harness.search.search_plan`), drawn by Tune's
  OptunaSearch; with pruner `median` and a single validation objective, validation runs after
  every epoch and Tune's MedianStoppingRule stops weak trials early (their records get status
  "pruned"). Pruner `hyperband` is refused here (Ray's HyperBandScheduler pauses trials, which
  function trainables do not survive); the optuna backend runs it.

Trials are named by their label (method and swept keys), in Tune's tables and trial folders.
Each Tune trial runs `execute_trial` in its Ray worker, so its records land in the sweep's store
like every other backend's (the results folder must be on storage every node can reach).
Resources per trial come from the cluster: one GPU (or `--gpus-per-trial`, e.g. 0.5 so two
small trials share one) and its share of CPUs where there are GPUs, else one node's CPUs; never
a GPU on a cluster without one (such a trial would wait forever).

Resume: rerunning the command restores the Tune experiment in `<folder>/ray/<sweep>`; trials
that were running start again and `run_trial` continues them from their epoch checkpoint.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.config import TrialConfig
from harness.curves import TENSORBOARD_FOLDER, test_scalars
from harness.errors import ConfigError, EnvironmentFault, InputError, TrialFailure
from harness.runner.common import (
    PROJECT_ROOT,
    execute_trial,
    finished_records,
    informative_value,
    objective_values,
    resolve_trial_function,
    store_pruned,
    validation_reporter,
)
from harness.runner.registry import Backend, SweepRequest, register_backend
from harness.search import (
    GRID_INDEX,
    check_search,
    objective_directions,
    objective_names,
    reports_every_epoch,
    search_fields,
    search_plan,
    suggest_space,
    swept_keys,
    trial_hparams,
    trial_label,
)
from harness.sweep import SweepSpec

RAY_MISSING = "the ray backend needs ray[tune]: pip install 'vireid-harness[ray]'"
RAY_FOLDER = "ray"
TRIALS_CSV = "ray_trials.csv"
PARETO_CSV = "pareto.csv"
NO_AUTO_LOGGERS = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
GRID_POINT = "grid_point"
"""Tune's config key for the grid point: its label (method and swept keys), so Tune's tables say what it is."""


@contextmanager
def quiet_search() -> Iterator[None]:
    """OptunaSearch's in-memory study logs every trial; our summary line reports them."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


@contextmanager
def without_ray_tensorboard() -> Iterator[None]:
    """Tune keeps its CSV and JSON logs (restoring an experiment reads them) but writes no TensorBoard
    files of its own and so points to none: the harness writes each trial's run under
    `<sweep>/tensorboard/` (curves, test metrics, HParams)."""
    saved = os.environ.get(NO_AUTO_LOGGERS)
    os.environ[NO_AUTO_LOGGERS] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(NO_AUTO_LOGGERS, None)
        else:
            os.environ[NO_AUTO_LOGGERS] = saved


def check_gpus_per_trial(value: float) -> None:
    """`--gpus-per-trial`: a fraction in (0, 1] (trials sharing a GPU) or a whole number of GPUs."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 < value and (value <= 1 or float(value).is_integer())):
        raise ConfigError(f"--gpus-per-trial: expected a fraction in (0, 1] or a whole number, got {value!r}")


def check_ray(spec: SweepSpec, *, trial_fn: Any = None, gpus_per_trial: float | None = None) -> None:
    """What `run_ray` would refuse before starting Ray, checked before any file is written."""
    if importlib.util.find_spec("ray") is None:
        raise EnvironmentFault(RAY_MISSING)
    if spec.search is not None and spec.search.pruner == "hyperband":
        raise ConfigError(f"{spec.source}: search.pruner hyperband: Ray's HyperBandScheduler pauses and resumes "
                          "trials, which this backend's function trials do not support; use pruner median or none "
                          "on ray, or --backend optuna")
    if gpus_per_trial is not None:
        check_gpus_per_trial(gpus_per_trial)
    resolve_trial_function(trial_fn)  # a bad path fails here, not in every trial


def trial_resources(cluster: dict[str, float], node_cpus: Sequence[float] = (),
                    gpus_per_trial: float | None = None, threads: int | None = None) -> dict[str, float]:
    """CPUs and GPUs of one trial, from `ray.cluster_resources()` and the CPUs of each node.

    With GPUs: `gpus_per_trial` GPU (default one; 0.5 packs two trials per GPU) and an equal
    share of the CPUs per trial slot. Without: `threads` CPUs (the trials' `train.threads`: two
    one-thread trials share two cores), or, where the threads are left to torch (which takes
    every core), every CPU of the smallest node, one trial per node. A trial never asks for more
    CPUs than `threads` or than the smallest node has, so every node can run one.
    """
    cpus = float(cluster.get("CPU", 0.0))
    gpus = float(cluster.get("GPU", 0.0))
    nodes = [float(c) for c in node_cpus if c and c > 0]
    smallest = min(nodes) if nodes else cpus
    if gpus_per_trial is not None:
        check_gpus_per_trial(gpus_per_trial)
        if gpus < gpus_per_trial:
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial}: the Ray cluster has {gpus:g} GPU(s); a trial "
                              "asking for more would wait forever")
        slots = max(1, math.floor(gpus / gpus_per_trial))
        return {"cpu": max(1.0, min(math.floor(cpus / slots), smallest, threads or math.inf)),
                "gpu": float(gpus_per_trial)}
    if gpus >= 1:
        return {"cpu": max(1.0, min(math.floor(cpus / gpus), smallest, threads or math.inf)), "gpu": 1.0}
    return {"cpu": max(1.0, math.floor(min(smallest, threads or math.inf))), "gpu": 0.0}


def trial_threads(configs: Sequence[TrialConfig]) -> int | None:
    """The CPU threads one trial of the sweep uses: the largest `train.threads`, or None where a
    trial leaves them to torch (every core)."""
    threads = [c.train.threads for c in configs]
    return None if not threads or None in threads else max(threads)


class DefineByRun:
    """The search space as OptunaSearch's define-by-run function (a class, so Tune can pickle it)."""

    def __init__(self, space: dict[str, dict[str, Any]], labels: list[str]) -> None:
        self.space, self.labels = space, labels

    def __call__(self, trial: Any) -> dict[str, Any]:
        trial.suggest_categorical(GRID_POINT, self.labels)
        return suggest_space(trial, self.space)  # decoded values replace Optuna's stored form


def _trial_config(payload: dict[str, Any], config: dict[str, Any]) -> tuple[TrialConfig, dict[str, Any]]:
    params = {k: v for k, v in config.items() if k != GRID_POINT}
    labels = payload["labels"]
    index = labels.index(config[GRID_POINT]) if config.get(GRID_POINT) in labels else 0
    base = TrialConfig.from_dict(payload["configs"][index])
    return base.with_overrides(params, where=f"{payload['source']}: ray trial"), params


def epoch_reporter(metric: str | None, objective: str, report: Callable[[dict[str, Any]], None], *,
                   epochs: int, search: bool) -> Callable[[int, dict[str, float], Callable], None]:
    """The `on_epoch` of a Tune trial: after each epoch but the last (reported with the records) it
    reports the epoch (1..n) and the training loss, and the validation objective `metric` where the
    scheduler reads it (validated only then: a validation pass per epoch costs). In a search whose
    objective is not read per epoch nothing is reported before the end: Tune's searcher expects its
    objective in every report."""
    validated: dict[str, float] = {}
    validate_epoch = validation_reporter(metric, lambda value, epoch: validated.update({objective: value}))

    def on_epoch(epoch: int, losses: dict[str, float], validate: Callable[[], dict[str, float]]) -> None:
        if epoch >= epochs - 1 or (search and metric is None):
            return
        validated.clear()
        validate_epoch(epoch, losses, validate)
        loss = losses.get("total")
        report({"epoch": epoch + 1, **({"loss": float(loss)} if loss is not None else {}), **validated})

    return on_epoch


def final_metrics(records: list[dict[str, Any]], objectives: Sequence[str]) -> dict[str, float]:
    """What a finished trial reports to Tune beside its status: the test metrics of each protocol
    (`test/<protocol>/<metric>`, as in TensorBoard), training images/s and the epochs trained."""
    out: dict[str, float] = dict(test_scalars(records))
    first = records[0] if records else {}
    for name in ("train_img_per_s", "epochs"):
        value = first.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name not in objectives:
            out[name] = float(value)
    return out


def tune_trial(config: dict[str, Any], payload: dict[str, Any]) -> None:
    """The Tune trainable: one harness trial, run inside a Ray worker."""
    from ray import tune

    from harness.provenance import config_key
    from harness.results import ResultStore
    from harness.results.records import sampled_params

    cfg, params = _trial_config(payload, config)
    key = config_key(cfg)
    store = ResultStore(payload["folder"])
    objectives = payload["objectives"]
    trial_id = tune.get_context().get_trial_id()
    info = {"ray_trial": trial_id, "label": trial_label(cfg, payload["swept"]), **sampled_params(params),
            **payload["search_fields"]}
    on_epoch = epoch_reporter(payload["report_metric"], objectives[0], tune.report, epochs=cfg.train.epochs,
                              search=payload["search"])
    records = finished_records(store, key)  # identical config already finished (resume, repeated sample)
    reused = records is not None
    if records is None:
        result = execute_trial(cfg, store, sweep=payload["sweep"], backend="ray", trial_id=trial_id,
                               trial_fn=resolve_trial_function(payload["trial_fn"]), on_epoch=on_epoch, extra=info,
                               keep_model=payload["keep_models"], test_protocols=not payload["search"],
                               hparams=trial_hparams(cfg, payload["swept"]))
        if result.status != "ok":
            raise TrialFailure(result.failure or "trial failed")
        records = result.records
    metrics: dict[str, Any] = {"trial_status": "ok", "trial_key": key, "reused": reused,
                               **final_metrics(records, objectives)}
    if payload["search"]:
        metrics.update(zip(objectives, objective_values(store, cfg, records, objectives)))
    else:
        value = informative_value(records, objectives[0])
        if value is not None:
            metrics[objectives[0]] = value
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
    from harness.provenance import config_key
    from harness.results import ResultStore
    from harness.results.records import sampled_params

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
                "label": trial_label(cfg, payload["swept"]), **sampled_params(params), **payload["search_fields"]}
        store_pruned(store, cfg, history=history, info=info, started=time.time() - float(last.get("time_total_s", 0)),
                     hparams=trial_hparams(cfg, payload["swept"]))
    return counts


def _write_tables(results: Any, folder: Path, objectives: list[str], directions: list[str]) -> None:
    """`ray_trials.csv` (Tune's view of every trial; `is_pareto` for several objectives) and `pareto.csv`."""
    import numpy as np

    from harness.atomic import atomic_write_text
    from harness.results.stats import pareto_front

    df = results.get_dataframe()
    if len(objectives) > 1 and not df.empty:
        df["is_pareto"] = False
        if "trial_status" in df and all(c in df for c in objectives):
            ok = df[df["trial_status"] == "ok"]
            values = ok[objectives].to_numpy(dtype=float)
            usable = ok.index[np.isfinite(values).all(1)]  # a failed objective is never on the front
            front = pareto_front(df.loc[usable, objectives].to_numpy(dtype=float), tuple(directions))
            df.loc[usable[front], "is_pareto"] = True
        atomic_write_text(folder / PARETO_CSV, df[df["is_pareto"]].to_csv(index=False))
    atomic_write_text(folder / TRIALS_CSV, df.to_csv(index=False))


class TrialNames:
    """Tune trial names and folders from the trial's label (method and swept keys), not its index."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload

    def name(self, trial: Any) -> str:
        cfg, _ = _trial_config(self.payload, trial.config or {})
        return f"{trial_label(cfg, self.payload['swept'])} [{trial.trial_id}]"

    def dirname(self, trial: Any) -> str:
        return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", self.name(trial))[:120]


def _scheduler(spec: SweepSpec, payload: dict[str, Any], modes: list[str]) -> Any:
    """The spec's pruner as Tune's faithful counterpart: median -> MedianStoppingRule."""
    if payload["report_metric"] is None:
        return None
    from ray.tune.schedulers import MedianStoppingRule

    # Optuna's MedianPruner: no pruning before 5 trials have reported, from the first step on.
    return MedianStoppingRule(time_attr="training_iteration", metric=payload["objectives"][0], mode=modes[0],
                              grace_period=1, min_samples_required=5)


def _tuner(tune: Any, spec: SweepSpec, payload: dict[str, Any], plan: list[dict[str, Any]], storage: Path,
           resources: dict[str, float], quiet: bool) -> Any:
    trainable = tune.with_resources(tune.with_parameters(tune_trial, payload=payload), resources)
    experiment = storage / spec.name
    search = spec.search
    labels = payload["labels"]
    param_space = {GRID_POINT: tune.grid_search(labels)} if search is None else {}
    if tune.Tuner.can_restore(str(experiment)):
        return tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True,
                                  param_space=param_space or None)
    names = TrialNames(payload)
    # Reusing trial actors spares each trial a new process (and its torch import).
    tune_config = tune.TuneConfig(num_samples=1, reuse_actors=True, trial_name_creator=names.name,
                                  trial_dirname_creator=names.dirname)
    if search is not None:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        objectives = payload["objectives"]
        modes = ["max" if d == "maximize" else "min" for d in payload["directions"]]
        seed = TrialConfig.from_dict(payload["configs"][0]).seed
        sampler = (optuna.samplers.TPESampler(seed=seed) if search.sampler == "tpe"
                   else optuna.samplers.RandomSampler(seed=seed))
        points = [{GRID_POINT: labels[p[GRID_INDEX]], **{k: v for k, v in p.items() if k != GRID_INDEX}}
                  for p in plan]
        searcher = OptunaSearch(space=DefineByRun(search.space, labels),
                                metric=objectives if len(objectives) > 1 else objectives[0],
                                mode=modes if len(modes) > 1 else modes[0], points_to_evaluate=points,
                                sampler=sampler)
        tune_config = tune.TuneConfig(num_samples=len(plan), search_alg=searcher,
                                      scheduler=_scheduler(spec, payload, modes), reuse_actors=True,
                                      trial_name_creator=names.name, trial_dirname_creator=names.dirname)
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    run_config = tune.RunConfig(name=spec.name, storage_path=str(storage), verbose=0 if quiet else 1,
                                failure_config=tune.FailureConfig(max_failures=0),
                                callbacks=[CSVLoggerCallback(), JsonLoggerCallback()])
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _init_ray(ray: Any, address: str | None, num_cpus: int | None, num_gpus: float | None) -> None:
    env = {"RAY_CHDIR_TO_TRIAL_DIR": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)}
    kwargs: dict[str, Any] = {"address": address or None, "include_dashboard": False, "log_to_driver": False,
                              "logging_level": "warning", "runtime_env": {"env_vars": env}}
    if address is None:
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
        if num_gpus is not None:
            kwargs["num_gpus"] = num_gpus
    try:
        ray.init(**kwargs)
    except Exception as exc:
        if "auth" in f"{type(exc).__name__} {exc}".lower():
            raise EnvironmentFault(
                f"--address {address}: the Ray cluster requires token authentication: set RAY_AUTH_TOKEN (the "
                "token the head node printed, or `ray get-auth-token` there) in this shell, or start the cluster "
                f"with RAY_AUTH_MODE=disabled ({type(exc).__name__}: {exc})") from None
        raise


def run_ray(spec: SweepSpec, folder: Path, *, overrides: dict[str, Any] | None = None, quiet: bool = False,
            address: str | None = None, trial_fn: Any = None, num_cpus: int | None = None,
            num_gpus: float | None = None, gpus_per_trial: float | None = None) -> None:
    """Run (or resume) the sweep on Ray Tune; `address` joins an existing cluster, else a local Ray starts.

    `trial_fn` (a function or "package.module:function") replaces run_trial in the Ray workers;
    `num_cpus` / `num_gpus` size a local Ray (default: every core, the GPUs Ray detects).
    """
    try:
        import ray
        from ray import tune
    except ImportError:
        raise EnvironmentFault(RAY_MISSING) from None
    folder = Path(folder).resolve()
    configs = spec.trials(overrides)
    check_search(spec, configs)
    check_ray(spec, trial_fn=trial_fn, gpus_per_trial=gpus_per_trial)
    objectives, directions = objective_names(spec), objective_directions(spec)
    plan = search_plan(spec, len(configs), seed=configs[0].seed)
    swept = swept_keys(spec)
    payload = {"configs": [c.to_dict() for c in configs], "folder": str(folder), "sweep": spec.name,
               "source": spec.source, "objectives": objectives, "directions": directions,
               "report_metric": reports_every_epoch(spec), "search": spec.search is not None, "trial_fn": trial_fn,
               "swept": swept, "labels": [trial_label(c, [k for k in swept if k in spec.grid]) for c in configs],
               "keep_models": spec.keep_models, "search_fields": search_fields(spec)}
    folder.mkdir(parents=True, exist_ok=True)
    started_here = not ray.is_initialized()
    try:
        if started_here:
            _init_ray(ray, address, num_cpus, num_gpus)
        nodes = [n.get("Resources", {}).get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
        resources = trial_resources(ray.cluster_resources(), nodes, gpus_per_trial, trial_threads(configs))
        if not quiet:
            board = folder / TENSORBOARD_FOLDER
            print(f"ray sweep {spec.name}: {resources['cpu']:g} CPU(s) and {resources['gpu']:g} GPU(s) per trial; "
                  f"the trials' records go to {folder}, their TensorBoard runs to {board} "
                  f"(tensorboard --logdir '{board}')", flush=True)
        with quiet_search(), without_ray_tensorboard():
            tuner = _tuner(tune, spec, payload, plan, folder / RAY_FOLDER, resources, quiet)
            results = tuner.fit()
        counts = _store_pruned_trials(results, payload)
        _write_tables(results, folder, objectives, directions)
        for result in results:
            cause = _cause(result.error)
            if isinstance(cause, InputError):
                raise type(cause)(str(cause)) from None
            if result.error is not None and not isinstance(cause, TrialFailure):
                raise EnvironmentFault(f"ray sweep {spec.name!r}: a trial crashed outside the harness: "
                                       f"{type(cause).__name__}: {cause}; rerun the same command to resume it")
        if counts["unfinished"]:
            raise KeyboardInterrupt(f"ray sweep {spec.name!r} interrupted with {counts['unfinished']} trial(s) "
                                    "unfinished; rerun the same command to resume")
        if not quiet:
            print(f"ray sweep {spec.name}: {counts['ok']} ok, {counts['failed']} failed, {counts['pruned']} pruned")
    finally:
        if started_here:
            ray.shutdown()


@register_backend
class RayBackend(Backend):
    """Tune trials on a local Ray or an existing cluster (`--address`), fractional GPUs per trial."""

    name = "ray"
    supports = frozenset({"search", "address", "gpus_per_trial"})
    description = "Ray Tune on this machine or a cluster"

    def check(self, request: SweepRequest) -> None:
        check_ray(request.spec, trial_fn=request.trial_fn, gpus_per_trial=request.gpus_per_trial)

    def run(self, request: SweepRequest) -> None:
        run_ray(request.spec, request.folder, overrides=request.overrides, quiet=request.quiet,
                address=request.address, trial_fn=request.trial_fn, gpus_per_trial=request.gpus_per_trial)
