"""Optuna and Ray Tune sweep backends, driven by a fast fake trial whose metrics are known formulas."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from harness.errors import ConfigError, HarnessError
from harness.provenance import config_key
from harness.results import ResultStore
from harness.runner.optuna_backend.driver import run_optuna, worker_command, write_job
from harness.runner.optuna_backend.job import (
    PARETO_CSV,
    STUDY_FILE,
    TRIALS_CSV,
    OptunaJob,
)
from harness.runner.optuna_backend.study import prepare_study
from harness.sweep import parse_spec
from harness.trial import TrialResult

FAKE = "tests.test_backends:fake_run_trial"
BLOCK_ENV = "VIREID_TEST_BLOCK_FILE"
SLEEP_ENV = "VIREID_TEST_TRIAL_SECONDS"
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the fake trial


def fake_val_map(cfg) -> float:
    """Validation mAP of the fake trial: grows with train.lr, scaled by train.weight_decay; NaN above lr 0.08."""
    if cfg.train.lr > 0.08:
        return math.nan
    return 100.0 * (cfg.train.lr / 0.1) * (cfg.train.weight_decay / 0.01)


def fake_throughput(cfg) -> float:
    """Training img/s of the fake trial: falls with train.lr (a trade-off against fake_val_map)."""
    return 1000.0 * (1.0 - cfg.train.lr / 0.1) * (0.5 + cfg.train.weight_decay / 0.02)


def fake_run_trial(cfg, *, workdir=None, on_epoch=None, on_iter=None, extra=None, test_protocols=True,
                   on_curves=None) -> TrialResult:
    """Stands in for harness.trial.run_trial: per-epoch validation rises linearly to fake_val_map.

    Test protocols "a" and "b" get one record each; `test_protocols=False` (a search trial) gives one
    `val` record instead, as run_trial does."""
    started = time.time()
    time.sleep(float(os.environ.get(SLEEP_ENV) or 0))
    block = os.environ.get(BLOCK_ENV)
    if block and Path(block).exists():  # park here until the test kills this process
        Path(block + ".started").write_text(str(os.getpid()))
        Path(f"{block}.started.{os.getpid()}").write_text("")
        deadline = time.time() + 60
        while Path(block).exists() and time.time() < deadline:
            time.sleep(0.05)
    final = fake_val_map(cfg)
    epochs = cfg.train.epochs
    for epoch in range(epochs):
        if on_epoch:
            on_epoch(epoch, {"total": 1.0 / (epoch + 1)},
                     lambda e=epoch: {"mAP": final * (e + 1) / epochs, "rank1": final})
    if cfg.train.gamma == 0.5:
        raise RuntimeError("fake crash")
    if cfg.train.gamma == 0.25:
        raise ConfigError("fake bad input: data.root does not exist")
    key = config_key(cfg)
    common_fields = {"trial_key": key, "method": cfg.method, "backbone": cfg.model.backbone, "dataset": "fake",
                     "seed": cfg.seed, "config": json.dumps(cfg.to_dict(), sort_keys=True), "status": "ok",
                     "failure": None, "epochs": epochs, "val_mAP": final, "train_img_per_s": fake_throughput(cfg),
                     "pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                     "started_at": started, "finished_at": time.time(),
                     **(extra or {})}
    if not test_protocols:
        return TrialResult(key=key, status="ok", records=[{**common_fields, "protocol": "val", "rank1": final,
                                                           "mAP": final}])
    records = [{**common_fields, "protocol": p, "rank1": 10.0 + i, "mAP": 5.0 + i} for i, p in enumerate(("a", "b"))]
    return TrialResult(key=key, status="ok", records=records)


class CountingTrial(list):
    """The fake trial, counting the configs it ran in this process (passed to the backend as its trial function)."""

    def __call__(self, cfg, **kw):
        self.append(cfg)
        return fake_run_trial(cfg, **kw)


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    """No GPU is visible, so the optuna backend's defaults (one worker, in this process) hold on any machine."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture
def fake():
    return CountingTrial()


def make_spec(name="s", *, search=None, grid=None, base=None):
    data = {"name": name, "base": base or {"data": {"val_identities": 4}, "train": {"epochs": 3}},
            "grid": grid or {}}
    if search is not None:
        data["search"] = search
    return parse_spec(data, source=f"{name}.yaml")


LR_SPACE = {"train.lr": {"type": "uniform", "low": 0.001, "high": 0.079}}


def load(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / STUDY_FILE}")


def ok_records(folder: Path):
    df = ResultStore(folder).dataframe()
    return df[df["status"] == "ok"]


# --------------------------------------------------------------------------- optuna: grid and search


def test_optuna_grid_runs_each_point_once_and_resumes(tmp_path, fake):
    spec = make_spec("grid", grid={"train.lr": [0.01, 0.02, 0.03]})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    df = ResultStore(tmp_path).dataframe()
    assert sorted(df["status"].unique()) == ["ok"]
    assert df["trial_key"].nunique() == 3 and len(df) == 6  # two protocols per trial
    lrs = sorted(json.loads(c)["train"]["lr"] for c in df.drop_duplicates("trial_key")["config"])
    assert lrs == [0.01, 0.02, 0.03]
    assert set(df["backend"]) == {"optuna"}
    assert len(fake) == 3
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)  # resume: nothing left to run
    assert len(fake) == 3
    assert len(load(tmp_path, "grid").trials) == 3
    assert len(ResultStore(tmp_path).dataframe()) == 6


def test_optuna_study_names_its_metrics_and_labels_trials_by_their_swept_keys(tmp_path, fake):
    spec = make_spec("names", grid={"seed": [0, 1]},
                     search={"space": LR_SPACE, "n_trials": 2, "objectives": ["val_mAP", "train_img_per_s"],
                             "sampler": "random"})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    study = load(tmp_path, "names")
    assert study.metric_names == ["val_mAP", "train_img_per_s"]
    for t in study.trials:
        assert set(t.params) == {"train.lr"}  # the grid point is not a hyper-parameter
        seed = [0, 1][t.user_attrs["grid_index"]]
        assert t.user_attrs["label"] == f"mclnet seed={seed} train.lr={t.params['train.lr']:.4g}"
    df = ResultStore(tmp_path).dataframe()
    assert set(df["label"]) == {t.user_attrs["label"] for t in study.trials}


