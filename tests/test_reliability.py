"""Reliability and security guarantees: no code runs from a results folder, results stay inside
--results-dir, bad input is refused before training, environment faults end with a message."""

from __future__ import annotations

import logging
import os
import pickle

import pytest
import torch

from harness.errors import ConfigError
from harness.provenance import config_key
from harness.training.checkpoint import load_checkpoint, save_checkpoint
from harness.trial import run_trial


class _CreatesFile:
    """Unpickling this object would create the folder named by `marker` (a stand-in for any code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _plant_pickle(path, marker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"epoch": 0, "payload": _CreatesFile(str(marker))}))


def test_planted_pickle_checkpoint_runs_no_code(tmp_path, caplog):
    checkpoint, marker = tmp_path / "x.ckpt", tmp_path / "pwned"
    _plant_pickle(checkpoint, marker)
    pickle.loads(checkpoint.read_bytes())  # the payload is live: plain unpickling runs it
    assert marker.exists()
    marker.rmdir()
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(checkpoint, torch.device("cpu")) is None
    assert not marker.exists()
    assert "restarts from scratch" in caplog.text and str(checkpoint) in caplog.text


def test_trial_with_planted_checkpoint_restarts_from_scratch(tiny_config, tmp_path):
    cfg = tiny_config(method="agw")
    marker = tmp_path / "pwned"
    _plant_pickle(tmp_path / "work" / f"{config_key(cfg)}.ckpt", marker)
    result = run_trial(cfg, workdir=tmp_path / "work")
    assert not marker.exists()
    assert result.status == "ok"


def test_checkpoint_that_does_not_fit_is_ignored_and_the_trial_equals_a_fresh_one(tiny_config, tmp_path, caplog):
    cfg = tiny_config(method="agw")
    fresh = run_trial(cfg)
    save_checkpoint({"epoch": 0, "method": {"bogus": torch.zeros(3)}}, tmp_path / f"{config_key(cfg)}.ckpt")
    with caplog.at_level(logging.WARNING):
        resumed = run_trial(cfg, workdir=tmp_path)
    assert "does not fit" in caplog.text
    assert resumed.status == "ok"
    for key in ("rank1", "mAP", "final_losses"):
        assert resumed.records[0][key] == fresh.records[0][key], key


def test_checkpoint_round_trip_keeps_numpy_and_python_rng_states(tmp_path):
    import random

    import numpy as np

    state = {"numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
             "pcg": np.random.default_rng(7).bit_generator.state, "weights": torch.arange(3.0)}
    save_checkpoint(state, tmp_path / "c.ckpt")
    back = load_checkpoint(tmp_path / "c.ckpt", torch.device("cpu"))
    assert back["python_rng"] == state["python_rng"] and back["pcg"] == state["pcg"]
    assert back["numpy_rng"][0] == "MT19937" and np.array_equal(back["numpy_rng"][1], state["numpy_rng"][1])
    assert torch.equal(back["weights"], state["weights"])


def test_truncated_checkpoint_is_ignored(tmp_path):
    save_checkpoint({"weights": torch.arange(1000.0)}, tmp_path / "c.ckpt")
    data = (tmp_path / "c.ckpt").read_bytes()
    (tmp_path / "c.ckpt").write_bytes(data[: len(data) // 2])
    assert load_checkpoint(tmp_path / "c.ckpt", torch.device("cpu")) is None


# ------------------------------------------------------------------ results stay inside --results-dir

@pytest.mark.parametrize("name", ["../../x", "..", ".", "/tmp/elsewhere", "a/b", ".hidden", ""])
def test_run_name_outside_results_dir_is_refused(name, tmp_path, capsys):
    from harness.cli import main

    results = tmp_path / "results"
    assert main(["run", "--name", name, "--results-dir", str(results), "--quiet"]) == 2
    assert "--name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../../x", "..", "/tmp/elsewhere", "a/b", ".hidden", ""])
def test_eval_name_outside_results_dir_is_refused_before_the_model_is_read(name, tmp_path, capsys):
    from harness.cli import main

    model = tmp_path / "in" / "k.safetensors"  # not even read: the name is checked first
    results = tmp_path / "in" / "deeper" / "results"
    assert main(["eval", str(model), "--name", name, "--results-dir", str(results), "--quiet"]) == 2
    assert "--name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["..", ".", "../up", "/abs"])
def test_spec_name_outside_results_dir_is_refused(name, tmp_path, capsys):
    from harness.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: {name!r}\nbase: {{model: {{backbone: test_resnet}}}}\n")
    assert main(["sweep", str(spec), "--results-dir", str(tmp_path / "results"), "--quiet"]) == 2
    assert "sweep name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


# ------------------------------------------------------------------ bad input refused before training

def test_grid_of_a_billion_points_is_refused_within_a_second():
    import time

    from harness.sweep import MAX_GRID_POINTS, parse_spec

    grid = {"seed": list(range(1000)), "train.epochs": list(range(1, 1001)), "train.pad": list(range(1000))}
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=f"grid has 1,000,000,000 points .* limit is {MAX_GRID_POINTS:,}"):
        parse_spec({"name": "big", "grid": grid}, source="big.yaml")
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("grid, typo", [("{method: [agw, mclnet, mclnte]}", "mclnte"),
                                        ("{model.backbone: [test_resnet, test_resnt]}", "test_resnt"),
                                        ("{model.backbone: [test_convnext], data.height: [64, 8]}", "8x32")])
def test_bad_last_grid_value_is_refused_before_any_trial(grid, typo, tmp_path, capsys):
    from harness.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: typo\nbase: {method: agw, model: {backbone: test_resnet, non_local: false}, "
                    f"data: {{height: 64, width: 32}}}}\ngrid: {grid}\n")
    assert main(["sweep", str(spec), "--results-dir", str(tmp_path / "results"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert typo in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("setting, key", [
    ("train.num_identities=0", "train.num_identities"), ("train.epochs=0", "train.epochs"),
    ("seed=-1", "seed"), ("data.modes=[]", "data.modes"), ("train.erasing_area=[0.5]", "train.erasing_area"),
])
def test_out_of_range_setting_exits_2_before_training(setting, key, tmp_path, capsys):
    from harness.cli import main

    assert main(["run", "--set", setting, "--results-dir", str(tmp_path / "results"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert key in err and "expected" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("options", [
    ["--workers", "0"], ["--workers", "-2"], ["--gpus", "a,b"], ["--trials-per-gpu", "0"],
    ["--backend", "optuna", "--workers", "0"], ["--backend", "optuna", "--stale-after", "1"],
    ["--backend", "optuna", "--storage", "notaurl"], ["--backend", "optuna", "--storage", "sqlite://"],
    ["--backend", "optuna", "--storage", "postgresql://nobody@127.0.0.1:1/none"],
    ["--set", "model.pretrained_file=missing.safetensors"],
])
def test_a_refused_sweep_leaves_no_results_folder(options, tmp_path, capsys, monkeypatch):
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: early\nbase: {method: agw, model: {backbone: test_resnet, non_local: false}, "
                    "data: {height: 64, width: 32}}\n")
    code = main(["sweep", str(spec), "--results-dir", str(tmp_path / "results"), "--quiet", *options])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    flag = options[-2] if options[-2].startswith("--") and options[-2] != "--set" else "model.pretrained_file"
    assert flag in err, err
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------ faults of the environment: exit 2, a message

def _failed_record():
    from harness.config import TrialConfig
    from harness.results.records import TrialRecord

    return TrialRecord.failed(TrialConfig(), "planted")


def _cli(args, capsys):
    from harness.cli import main

    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_results_dir_under_a_file_exits_2_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _cli(["run", "--set", "model.backbone=test_resnet", "--results-dir", str(blocker / "results"),
                      "--quiet"], capsys)
    assert code == 2 and "cannot write results here" in err


def test_corrupt_record_store_exits_2_before_training(tmp_path, capsys):
    folder = tmp_path / "results" / "run"
    folder.mkdir(parents=True)
    (folder / "records.sqlite").write_bytes(b"this is not a database" * 100)
    code, err = _cli(["run", "--set", "model.backbone=test_resnet", "--results-dir", str(tmp_path / "results"),
                      "--quiet"], capsys)
    assert code == 2 and "records.sqlite" in err
    code, err = _cli(["table", str(folder)], capsys)
    assert code == 2 and "records.sqlite" in err


def test_truncated_record_store_is_reported(tmp_path, capsys):
    from harness.results.store import ResultStore

    folder = tmp_path / "sweep"
    ResultStore(folder).put_trial("k", [_failed_record()])
    data = (folder / "records.sqlite").read_bytes()
    (folder / "records.sqlite").write_bytes(data[:200])
    code, err = _cli(["table", str(folder)], capsys)
    assert code == 2 and "records.sqlite" in err


def _store_with_raw_row(folder, blob: str) -> int:
    """A store holding one good trial and one row whose record text is `blob`; returns that row's id."""
    import sqlite3
    from contextlib import closing

    from harness.results.store import ResultStore
    from tests.test_results import _record

    ResultStore(folder).put_trial("good", [_record("agw", 0, 40.0, 30.0)])
    with closing(sqlite3.connect(folder / "records.sqlite")) as con, con:
        cursor = con.execute("INSERT INTO records (trial_key, status, protocol, created, record) "
                             "VALUES ('bad', 'ok', 'all-single', 0, ?)", (blob,))
        return cursor.lastrowid


