"""One contract, every registered backend: the same tests run against local, optuna and (where
installed) ray, with the fast fake trial of test_backends whose metrics are known formulas."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.errors import ConfigError, InputError
from harness.results import ResultStore
from harness.runner import backend_names, get_backend, run_sweep
from harness.runner.common import sweep_failures
from harness.runner.registry import OPTION_FLAGS, accepting
from harness.search import swept_keys, trial_label
from harness.sweep import parse_spec

FAKE = "tests.test_backends:fake_run_trial"

try:
    import ray  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False


def _backend_params():
    for name in backend_names():
        marks = [pytest.mark.ray, pytest.mark.skipif(not HAVE_RAY, reason="ray[tune] is not installed")] \
            if name == "ray" else []
        yield pytest.param(name, marks=marks, id=name)


BACKENDS = list(_backend_params())


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def grid_spec(name: str, grid: dict) -> object:
    return parse_spec({"name": name, "base": {"data": {"val_identities": 4}, "train": {"epochs": 2}}, "grid": grid},
                      source=f"{name}.yaml")


def sweep(spec, backend: str, folder, **options):
    extra = {"num_cpus": 2} if backend == "ray" else {}
    if extra:  # a small local Ray: the contract is the same whatever its size
        from harness.runner import ray_backend

        return ray_backend.run_ray(spec, folder / spec.name, quiet=True, trial_fn=FAKE, num_cpus=2, **options)
    return run_sweep(spec, backend=backend, results_dir=folder, quiet=True, trial_fn=FAKE, **options)


def test_the_registry_lists_the_builtin_backends():
    assert set(OPTION_VALUES) == set(OPTION_FLAGS) - {"search"}
    assert backend_names()[:3] == ["local", "optuna", "ray"]
    assert {get_backend(n).name for n in backend_names()} == set(backend_names())
    with pytest.raises(ConfigError, match="'slurm' is not one of local, optuna, ray"):
        get_backend("slurm")


@pytest.mark.parametrize("backend", BACKENDS)
def test_grid_runs_every_point_once_records_failures_and_resumes(tmp_path, backend):
    """gamma 0.5 makes the fake crash: a failed record, the other points still run; a rerun runs nothing."""
    spec = grid_spec(f"contract-{backend}", {"train.lr": [0.01, 0.02], "train.gamma": [0.1, 0.5]})
    sweep(spec, backend, tmp_path)
    store = ResultStore(tmp_path / spec.name)
    df = store.dataframe()
    got = {(json.loads(c)["train"]["lr"], json.loads(c)["train"]["gamma"]): s
           for c, s in zip(df["config"], df["status"])}
    assert got == {(0.01, 0.1): "ok", (0.02, 0.1): "ok", (0.01, 0.5): "failed", (0.02, 0.5): "failed"}
    assert set(df["backend"]) == {backend}
    assert len(df[df["status"] == "ok"]) == 4  # two protocols per ok trial
    assert "fake crash" in df[df["status"] == "failed"]["failure"].iloc[0]
    assert sweep_failures(store) is None  # some trials are ok
    sweep(spec, backend, tmp_path)
    assert list(ResultStore(tmp_path / spec.name).dataframe()["record_id"]) == list(df["record_id"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_input_error_inside_a_trial_stops_the_sweep_and_is_not_a_record(tmp_path, backend):
    spec = grid_spec(f"input-{backend}", {"train.gamma": [0.25]})  # the fake raises ConfigError
    with pytest.raises(InputError, match="fake bad input"):
        sweep(spec, backend, tmp_path)
    assert ResultStore(tmp_path / spec.name).dataframe().empty


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id != "ray"])
def test_a_sweep_whose_every_trial_failed_lists_its_failures(tmp_path, backend):
    spec = grid_spec(f"allfail-{backend}", {"train.lr": [0.01, 0.02], "train.gamma": [0.5]})
    sweep(spec, backend, tmp_path)
    failures = sweep_failures(ResultStore(tmp_path / spec.name))
    assert failures is not None and len(failures) == 2 and all("fake crash" in f for f in failures)


OPTION_VALUES = {"workers": 2, "address": "auto", "storage": "postgresql://h/db", "gpus": "0,1", "trials_per_gpu": 2,
                 "gpus_per_trial": 0.5, "retry_failed": True, "stale_after": 30}
REFUSED = [(name, option) for name in backend_names() for option in OPTION_VALUES
           if option not in get_backend(name).supports]


@pytest.mark.parametrize("backend, option", REFUSED)
def test_options_a_backend_does_not_take_are_refused_naming_the_flag(tmp_path, backend, option):
    spec = grid_spec("refused", {"train.lr": [0.01]})
    with pytest.raises(ConfigError) as err:
        run_sweep(spec, backend=backend, results_dir=tmp_path, quiet=True, trial_fn=FAKE,
                  **{option: OPTION_VALUES[option]})
    message = str(err.value)
    assert OPTION_FLAGS[option] in message and f"the {backend} backend does not take it" in message
    assert all(other in message for other in accepting(option)) and accepting(option)
    assert not (tmp_path / "refused").exists()  # refused before anything ran


SEARCHING = [p for p in BACKENDS if "search" in get_backend(p.id).supports]


@pytest.mark.parametrize("backend", SEARCHING)
def test_a_search_never_evaluates_the_test_protocols_and_its_table_shows_the_objective(tmp_path, backend):
    """Search trials are asked for their validation protocol only (the fake trial returns test protocols
    "a" and "b" unless told not to): one `val` record each, naming the objective; the table is one row
    per trial with the sampled value, the state and val_mAP, the best trial ticked, no test metric."""
    from harness.results import write_report

    name = f"search-{backend}"
    spec = parse_spec({"name": name, "base": {"data": {"val_identities": 4}, "train": {"epochs": 2}},
                       "search": {"space": {"train.lr": {"type": "uniform", "low": 0.001, "high": 0.079}},
                                  "n_trials": 3, "sampler": "random", "pruner": "none"}}, source=f"{name}.yaml")
    sweep(spec, backend, tmp_path)
    df = ResultStore(tmp_path / name).dataframe()
    assert len(df) == 3 and set(df["protocol"]) == {"val"} and set(df["status"]) == {"ok"}
    assert set(df["objectives"]) == {json.dumps({"val_mAP": "maximize"})}
    report = write_report(tmp_path / name, protocols=["a"], plots=False)  # a spec's test protocol: not searched
    table = pd.read_csv(tmp_path / name / "table.csv")
    assert {"trial", "train.lr", "state", "epochs", "val_mAP", "chosen"} <= set(table.columns)
    assert not {"rank1", "mAP", "protocol"} & set(table.columns)
    lrs = [json.loads(c)["train"]["lr"] for c in df["config"]]
    expected = sorted((100.0 * lr / 0.1 * 0.05 for lr in lrs), reverse=True)  # the fake's validation formula
    assert table["val_mAP"].tolist() == pytest.approx(expected)  # best first
    assert table["chosen"].tolist() == [True, False, False] and set(table["state"]) == {"ok"}
    assert "val_mAP" in report.markdown and "Rank-1" not in report.markdown and "| a |" not in report.markdown


def test_a_search_on_a_backend_without_search_is_refused(tmp_path):
    spec = parse_spec({"name": "s", "base": {"data": {"val_identities": 4}},
                       "search": {"space": {"train.lr": {"type": "uniform", "low": 0.001, "high": 0.05}}}},
                      source="s.yaml")
    without = [n for n in backend_names() if "search" not in get_backend(n).supports]
    assert "local" in without
    for name in without:
        with pytest.raises(ConfigError, match="search.*does not take it; use --backend optuna or ray"):
            run_sweep(spec, backend=name, results_dir=tmp_path, quiet=True, trial_fn=FAKE)


def test_trial_labels_name_the_swept_keys():
    spec = parse_spec({"name": "l", "base": {"data": {"dataset": "synthetic"}},
                       "grid": {"method": ["agw", "mclnet"], "data.trial": [3, 4], "seed": [0], "train.lr": [0.01]},
                       "search": {"space": {"train.weight_decay": {"type": "uniform", "low": 0.001, "high": 0.01}}}},
                      source="l.yaml")
    assert swept_keys(spec) == ["method", "data.trial", "train.weight_decay"]  # single values do not vary
    cfg = spec.trials()[1].with_overrides({"train.weight_decay": 0.00123456})
    assert trial_label(cfg, swept_keys(spec)) == "agw data.trial=4 train.weight_decay=0.001235 seed=0"


def test_vireid_sweep_exits_1_listing_the_failures_when_every_trial_failed(tmp_path, capsys):
    from harness.cli import main
    from harness.provenance import config_key
    from harness.results.records import TrialRecord

    spec_file = tmp_path / "allfail.yaml"
    spec_file.write_text("name: allfail\nbase: {method: agw, model: {backbone: test_resnet, non_local: false}, "
                         "data: {height: 64, width: 32}}\ngrid: {seed: [0, 1]}\n")
    spec = parse_spec({"name": "allfail", "base": {"method": "agw", "model": {"backbone": "test_resnet",
                       "non_local": False}, "data": {"height": 64, "width": 32}}, "grid": {"seed": [0, 1]}})
    store = ResultStore(tmp_path / "r" / "allfail")
    for cfg in spec.trials():  # a first run in which both trials failed; the rerun skips them
        store.put_trial(config_key(cfg), [TrialRecord.failed(cfg, f"RuntimeError: boom {cfg.seed}")])
    code = main(["sweep", str(spec_file), "--results-dir", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "every trial of sweep 'allfail' failed" in err
    assert "boom 0" in err and "boom 1" in err


@pytest.mark.parametrize("url", ["postgresql+psycopg2://nobody@127.0.0.1:1/none", "postgresql://nobody@127.0.0.1:1/none",
                                 "not a url", "notaurl", "sqlite://", "sqlite:///study.db"])
def test_an_unreachable_or_malformed_storage_url_is_an_input_error_before_any_file(tmp_path, url):
    spec = grid_spec("storage", {"train.lr": [0.01]})
    with pytest.raises(InputError, match="--storage"):
        run_sweep(spec, backend="optuna", results_dir=tmp_path, quiet=True, trial_fn=FAKE, storage=url)
    assert list(tmp_path.iterdir()) == []


BAD_VALUES = [("workers", 0), ("workers", -2), ("gpus", "a,b"), ("gpus", "0,0"), ("trials_per_gpu", 0),
              ("stale_after", 1), ("gpus_per_trial", -1.0), ("gpus_per_trial", 1.5)]
TAKEN_BAD_VALUES = [(name, option, value) for name in backend_names() for option, value in BAD_VALUES
                    if option in get_backend(name).supports]


@pytest.mark.parametrize("backend, option, value", TAKEN_BAD_VALUES)
def test_a_bad_option_value_is_refused_before_the_results_folder_exists(tmp_path, backend, option, value):
    """Every backend checks its options before anything is written: a refused run leaves no folder."""
    if backend == "ray":
        pytest.importorskip("ray")
    spec = grid_spec("early", {"train.lr": [0.01]})
    with pytest.raises(InputError):
        run_sweep(spec, backend=backend, results_dir=tmp_path, quiet=True, trial_fn=FAKE, **{option: value})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_trial_function_that_cannot_be_imported_is_refused_before_the_results_folder_exists(tmp_path, backend):
    with pytest.raises(InputError, match="nowhere"):
        run_sweep(grid_spec("early", {"train.lr": [0.01]}), backend=backend, results_dir=tmp_path, quiet=True,
                  trial_fn="tests.nowhere:trial")
    assert list(tmp_path.iterdir()) == []


def test_search_directions_come_from_the_metric_registry():
    """Several objectives: each takes its metric's natural direction (costs that grow are minimised)."""
    from harness.search import objective_directions

    space = {"train.lr": {"type": "uniform", "low": 0.001, "high": 0.05}}
    spec = parse_spec({"name": "dirs", "base": {"data": {"val_identities": 4}},
                       "search": {"space": space, "objectives": ["val_mAP", "peak_memory_mb", "train_img_per_s",
                                                                 "wall_seconds"]}}, source="dirs.yaml")
    assert objective_directions(spec) == ["maximize", "minimize", "maximize", "minimize"]