def test_optuna_grid_skips_points_finished_by_another_backend(tmp_path, fake):
    spec = make_spec("mixed", grid={"train.lr": [0.01, 0.02]})
    done = spec.trials()[0]
    ResultStore(tmp_path).put_trial(config_key(done), fake_run_trial(done).records)
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    assert [c.train.lr for c in fake] == [0.02]
    assert ResultStore(tmp_path).dataframe()["trial_key"].nunique() == 2


def test_optuna_tpe_search_records_every_trial_with_its_params(tmp_path, fake):
    spec = make_spec("tpe", search={"space": LR_SPACE, "n_trials": 6, "sampler": "tpe", "pruner": "none"})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    df = ok_records(tmp_path).drop_duplicates("trial_key")
    assert len(df) == 6 and len(ResultStore(tmp_path).dataframe()) == 6  # one validation record per trial
    assert set(df["protocol"]) == {"val"} and set(df["objectives"]) == {json.dumps({"val_mAP": "maximize"})}
    study = load(tmp_path, "tpe")
    by_number = {t.number: t for t in study.trials}
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) and len(study.trials) == 6
    for row in df.to_dict("records"):
        lr = json.loads(row["config"])["train"]["lr"]
        assert 0.001 <= lr <= 0.079
        assert row["param_train.lr"] == lr
        trial = by_number[row["optuna_trial"]]
        assert trial.params["train.lr"] == lr
        assert trial.value == pytest.approx(100.0 * lr / 0.1 * (0.0005 / 0.01))  # the validation formula
    csv = (tmp_path / TRIALS_CSV).read_text().splitlines()
    assert "val_mAP" in csv[0].split(",") and len(csv) == 7


def test_optuna_search_crosses_grid_points_with_n_trials_each(tmp_path, fake):
    spec = make_spec("cross", grid={"seed": [0, 1]},
                     search={"space": LR_SPACE, "n_trials": 3, "sampler": "random", "pruner": "none"})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    df = ok_records(tmp_path).drop_duplicates("trial_key")
    assert sorted(df["seed"].value_counts().to_dict().items()) == [(0, 3), (1, 3)]


def test_optuna_grid_sampler_enumerates_the_discretised_space(tmp_path, fake):
    space = {"train.lr": {"type": "uniform", "low": 0.01, "high": 0.03, "step": 0.01},
             "train.weight_decay": {"type": "categorical", "choices": [0.001, 0.002]}}
    spec = make_spec("gridsampler", search={"space": space, "n_trials": 100, "sampler": "grid", "pruner": "none"})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    df = ok_records(tmp_path).drop_duplicates("trial_key")
    got = sorted((round(json.loads(c)["train"]["lr"], 6), json.loads(c)["train"]["weight_decay"]) for c in df["config"])
    assert got == sorted((lr, wd) for lr in (0.01, 0.02, 0.03) for wd in (0.001, 0.002))


def test_optuna_nan_objective_is_a_failed_record_and_the_study_goes_on(tmp_path, fake):
    space = {"train.lr": {"type": "categorical", "choices": [0.01, 0.02, 0.09]}}  # 0.09 -> NaN
    spec = make_spec("nan", search={"space": space, "n_trials": 8, "sampler": "random", "pruner": "none"})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    study = load(tmp_path, "nan")
    assert len(study.trials) == 8
    df = ResultStore(tmp_path).dataframe()
    status = {json.loads(c)["train"]["lr"]: s for c, s in zip(df["config"], df["status"])}
    for t in study.trials:
        lr = t.params["train.lr"]
        expected = optuna.trial.TrialState.FAIL if lr == 0.09 else optuna.trial.TrialState.COMPLETE
        assert t.state == expected
        assert status[lr] == ("failed" if lr == 0.09 else "ok")
    assert 0.09 in status and "not finite" in df[df["status"] == "failed"]["failure"].iloc[0]
    failed = df[df["status"] == "failed"]
    assert failed.groupby("trial_key").size().eq(1).all(), "one failed record per trial, like any failure"
    assert failed["protocol"].isna().all() and set(failed["dataset"]) == {"synthetic"}  # from the config


def test_optuna_inf_objective_is_a_failure_too(tmp_path, monkeypatch, fake):
    monkeypatch.setattr(sys.modules[__name__], "fake_throughput", lambda cfg: math.inf)
    spec = make_spec("inf", search={"space": LR_SPACE, "n_trials": 2, "objectives": ["val_mAP", "train_img_per_s"],
                                    "sampler": "random"})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    assert [t.state for t in load(tmp_path, "inf").trials] == [optuna.trial.TrialState.FAIL] * 2
    assert set(ResultStore(tmp_path).dataframe()["status"]) == {"failed"}


def test_optuna_crashing_trial_is_failed_not_fatal(tmp_path, fake):
    spec = make_spec("crash", grid={"train.gamma": [0.5, 0.1]})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    df = ResultStore(tmp_path).dataframe()
    by_gamma = {json.loads(c)["train"]["gamma"]: s for c, s in zip(df["config"], df["status"])}
    assert by_gamma == {0.5: "failed", 0.1: "ok"}