@pytest.mark.parametrize("blob, fragment", [
    ('{"trial_key": "bad", "status": "ok", "rank1": 4', "not a JSON record"),  # cut off mid-write by hand
    ("5", "not a JSON record"),
    ('{"trial_key": "bad", "status": "ok", "method": "agw", "rank1": 50.0}', "'config'"),  # an older writer
    ('{"trial_key": "bad", "status": "ok", "config": "{}", "rank1": 50.0}', "'method'"),
    ('{"trial_key": "bad", "status": "done", "method": "agw", "config": "{}"}', "'status'"),
    ('{"trial_key": "bad", "status": "ok", "method": "agw", "config": "[1"}', "'config'"),
])
def test_a_damaged_record_is_refused_naming_the_store_and_row(tmp_path, capsys, blob, fragment):
    folder = tmp_path / "sweep"
    row = _store_with_raw_row(folder, blob)
    code, err = _cli(["table", str(folder), "--no-plots"], capsys)
    assert code == 2 and f"{folder / 'records.sqlite'} row {row}" in err and fragment in err, err
    assert not (folder / "table.md").exists()  # no table with a silent "nan" row


def test_a_damaged_record_stops_a_resumed_run_before_training(tmp_path, capsys):
    folder = tmp_path / "results" / "run"
    import yaml

    from tests.conftest import TINY

    row = _store_with_raw_row(folder, '{"trial_key": "old", "status": "ok", "rank1": 50.0}')
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "method": "agw", "train": {**TINY["train"], "epochs": 1}}))
    code, err = _cli(["run", "--config", str(config), "--results-dir", str(tmp_path / "results"), "--quiet"], capsys)
    assert code == 2 and f"row {row}" in err
    assert sorted(p.name for p in folder.iterdir()) == ["records.sqlite"]  # no checkpoint: nothing trained