def test_optuna_median_pruning_stores_pruned_records(tmp_path, fake):
    spec = make_spec("prune", base={"data": {"val_identities": 4}, "train": {"epochs": 4, "weight_decay": 0.01}},
                     search={"space": LR_SPACE, "n_trials": 14, "sampler": "random", "pruner": "median"})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    trials = load(tmp_path, "prune").trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "some low-lr trials must be pruned"
    df = ResultStore(tmp_path).dataframe()
    for t in pruned:
        rows = df[df["optuna_trial"] == t.number]
        assert list(rows["status"]) == ["pruned"]
        step = max(t.intermediate_values)
        assert rows["epochs"].iloc[0] == step < 4  # steps are epochs 1..n
        # brute force: its best value so far is below the median of the earlier completed trials at that step
        earlier = [u.intermediate_values[step] for u in trials
                   if u.number < t.number and u.state == optuna.trial.TrialState.COMPLETE]
        assert len(earlier) >= 5
        assert max(t.intermediate_values.values()) < np.median(earlier)
        assert json.loads(rows["val_history"].iloc[0])[str(step)] == pytest.approx(t.intermediate_values[step])
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) + len(pruned) == 14
    assert len(df[df["status"] == "ok"]["trial_key"].unique()) == len(complete)


def test_optuna_multi_objective_pareto_front_is_the_non_dominated_set(tmp_path, fake):
    space = {"train.lr": {"type": "uniform", "low": 0.001, "high": 0.079},
             "train.weight_decay": {"type": "uniform", "low": 0.001, "high": 0.01}}
    spec = make_spec("pareto", search={"space": space, "n_trials": 12, "objectives": ["val_mAP", "train_img_per_s"],
                                       "sampler": "random"})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    df = ok_records(tmp_path).drop_duplicates("trial_key")
    pts = {int(r.optuna_trial): (r.val_mAP, r.train_img_per_s) for r in df.itertuples()}
    assert len(pts) == 12
    expected = set()
    for n, (a, b) in pts.items():  # brute force, one pair at a time
        if not any(a2 >= a and b2 >= b and (a2 > a or b2 > b) for m, (a2, b2) in pts.items() if m != n):
            expected.add(n)
    import pandas as pd

    front = pd.read_csv(tmp_path / PARETO_CSV)
    assert set(front["number"]) == expected and 1 < len(expected) < 12
    every = pd.read_csv(tmp_path / TRIALS_CSV)
    assert set(every[every["is_pareto"]]["number"]) == expected
    for row in front.itertuples():
        assert row.val_mAP == pytest.approx(pts[row.number][0])
        assert row.train_img_per_s == pytest.approx(pts[row.number][1])


def test_optuna_resume_respects_the_budget_and_can_grow_it(tmp_path, fake):
    search = {"space": LR_SPACE, "n_trials": 3, "sampler": "tpe", "pruner": "none"}
    run_optuna(make_spec("resume", search=search), tmp_path, quiet=True, trial_fn=fake)
    first = ResultStore(tmp_path).dataframe()
    run_optuna(make_spec("resume", search=search), tmp_path, quiet=True, trial_fn=fake)
    again = ResultStore(tmp_path).dataframe()
    assert len(fake) == 3 and len(load(tmp_path, "resume").trials) == 3
    assert list(again["record_id"]) == list(first["record_id"])  # nothing rewritten
    run_optuna(make_spec("resume", search={**search, "n_trials": 5}), tmp_path, quiet=True, trial_fn=fake)
    assert len(fake) == 5 and len(load(tmp_path, "resume").trials) == 5
    assert ok_records(tmp_path)["trial_key"].nunique() == 5
    with pytest.raises(HarnessError, match="grow"):
        run_optuna(make_spec("resume", search={**search, "n_trials": 2}), tmp_path, quiet=True, trial_fn=fake)
    other = {**search, "space": {"train.lr": {"type": "uniform", "low": 0.002, "high": 0.05}}}
    with pytest.raises(HarnessError, match="different sweep"):
        run_optuna(make_spec("resume", search=other), tmp_path, quiet=True, trial_fn=fake)


def test_optuna_interrupted_trial_runs_again_on_resume(tmp_path, monkeypatch, fake):
    spec = make_spec("ctrlc", search={"space": LR_SPACE, "n_trials": 3, "sampler": "random", "pruner": "none"})
    calls = []

    def interrupt_second(cfg, **kw):
        calls.append(cfg)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake_run_trial(cfg, **kw)

    with pytest.raises(KeyboardInterrupt):
        run_optuna(spec, tmp_path, quiet=True, trial_fn=interrupt_second)
    run_optuna(spec, tmp_path, quiet=True, trial_fn=interrupt_second)
    assert len(calls) == 4
    assert calls[3].train.lr == calls[1].train.lr  # the same trial, not a new sample
    assert ok_records(tmp_path)["trial_key"].nunique() == 3


def test_optuna_search_needs_validation_identities(tmp_path, fake):
    spec = make_spec("noval", base={"train": {"epochs": 2}}, search={"space": LR_SPACE, "n_trials": 2})
    with pytest.raises(HarnessError, match="data.val_identities"):
        run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    assert not (tmp_path / STUDY_FILE).exists() and not fake


@pytest.mark.parametrize("search, match", [
    ({"objective": "mAP"}, "not a validation metric"),
    ({"objective": "rank1"}, "not a validation metric"),
    ({"sampler": "cmaes"}, "search.sampler"),
    ({"pruner": "asha"}, "search.pruner"),
    ({"space": {"train.epochs": {"type": "uniform", "low": 1, "high": 3}}}, "train.epochs"),
    ({"sampler": "grid"}, "step"),
])
def test_optuna_rejects_bad_searches_before_running(tmp_path, fake, search, match):
    spec = make_spec("bad", search={"space": LR_SPACE, "n_trials": 2, **search})
    with pytest.raises(HarnessError, match=match):
        run_optuna(spec, tmp_path, quiet=True, trial_fn=fake)
    assert not fake


# --------------------------------------------------------------------------- optuna: worker processes


def kill_worker_mid_trial(job: OptunaJob, block: Path, env: dict[str, str]) -> None:
    """Start one worker process of `job`, SIGKILL it once its trial has started, and unblock the rest."""
    worker = subprocess.Popen(worker_command(write_job(job), 0, 1), cwd=REPO, env=env)
    try:
        deadline = time.time() + 60
        while not Path(str(block) + ".started").exists():
            assert worker.poll() is None and time.time() < deadline, "worker did not start its trial"
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
    block.unlink()