def test_non_utf8_spec_exits_2(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes("name: caf\xe9\n".encode("latin-1"))
    code, err = _cli(["sweep", str(spec), "--results-dir", str(tmp_path / "r")], capsys)
    assert code == 2 and "not UTF-8" in err


def test_published_row_without_equals_exits_2(tmp_path, capsys):
    from harness.results.store import ResultStore

    ResultStore(tmp_path).put_trial("k", [_failed_record()])
    code, err = _cli(["table", str(tmp_path), "--published-row", "mclnet"], capsys)
    assert code == 2 and "--published-row" in err


def test_data_synth_aimed_at_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    code, err = _cli(["data", "synth", "--layout", "sysu", str(target)], capsys)
    assert code == 2 and str(target) in err and target.read_text() == "keep me"


def test_broken_pipe_ends_quietly_with_exit_2():
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before anything is written (`| head` that exited)
    code = "import sys; from harness.cli import main; sys.exit(main(['methods', '--json']))"
    done = subprocess.run([sys.executable, "-c", code], stdout=write_end, stderr=subprocess.PIPE, text=True,
                          timeout=120, check=False)
    os.close(write_end)
    assert done.returncode == 2, done.stderr
    assert "broken pipe" in done.stderr and "Traceback" not in done.stderr


def test_symlink_loop_in_dataset_tree_exits_2(tmp_path, capsys):
    root = tmp_path / "SYSU-MM01"
    (root / "cam1").mkdir(parents=True)
    (root / "cam1" / "0001").symlink_to(root / "cam1" / "0001")
    from harness.cli import main

    assert main(["data", "check", "--dataset", "sysu", str(root)]) == 2
    captured = capsys.readouterr()
    assert "symbolic link loop" in captured.out and "Traceback" not in captured.err


# ------------------------------------------------------------------ one atomic writer, no temporaries left

def test_full_disk_leaves_neither_target_nor_temporary(tmp_path, monkeypatch):
    import errno

    from harness.atomic import atomic_write_bytes
    from harness.errors import EnvironmentFault

    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(EnvironmentFault, match="No space left"):
        atomic_write_bytes(tmp_path / "table.csv", b"a,b\n1,2\n")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from harness.atomic import atomic_open

    target = tmp_path / "records.csv"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_open(target) as handle:
        handle.write("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from harness.atomic import _temporary_name, prepare_output_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    (tmp_path / "checkpoints").mkdir()
    left = tmp_path / "checkpoints" / (_temporary_name(tmp_path / "k.ckpt").replace(str(os.getpid()), str(dead_pid))
                                       + ".x1.ckpt")
    left.write_bytes(b"partial")
    left_tree = tmp_path / (_temporary_name(tmp_path / "tree").replace(str(os.getpid()), str(dead_pid)) + ".x2")
    (left_tree / "cam1").mkdir(parents=True)
    mine = tmp_path / (_temporary_name(tmp_path / "table.md") + ".x3.md")  # a live writer's (this process)
    mine.write_text("in progress")
    prepare_output_folder(tmp_path)
    assert not left.exists() and not left_tree.exists() and mine.exists()


def test_atomic_directory_appears_complete_or_not_at_all(tmp_path):
    from harness.atomic import atomic_directory

    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "tree") as temporary:
        (temporary / "a.txt").write_text("1")
        raise RuntimeError("generator crashed")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "tree") as temporary:
        (temporary / "a.txt").write_text("1")
    assert [p.name for p in tmp_path.iterdir()] == ["tree"] and (tmp_path / "tree" / "a.txt").read_text() == "1"