def _env(**extra) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def test_optuna_killed_worker_trial_is_retried_via_heartbeat(tmp_path, fake):
    spec = make_spec("killed", search={"space": LR_SPACE, "n_trials": 3, "sampler": "random", "pruner": "none"})
    job = OptunaJob(spec=spec, folder=tmp_path, overrides={}, trial_fn=FAKE, heartbeat_interval=1, grace_period=2)
    prepare_study(job)
    block = tmp_path / "block"
    block.write_text("")
    kill_worker_mid_trial(job, block, _env(**{BLOCK_ENV: str(block)}))
    study = load(tmp_path, "killed")
    [killed] = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    run_optuna(spec, tmp_path, quiet=True, trial_fn=fake, heartbeat_interval=1, grace_period=2)
    trials = load(tmp_path, "killed").trials
    assert trials[killed.number].state == optuna.trial.TrialState.FAIL
    [retry] = [t for t in trials if killed.number in t.system_attrs.get("retry_history", [])]
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params["train.lr"] == killed.params["train.lr"]
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 3
    assert ok_records(tmp_path)["trial_key"].nunique() == 3 and len(fake) == 3


def test_optuna_two_worker_processes_share_one_budget(tmp_path):
    spec = make_spec("two", search={"space": LR_SPACE, "n_trials": 6, "sampler": "tpe", "pruner": "none",
                                    "workers": 2})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=FAKE, heartbeat_interval=1, grace_period=3)
    trials = load(tmp_path, "two").trials
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    df = ok_records(tmp_path)
    assert df["trial_key"].nunique() == 6 and len(df) == 6  # one validation record per search trial
    assert os.getpid() not in set(df["pid"])  # the trials ran in the worker processes
    assert sorted(df.drop_duplicates("trial_key")["optuna_trial"]) == list(range(6))


# --------------------------------------------------------------------------- ray

try:
    import ray

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False


@pytest.mark.parametrize("cluster, nodes, expected", [
    ({"CPU": 2.0}, [2.0], {"cpu": 2.0, "gpu": 0.0}),
    ({"CPU": 16.0, "memory": 1e9}, [8.0, 8.0], {"cpu": 8.0, "gpu": 0.0}),
    ({"CPU": 12.0}, [4.0, 8.0], {"cpu": 4.0, "gpu": 0.0}),  # fits the smallest node
    ({"CPU": 16.0, "GPU": 4.0}, [16.0], {"cpu": 4.0, "gpu": 1.0}),
    ({"CPU": 8.0, "GPU": 1.0}, [8.0], {"cpu": 8.0, "gpu": 1.0}),
    ({"CPU": 8.0, "GPU": 0.5}, [8.0], {"cpu": 8.0, "gpu": 0.0}),  # no whole GPU to ask for
    ({"CPU": 0.0}, [], {"cpu": 1.0, "gpu": 0.0}),
])
def test_ray_trial_resources_never_ask_for_a_missing_gpu(cluster, nodes, expected):
    from harness.runner.ray_backend import trial_resources

    got = trial_resources(cluster, nodes)
    assert got == expected
    if cluster.get("GPU", 0) < 1:
        assert got["gpu"] == 0


@pytest.mark.parametrize("cluster, nodes, per_trial, expected", [
    ({"CPU": 16.0, "GPU": 4.0}, [16.0], 0.5, {"cpu": 2.0, "gpu": 0.5}),  # 8 trial slots share 16 CPUs
    ({"CPU": 8.0, "GPU": 1.0}, [8.0], 0.25, {"cpu": 2.0, "gpu": 0.25}),
    ({"CPU": 16.0, "GPU": 4.0}, [16.0], 2, {"cpu": 8.0, "gpu": 2.0}),
])
def test_ray_fractional_gpus_per_trial(cluster, nodes, per_trial, expected):
    from harness.runner.ray_backend import trial_resources

    assert trial_resources(cluster, nodes, per_trial) == expected


@pytest.mark.parametrize("cluster, nodes, threads, expected", [
    ({"CPU": 2.0}, [2.0], 1, {"cpu": 1.0, "gpu": 0.0}),  # train.threads 1 on 2 cores: two trials at once
    ({"CPU": 16.0}, [8.0, 8.0], 4, {"cpu": 4.0, "gpu": 0.0}),
    ({"CPU": 4.0}, [4.0], 16, {"cpu": 4.0, "gpu": 0.0}),  # never more than a node has
    ({"CPU": 2.0}, [2.0], None, {"cpu": 2.0, "gpu": 0.0}),  # threads left to torch: every core
    ({"CPU": 16.0, "GPU": 4.0}, [16.0], 2, {"cpu": 2.0, "gpu": 1.0}),
])
def test_ray_cpus_per_trial_follow_train_threads(cluster, nodes, threads, expected):
    from harness.runner.ray_backend import trial_resources, trial_threads

    assert trial_resources(cluster, nodes, threads=threads) == expected
    spec = make_spec("threads", grid={"train.threads": [1, 2]})
    assert trial_threads(spec.trials()) == 2 and trial_threads(make_spec("none").trials()) is None


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason="ray[tune] is not installed")
def test_ray_runs_one_thread_trials_side_by_side_reports_metrics_and_names_the_harness_board(
        tmp_path, monkeypatch, capsys):
    """Two CPUs, train.threads 1: the two trials run at the same time (their fake runs of 1.5 s
    overlap); Tune's results hold the harness's metrics, and the sweep names the harness's
    TensorBoard folder, not one of Ray's own."""
    import pandas as pd

    from harness.runner.ray_backend import TRIALS_CSV as RAY_CSV
    from harness.runner.ray_backend import run_ray

    monkeypatch.setenv(SLEEP_ENV, "1.5")
    spec = make_spec("rthreads", grid={"train.lr": [0.01, 0.02]},
                     base={"data": {"val_identities": 4}, "train": {"epochs": 3, "threads": 1}})
    run_ray(spec, tmp_path, trial_fn=FAKE, num_cpus=2)
    out = capsys.readouterr().out
    df = ok_records(tmp_path).drop_duplicates("trial_key").sort_values("started_at")
    first, second = df.to_dict("records")
    assert second["started_at"] < first["finished_at"]  # side by side, not one after the other
    tune_rows = pd.read_csv(tmp_path / RAY_CSV).set_index("config/grid_point")
    row = tune_rows.loc["mclnet train.lr=0.01 seed=0"]
    assert row["test/a/rank1"] == 10.0 and row["test/b/mAP"] == 6.0 and row["epochs"] == 3  # the fake's numbers
    assert row["train_img_per_s"] == pytest.approx(1000.0 * 0.9 * (0.5 + 0.0005 / 0.02))
    assert "1 CPU(s) and 0 GPU(s) per trial" in out
    assert f"tensorboard --logdir '{tmp_path.resolve() / 'tensorboard'}'" in out
    assert "To visualize your results with TensorBoard" not in out  # Ray writes no board of its own
    assert not list((tmp_path / "ray").rglob("events.out.tfevents*"))