def test_progress_says_how_many_skipped_trials_had_failed():
    from harness.progress import SweepProgress

    with SweepProgress(total=3, title="s", quiet=True) as progress:
        progress.trial_skipped("ok")
        progress.trial_skipped("failed")
        assert "2 done by earlier runs (1 of them failed)" in progress._summary()


@pytest.mark.parametrize("search, fragment", [
    ("{objective: val_bogus, space: {train.lr: {type: loguniform, low: 0.001, high: 0.1}}}", "val_bogus"),
    ("{space: {model.backbone: {type: categorical, choices: [test_resnet, test_resnt]}}}", "test_resnt"),
    ("{space: {train.erasing_p: {type: uniform, low: 0.0, high: 1.5}}}", "train.erasing_p"),
])
@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_bad_search_block_is_refused_before_any_trial(search, fragment, backend, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nbase: {method: agw, model: {backbone: test_resnet, non_local: false}, "
                    f"data: {{height: 64, width: 32, val_identities: 4}}}}\nsearch: {search}\n")
    code, err = _cli(["sweep", str(spec), "--backend", backend, "--results-dir", str(tmp_path / "r"), "--quiet"],
                     capsys)
    assert code == 2 and fragment in err, err
    assert not list((tmp_path / "r").rglob("records.sqlite"))


# ------------------------------------------------------------------ run-time failures are trial failures

def test_nan_test_features_are_a_trial_failure_not_bad_input():
    import numpy as np

    from harness.errors import InputError, TrialFailure
    from harness.evaluation import evaluate_trials

    query = torch.zeros(2, 4)
    query[0, 0] = float("nan")
    with pytest.raises(TrialFailure, match="NaN") as err:
        evaluate_trials(query, torch.ones(3, 4), [0, 1], [0, 1, 1], [1, 1], [2, 2, 2], np.ones((1, 3), bool),
                        protocol="regdb", max_rank=2)
    assert not isinstance(err.value, InputError)


def test_no_query_with_a_true_match_is_a_trial_failure():
    from harness.errors import TrialFailure
    from harness.evaluation import rank_metrics

    with pytest.raises(TrialFailure, match="no query has a true match"):
        rank_metrics(torch.rand(2, 3), [0, 1], [5, 6, 7], [1, 1], [2, 2, 2], protocol="regdb", max_rank=2)


def test_trial_failure_inside_a_sweep_is_recorded_and_the_sweep_goes_on(tiny_config, tmp_path, monkeypatch):
    import harness.trial as trial_module
    from harness.errors import TrialFailure
    from harness.results.store import ResultStore
    from harness.runner.common import execute_trial

    def failing_evaluation(*args, **kwargs):
        raise TrialFailure("test features contain NaN or inf")

    monkeypatch.setattr(trial_module, "evaluate_protocols", failing_evaluation)
    store = ResultStore(tmp_path)
    result = execute_trial(tiny_config(method="agw", **{"train.epochs": 1}), store, sweep="s", backend="local",
                           trial_id="0")
    assert result.status == "failed" and "NaN" in result.failure
    assert list(store.statuses().values()) == ["failed"]


def test_corrupt_optuna_study_exits_2(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nbase: {method: agw, model: {backbone: test_resnet, non_local: false}, "
                    "data: {height: 64, width: 32, val_identities: 4}}\n"
                    "search: {n_trials: 1, space: {train.lr: {type: loguniform, low: 0.001, high: 0.1}}}\n")
    (tmp_path / "r" / "s").mkdir(parents=True)
    (tmp_path / "r" / "s" / "optuna.sqlite").write_bytes(b"not a database" * 300)
    code, err = _cli(["sweep", str(spec), "--backend", "optuna", "--results-dir", str(tmp_path / "r"), "--quiet"],
                     capsys)
    assert code == 2 and "optuna.sqlite: not a readable Optuna study" in err


def test_ray_cluster_needing_token_authentication_says_what_to_set():
    from harness.errors import EnvironmentFault
    from harness.runner.ray_backend import _init_ray

    class AuthenticationError(Exception):
        pass

    class FakeRay:
        @staticmethod
        def init(**kwargs):
            raise AuthenticationError("Token authentication is enabled but no token was found")

    with pytest.raises(EnvironmentFault, match="RAY_AUTH_TOKEN"):
        _init_ray(FakeRay, "10.0.0.1:6379", None, None)


def test_read_only_results_folder_exits_2_before_training(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    code, err = _cli(["run", "--set", "model.backbone=test_resnet", "--results-dir", str(tmp_path / "results"),
                      "--quiet"], capsys)
    assert code == 2 and "Read-only file system" in err and "cannot write results here" in err


@pytest.mark.parametrize("search, fragment", [
    ("{n_trials: 1000000000, space: {train.lr: {type: loguniform, low: 0.001, high: 0.1}}}", "search.n_trials"),
    ("{sampler: grid, space: {train.pad: {type: int, low: 0, high: 1000000000}}}", "1,000,000,001 grid values"),
    (("{sampler: grid, space: {train.pad: {type: int, low: 0, high: 999}, "
      "train.epochs: {type: int, low: 1, high: 999}}}"), "the limit is 10,000"),
])
def test_huge_search_is_refused_within_a_second(search, fragment, tmp_path, capsys):
    import time

    import harness.runner.optuna_backend  # noqa: F401 -- imports are not what is timed
    from harness.config import TrialConfig
    from harness.preflight import check_buildable

    check_buildable(TrialConfig().with_overrides({"model.backbone": "test_resnet", "model.non_local": False,
                                                  "data.height": 64, "data.width": 32, "method": "agw"}))
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nbase: {method: agw, model: {backbone: test_resnet, non_local: false}, "
                    f"data: {{height: 64, width: 32, val_identities: 4}}}}\nsearch: {search}\n")
    started = time.perf_counter()
    code, err = _cli(["sweep", str(spec), "--backend", "optuna", "--results-dir", str(tmp_path / "r"), "--quiet"],
                     capsys)
    assert code == 2 and fragment in err, err
    assert time.perf_counter() - started < 1.0


def test_a_rerun_removes_temporaries_a_killed_run_left(tmp_path, capsys):
    import subprocess
    import sys

    import yaml

    from harness.atomic import _temporary_name
    from harness.cli import main
    from tests.conftest import TINY

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    checkpoints = tmp_path / "results" / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    stem = _temporary_name(checkpoints / "k.ckpt").replace(f".{os.getpid()}.", f".{dead.stdout.strip()}.")
    left = checkpoints / (stem + ".x.ckpt")
    left.write_bytes(b"half a checkpoint")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "method": "agw", "train": {**TINY["train"], "epochs": 1}}))
    assert main(["run", "--config", str(config), "--results-dir", str(tmp_path / "results"), "--quiet"]) == 0
    capsys.readouterr()
    assert not left.exists()
    assert (tmp_path / "results" / "run" / "records.sqlite").is_file()