@pytest.mark.parametrize("cluster, per_trial, match", [
    ({"CPU": 8.0}, 0.5, "has 0 GPU"), ({"CPU": 8.0, "GPU": 2.0}, 1.5, "fraction"),
    ({"CPU": 8.0, "GPU": 2.0}, 0, "fraction"),
])
def test_ray_gpus_per_trial_that_cannot_be_met_are_refused(cluster, per_trial, match):
    from harness.runner.ray_backend import trial_resources

    with pytest.raises(ConfigError, match=match):
        trial_resources(cluster, [8.0], per_trial)


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason="ray[tune] is not installed")
def test_ray_half_a_gpu_per_trial_on_a_local_ray_with_declared_gpus(tmp_path, monkeypatch):
    from harness.runner.ray_backend import TRIALS_CSV as RAY_CSV
    from harness.runner.ray_backend import run_ray

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # Ray refuses declared GPUs that an empty list hides

    spec = make_spec("rfrac", grid={"train.lr": [0.01, 0.02, 0.03, 0.04]})
    run_ray(spec, tmp_path, quiet=True, trial_fn=FAKE, num_cpus=2, num_gpus=2, gpus_per_trial=0.5)
    df = ok_records(tmp_path).drop_duplicates("trial_key")
    assert df["trial_key"].nunique() == 4
    assert set(df["cuda_visible_devices"]) <= {"0", "1"}  # Ray pinned each trial to one of the declared GPUs
    import pandas as pd

    assert len(pd.read_csv(tmp_path / RAY_CSV)) == 4


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    from harness.runner.ray_backend import run_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(HarnessError, match=r"pip install 'vireid-harness\[ray\]'"):
        run_ray(make_spec("noray"), tmp_path, quiet=True)


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason="ray[tune] is not installed")
def test_ray_grid_runs_every_point_and_resumes(tmp_path):
    from harness.runner.ray_backend import TRIALS_CSV as RAY_CSV
    from harness.runner.ray_backend import run_ray

    spec = make_spec("rgrid", grid={"train.lr": [0.01, 0.02, 0.03]})
    run_ray(spec, tmp_path, quiet=True, trial_fn=FAKE, num_cpus=2)
    assert not ray.is_initialized()
    df = ResultStore(tmp_path).dataframe()
    assert set(df["status"]) == {"ok"} and set(df["backend"]) == {"ray"} and len(df) == 6
    lrs = sorted(json.loads(c)["train"]["lr"] for c in df.drop_duplicates("trial_key")["config"])
    assert lrs == [0.01, 0.02, 0.03]
    assert os.getpid() not in set(df["pid"])  # ran in Ray workers
    assert (tmp_path / "ray" / "rgrid").is_dir() and (tmp_path / RAY_CSV).exists()
    import pandas as pd

    labels = {f"mclnet train.lr={lr} seed=0" for lr in (0.01, 0.02, 0.03)}
    tune_rows = pd.read_csv(tmp_path / RAY_CSV)
    assert set(tune_rows["config/grid_point"]) == labels and not any("grid_index" in c for c in tune_rows.columns)
    folders = [p.name for p in (tmp_path / "ray" / "rgrid").iterdir() if p.is_dir()]
    assert all(any(f.startswith(label.replace(" ", "_") + "_") for f in folders) for label in labels)
    run_ray(spec, tmp_path, quiet=True, trial_fn=FAKE, num_cpus=2)  # restores the finished experiment
    assert list(ResultStore(tmp_path).dataframe()["record_id"]) == list(df["record_id"])


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason="ray[tune] is not installed")
def test_ray_search_records_sampled_trials_and_asha_stops(tmp_path):
    from harness.runner.ray_backend import TRIALS_CSV as RAY_CSV
    from harness.runner.ray_backend import run_ray

    spec = make_spec("rsearch", search={"space": LR_SPACE, "n_trials": 3, "sampler": "tpe", "pruner": "median"})
    run_ray(spec, tmp_path, quiet=True, trial_fn=FAKE, num_cpus=2)
    assert not ray.is_initialized()
    df = ResultStore(tmp_path).dataframe().drop_duplicates("trial_key")
    assert len(df) == 3 and set(df["status"]) <= {"ok", "pruned"}
    for row in df.to_dict("records"):
        lr = json.loads(row["config"])["train"]["lr"]
        assert 0.001 <= lr <= 0.079 and row["param_train.lr"] == pytest.approx(lr)
        if row["status"] == "ok":
            assert row["val_mAP"] == pytest.approx(100.0 * lr / 0.1 * 0.05) and row["epochs"] == 3
        else:
            assert row["epochs"] < 3
    import pandas as pd

    tune_rows = pd.read_csv(tmp_path / RAY_CSV)
    assert len(tune_rows) == 3
    for row in tune_rows.to_dict("records"):  # the tune metric is the validation objective, not a test metric
        expected = 100.0 * row["config/train.lr"] / 0.1 * 0.05
        if row["trial_status"] == "ok":
            assert row["val_mAP"] == pytest.approx(expected)
        else:  # stopped early: its last report is a per-epoch validation value
            assert row["val_mAP"] == pytest.approx(expected * row["epoch"] / 3)