# ------------------------------------------------------------------ weights files: refused before training

def _tiny_spec(tmp_path, grid: str) -> str:
    import yaml

    from tests.conftest import TINY

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "pre", "base": {**TINY, "method": "agw"}}) + f"grid: {grid}\n")
    return str(spec)


def test_pretrained_file_that_fits_no_backbone_tensor_stops_the_sweep_before_training(tmp_path, capsys):
    """Before: timm loaded the file non-strictly and every trial trained from random init, exit 0."""
    import timm
    from safetensors.torch import save_file

    good, plain = tmp_path / "good.safetensors", tmp_path / "plain.pth"
    save_file(timm.create_model("test_resnet", num_classes=0).state_dict(), str(good))
    torch.save({"a": torch.zeros(2)}, plain)
    results = str(tmp_path / "results")
    spec = _tiny_spec(tmp_path, f"{{model.pretrained_file: [{good}, {plain}]}}")  # the last grid point is wrong
    code, err = _cli(["sweep", spec, "--results-dir", results, "--quiet"], capsys)
    assert code == 2 and f"grid point {{'model.pretrained_file': '{plain}'}}" in err
    assert f"{plain} is a plain state dict" in err and "unexpected ['a']" in err and "export-backbone" in err
    assert not (tmp_path / "results").exists()
    code, err = _cli(["sweep", _tiny_spec(tmp_path, "{seed: [0]}"), "--results-dir", results, "--quiet",
                      "--set", f"model.pretrained_file={plain}"], capsys)
    assert code == 2 and "plain state dict" in err