@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason="ray[tune] is not installed")
def test_ray_shuts_down_when_a_trial_raises_an_input_error(tmp_path):
    from harness.runner.ray_backend import run_ray

    spec = make_spec("rerr", grid={"train.gamma": [0.1, 0.25]})  # gamma 0.25: the fake raises HarnessError
    with pytest.raises(HarnessError, match="fake bad input"):
        run_ray(spec, tmp_path, quiet=True, trial_fn=FAKE, num_cpus=2)
    assert not ray.is_initialized()
    df = ResultStore(tmp_path).dataframe()
    assert set(df["status"]) == {"ok"} and df["trial_key"].nunique() == 1  # an input error is not a trial record


def test_ray_outcomes_after_fit_pruned_records_and_interruptions(tmp_path):
    """Classifies Tune results without Ray: finished, failed, stopped by the scheduler, interrupted."""
    from types import SimpleNamespace

    from harness.runner.ray_backend import _store_pruned_trials
    from harness.search import search_fields

    spec = make_spec("outcomes", search={"space": LR_SPACE, "n_trials": 4})
    payload = {"configs": [c.to_dict() for c in spec.trials()], "folder": str(tmp_path), "sweep": "outcomes",
               "source": "outcomes.yaml", "objectives": ["val_mAP"], "labels": ["mclnet seed=0"],
               "swept": ["train.lr"], "search_fields": search_fields(spec)}
    results = [
        SimpleNamespace(config={"grid_point": "mclnet seed=0", "train.lr": 0.01}, error=None,
                        metrics={"trial_status": "ok", "val_mAP": 1.0, "done": True}),
        SimpleNamespace(config={"grid_point": "mclnet seed=0", "train.lr": 0.02}, error=RuntimeError("boom"),
                        metrics={}),
        SimpleNamespace(config={"grid_point": "mclnet seed=0", "train.lr": 0.03}, error=None,
                        metrics={"val_mAP": 0.5, "epoch": 1, "done": True, "trial_id": "t3", "time_total_s": 2.0}),
        SimpleNamespace(config={"grid_point": "mclnet seed=0", "train.lr": 0.04}, error=None,
                        metrics={"val_mAP": 0.7, "epoch": 2, "done": False}),
    ]
    counts = _store_pruned_trials(results, payload)
    assert counts == {"ok": 1, "failed": 1, "pruned": 1, "unfinished": 1}
    df = ResultStore(tmp_path).dataframe()
    [row] = df.to_dict("records")
    assert row["status"] == "pruned" and json.loads(row["config"])["train"]["lr"] == 0.03
    assert row["epochs"] == 1 and json.loads(row["val_history"]) == {"1": 0.5} and row["trial_id"] == "t3"
    assert row["failure"] == "pruned after epoch 1 (validation 0.50)"
    assert row["trial_key"] == config_key(spec.trials()[0].with_overrides({"train.lr": 0.03}))
    assert row["label"] == "mclnet train.lr=0.03 seed=0" and json.loads(row["objectives"]) == {"val_mAP": "maximize"}


def test_ray_tables_mark_the_pareto_front(tmp_path):
    from types import SimpleNamespace

    import pandas as pd

    from harness.runner.ray_backend import TRIALS_CSV as RAY_CSV
    from harness.runner.ray_backend import _write_tables

    rng = np.random.default_rng(3)
    accuracy = rng.uniform(0, 100, 30).round(0)  # more memory buys accuracy, with scatter: a staircase front
    frame = pd.DataFrame({"val_mAP": accuracy, "peak_memory_mb": (accuracy / 10 + rng.uniform(0, 4, 30)).round(0),
                          "trial_status": ["ok"] * 28 + [None, None]})
    frame.loc[5, "val_mAP"] = math.nan  # a failed objective is never on the front
    _write_tables(SimpleNamespace(get_dataframe=lambda: frame.copy()), tmp_path, ["val_mAP", "peak_memory_mb"],
                  ["maximize", "minimize"])
    rows = frame.to_dict("records")
    usable = [i for i, r in enumerate(rows) if r["trial_status"] == "ok" and not math.isnan(r["val_mAP"])]
    expected = []
    for i in usable:  # brute force: on the front unless another is at least as good in both and better in one
        a, m = rows[i]["val_mAP"], rows[i]["peak_memory_mb"]
        if not any(rows[j]["val_mAP"] >= a and rows[j]["peak_memory_mb"] <= m
                   and (rows[j]["val_mAP"] > a or rows[j]["peak_memory_mb"] < m) for j in usable):
            expected.append(i)
    written = pd.read_csv(tmp_path / RAY_CSV)
    assert list(np.flatnonzero(written["is_pareto"])) == expected and 1 < len(expected) < 28
    assert len(pd.read_csv(tmp_path / PARETO_CSV)) == len(expected)


# --------------------------------------------------------------------------- the real trial, end to end


def tiny_real_spec(name: str, cache: Path, **search):
    base = {"method": "agw", "model": {"backbone": "test_resnet", "non_local": False},
            "data": {"synthetic": {"num_identities": 16, "images_per_camera": 2, "height": 64, "width": 32},
                     "height": 64, "width": 32, "val_identities": 4, "gallery_trials": 2, "modes": ["all"],
                     "cache_dir": str(cache)},
            "train": {"epochs": 2, "iters_per_epoch": 2, "num_identities": 4, "images_per_modality": 2,
                      "threads": 1}}
    space = {"train.lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}
    return parse_spec({"name": name, "base": base, "search": {"space": space, **search}}, source=f"{name}.yaml")


@pytest.mark.slow
def test_optuna_end_to_end_with_the_real_trial(tmp_path):
    spec = tiny_real_spec("real", tmp_path / "cache", n_trials=2, pruner="median")
    run_optuna(spec, tmp_path / "out", quiet=True)
    df = ResultStore(tmp_path / "out").dataframe()
    assert set(df["status"]) == {"ok"} and set(df["protocol"]) == {"val"} and len(df) == 2  # no test protocol
    study = load(tmp_path / "out", "real")
    for t in study.trials:
        [row] = df[df["optuna_trial"] == t.number].to_dict("records")
        assert t.value == pytest.approx(row["val_mAP"])  # the objective is the validation metric
        assert 0.0 <= row["val_mAP"] <= 100.0 and 0.0 <= row["rank1"] <= 100.0
        assert sorted(t.intermediate_values) == [1, 2]  # validated after each epoch (1..n) for the pruner
        assert t.intermediate_values[2] == pytest.approx(row["val_mAP"])  # the final model, validated once more
        assert row["mAP"] == pytest.approx(row["val_mAP"])  # its one record is the validation protocol's
        assert json.loads(row["config"])["train"]["lr"] == pytest.approx(t.params["train.lr"])
    assert not list((tmp_path / "out" / "checkpoints").glob("*.ckpt"))


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(not HAVE_RAY, reason="ray[tune] is not installed")
def test_ray_end_to_end_with_the_real_trial(tmp_path):
    from harness.runner.ray_backend import run_ray

    spec = tiny_real_spec("realray", tmp_path / "cache", n_trials=1, pruner="none")
    run_ray(spec, tmp_path / "out", quiet=True, num_cpus=2)
    df = ResultStore(tmp_path / "out").dataframe()
    assert set(df["status"]) == {"ok"} and set(df["backend"]) == {"ray"} and len(df) == 1
    assert 0.0 <= df["val_mAP"].iloc[0] <= 100.0 and not ray.is_initialized()


# --------------------------------------------------------------------------- optuna: signals and stale trials


def _children(pid: int) -> set[int]:
    """Child processes of `pid` (Linux /proc)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text().split() if (task / "children").exists() else []
        found.update(int(c) for c in text)
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker processes")
def test_optuna_sigterm_to_the_parent_reaches_the_workers_which_are_waited_for(tmp_path):
    sig = signal.SIGTERM
    block = tmp_path / "block"
    block.write_text("")
    script = ("import sys; from tests.test_backends import make_spec, LR_SPACE, FAKE; "
              "from harness.runner.optuna_backend.driver import run_optuna; "
              "spec = make_spec('sig', search={'space': LR_SPACE, 'n_trials': 3, 'sampler': 'random', "
              "'pruner': 'none'}); "
              f"run_optuna(spec, {str(tmp_path / 'out')!r}, workers=2, quiet=True, trial_fn=FAKE)")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE,
                              env=_env(**{BLOCK_ENV: str(block), "CUDA_VISIBLE_DEVICES": ""}))
    try:
        deadline = time.time() + 60
        while len(list(tmp_path.glob("block.started.*"))) < 2:  # both workers parked inside their trial
            assert parent.poll() is None and time.time() < deadline, "the workers did not start their trials"
            time.sleep(0.05)
        workers = _children(parent.pid)
        assert workers == {int(p.name.rsplit(".", 1)[1]) for p in tmp_path.glob("block.started.*")}
        os.kill(parent.pid, sig)
        _, err = parent.communicate(timeout=60)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode != 0 and b"stopped by signal " + sig.name.encode() in err
    for pid in workers:  # waited for: gone, not orphaned
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    study = load(tmp_path / "out", "sig")
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(interrupted) == 2 and not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    block.unlink()
    fake = CountingTrial()
    run_optuna(make_spec("sig", search={"space": LR_SPACE, "n_trials": 3, "sampler": "random", "pruner": "none"}),
               tmp_path / "out", quiet=True, trial_fn=fake)
    assert len(fake) == 3 and ok_records(tmp_path / "out")["trial_key"].nunique() == 3  # the exact budget


def test_forwarded_signals_include_sighup_and_restore_the_handlers():
    from harness.runner.optuna_backend.driver import ForwardSignals

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    before = signal.getsignal(signal.SIGHUP)
    try:
        with ForwardSignals([child]) as forwarded:
            os.kill(os.getpid(), signal.SIGHUP)
            assert child.wait(timeout=30) == -signal.SIGHUP
        assert forwarded.received == [signal.SIGHUP] and signal.getsignal(signal.SIGHUP) == before
    finally:
        if child.poll() is None:
            child.kill()


def test_optuna_trial_killed_before_its_first_heartbeat_is_retried_and_the_wait_is_shown(tmp_path, fake, capsys):
    spec = make_spec("nobeat", search={"space": LR_SPACE, "n_trials": 3, "sampler": "random", "pruner": "none"})
    job = OptunaJob(spec=spec, folder=tmp_path, overrides={}, heartbeat_interval=1, grace_period=2)
    study = prepare_study(job)
    orphan = study.ask()  # RUNNING with no heartbeat: what a worker killed right after asking leaves
    assert orphan.number == 0 and study.trials[0].state == optuna.trial.TrialState.RUNNING
    run_optuna(spec, tmp_path, quiet=False, trial_fn=fake, grace_period=2)
    trials = load(tmp_path, "nobeat").trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    [retry] = [t for t in trials if 0 in t.system_attrs.get("retry_history", [])]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.user_attrs["slot"] == 0
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 3 and len(fake) == 3
    err = capsys.readouterr().err
    assert "waiting for trial(s) [0]" in err and "after 2 s without a heartbeat (--stale-after)" in err


# --------------------------------------------------------------------------- scale-out: devices


@pytest.mark.parametrize("gpus, workers, per_gpu, expected", [
    (["0", "1", "2", "3"], None, None, ["0", "1", "2", "3"]),  # one worker per GPU
    (["0", "1"], None, 2, ["0", "1", "0", "1"]),  # two trials packed on each GPU
    (["0", "1"], 3, 2, ["0", "1", "0"]),
    (["GPU-1a2b", "3"], 1, None, ["GPU-1a2b"]),
    ([], None, None, [""]),  # CPU only: one CPU worker (the spec's search.workers)
    ([], 3, None, ["", "", ""]),
])
def test_worker_devices_pin_each_worker_to_its_gpu(gpus, workers, per_gpu, expected):
    from harness.runner.devices import worker_devices

    assert worker_devices(gpus, workers=workers, trials_per_gpu=per_gpu) == expected


@pytest.mark.parametrize("gpus, workers, per_gpu, match", [
    (["0"], 3, 2, "do not fit 1 GPU"), ([], None, 2, "no GPU is visible"), (["0"], 0, None, "--workers"),
    (["0"], None, 0, "--trials-per-gpu"),
])
def test_worker_devices_refuse_what_cannot_be_placed(gpus, workers, per_gpu, match):
    from harness.runner.devices import worker_devices

    with pytest.raises(ConfigError, match=match):
        worker_devices(gpus, workers=workers, trials_per_gpu=per_gpu)


def test_gpu_lists_parse_and_default_to_the_visible_ones(monkeypatch):
    from harness.runner.devices import parse_gpus, visible_gpus

    assert parse_gpus("0,1, 2,3") == ["0", "1", "2", "3"] and parse_gpus("none") == [] and parse_gpus(None) is None
    for bad in ("0,0", "a,b", "1;2"):
        with pytest.raises(ConfigError, match="--gpus"):
            parse_gpus(bad)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_optuna_workers_see_their_own_cuda_visible_devices(tmp_path):
    """A simulated 2-GPU node with 2 trials per GPU: four worker processes, each pinned before torch starts."""
    spec = make_spec("pinned", grid={"train.lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.075]})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=FAKE, gpus="4,6", trials_per_gpu=2)
    df = ok_records(tmp_path).drop_duplicates("trial_key")
    assert df["trial_key"].nunique() == 8 and len(load(tmp_path, "pinned").trials) == 8  # the exact budget
    assert set(df["cuda_visible_devices"]) <= {"4", "6"} and os.getpid() not in set(df["pid"])
    seen = df.groupby("pid")["cuda_visible_devices"].nunique()
    assert (seen == 1).all()  # a worker never changes its device


def test_optuna_cpu_only_machine_runs_cpu_workers(tmp_path):
    spec = make_spec("cpuonly", grid={"train.lr": [0.01, 0.02, 0.03]})
    run_optuna(spec, tmp_path, quiet=True, trial_fn=FAKE, workers=2)  # no GPU visible (autouse fixture)
    df = ok_records(tmp_path).drop_duplicates("trial_key")
    assert df["trial_key"].nunique() == 3 and set(df["cuda_visible_devices"]) == {""}
    assert os.getpid() not in set(df["pid"])


def test_local_grid_runs_in_parallel_workers_pinned_to_their_gpus(tmp_path):
    from harness.runner import run_sweep

    spec = make_spec("lpinned", grid={"train.lr": [0.01, 0.02, 0.03, 0.04]})
    run_sweep(spec, backend="local", results_dir=tmp_path, quiet=True, trial_fn=FAKE, gpus="4,6")
    df = ok_records(tmp_path / "lpinned").drop_duplicates("trial_key")
    assert df["trial_key"].nunique() == 4 and set(df["backend"]) == {"local"}
    assert set(df["cuda_visible_devices"]) <= {"4", "6"} and os.getpid() not in set(df["pid"])
    assert (df.groupby("pid")["cuda_visible_devices"].nunique() == 1).all()
    run_sweep(spec, backend="local", results_dir=tmp_path, quiet=True, trial_fn=FAKE, workers=2)  # resume: no-op
    assert ResultStore(tmp_path / "lpinned").dataframe()["trial_key"].nunique() == 4


# --------------------------------------------------------------------------- the --storage URL

@pytest.mark.parametrize("installed, url, expected", [
    # the README's bare forms get the driver that is installed: psycopg2 from the [postgres] extra
    ({"psycopg2"}, "postgresql://vireid:PW@DBHOST/vireid", "postgresql+psycopg2://vireid:PW@DBHOST/vireid"),
    ({"psycopg", "psycopg2"}, "postgresql://vireid:PW@DBHOST/vireid", "postgresql+psycopg://vireid:PW@DBHOST/vireid"),
    ({"pymysql"}, "mysql://vireid:PW@DBHOST:3306/vireid", "mysql+pymysql://vireid:PW@DBHOST:3306/vireid"),
    ({"MySQLdb", "pymysql"}, "mysql://u@h/db", "mysql+mysqldb://u@h/db"),
    ({"psycopg2"}, "postgresql://u:p%40ss@/db?host=/run/pg&port=5433",  # quoting and query kept as written
     "postgresql+psycopg2://u:p%40ss@/db?host=/run/pg&port=5433"),
    (set(), "postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),  # a named driver is kept
])
def test_a_storage_url_gets_the_installed_driver(monkeypatch, installed, url, expected):
    from harness.runner.optuna_backend import storage_url

    monkeypatch.setattr(storage_url, "_installed", lambda module: module in installed)
    assert storage_url.database_url(url) == expected


@pytest.mark.parametrize("url, error, fragment", [
    ("notaurl", ConfigError, "not a database URL"), ("sqlite://", ConfigError, "sqlite URLs are not supported"),
    ("sqlite:///study.db", ConfigError, "sqlite URLs"), ("postgres://u:secret@h/db", ConfigError, "postgres URLs"),
    ("postgresql://u:secret@h/db", HarnessError, r"no postgresql driver is installed .*\[postgres\]"),
    ("mysql://u:secret@h/db", HarnessError, "no mysql driver is installed .*pymysql"),
])
def test_a_storage_url_that_cannot_work_is_refused_saying_what_is_expected(monkeypatch, url, error, fragment):
    from harness.runner.optuna_backend import storage_url

    monkeypatch.setattr(storage_url, "_installed", lambda module: False)
    with pytest.raises(error, match=fragment) as info:
        storage_url.database_url(url)
    assert "--storage" in str(info.value) and "secret" not in str(info.value)