def test_truncated_pretrained_file_stops_the_sweep_before_training(tmp_path, capsys):
    """Before: the pre-run check only saw that the file existed; every trial failed and the sweep exited 1."""
    import timm

    path = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    code, err = _cli(["sweep", _tiny_spec(tmp_path, "{seed: [0]}"), "--set", f"model.pretrained_file={path}",
                      "--results-dir", str(tmp_path / "results"), "--quiet"], capsys)
    assert code == 2 and f"model.pretrained_file: {path}: unreadable weights file" in err
    assert not list((tmp_path / "results").rglob("*.ckpt"))


# ------------------------------------------------------------------ files are as readable as the user's own

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_open_gives_under_the_umask(tmp_path, umask):
    from harness.atomic import atomic_directory, atomic_path, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "table.md", "| a |\n")
        with atomic_path(tmp_path / "models" / "k.safetensors") as temporary:
            temporary.write_bytes(b"weights")
        with atomic_directory(tmp_path / "tree") as temporary:
            (temporary / "cam1").mkdir()
    finally:
        os.umask(old)
    file_mode, folder_mode = 0o666 & ~umask, 0o777 & ~umask  # what open() and mkdir() give
    assert (tmp_path / "table.md").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "models" / "k.safetensors").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "tree").stat().st_mode & 0o777 == folder_mode


def test_a_replaced_file_keeps_its_mode_as_open_would(tmp_path):
    from harness.atomic import atomic_write_text

    target = tmp_path / "chosen.yaml"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o640


def test_table_files_are_readable_by_the_group_under_umask_022(tmp_path, capsys):
    from tests.test_results import _record, _store

    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0)])
    old = os.umask(0o022)
    try:
        code, _ = _cli(["table", str(store.folder), "--out", str(tmp_path / "out"), "--no-plots"], capsys)
    finally:
        os.umask(old)
    assert code == 0
    written = sorted((tmp_path / "out").iterdir())
    assert written and {p.stat().st_mode & 0o777 for p in written} == {0o644}


# ------------------------------------------------------------------ no temporaries of killed writers stay anywhere

def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def _left_by(pid: int, target) -> object:
    from harness.atomic import _temporary_name

    return target.parent / (_temporary_name(target).replace(f".{os.getpid()}.", f".{pid}.") + ".ab12" + target.suffix)


def test_the_first_write_into_any_folder_removes_what_killed_writers_left_there(tmp_path):
    from harness.atomic import _temporary_name, atomic_write_text

    folder = tmp_path / "anywhere" / "deep"
    folder.mkdir(parents=True)
    left = _left_by(_dead_pid(), folder / "cmc-all-single.png")
    left.write_bytes(b"half a figure")
    live = folder / (_temporary_name(folder / "table.md") + ".cd34.md")  # a live writer's (this process)
    live.write_text("in progress")
    atomic_write_text(folder / "table.md", "done")
    assert not left.exists() and live.exists()


def test_rerun_of_a_killed_table_command_leaves_no_temporary_in_its_out_folder(tmp_path, capsys):
    from tests.test_results import _record, _store

    store = _store(tmp_path, [_record("agw", 0, 40.0, 30.0)])
    out = tmp_path / "out"
    out.mkdir()
    left = _left_by(_dead_pid(), out / "cmc-all-single.png")  # as `kill -9` during savefig leaves it
    left.write_bytes(b"\x89PNG half")
    code, _ = _cli(["table", str(store.folder), "--out", str(out), "--no-plots"], capsys)
    assert code == 0 and not left.exists()
    assert not [p for p in out.iterdir() if ".vireid-tmp" in p.name]
