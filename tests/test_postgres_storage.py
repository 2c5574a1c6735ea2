"""The Optuna backend on a REAL PostgreSQL server (the multi-node `--storage URL` setup), started
from the system's binaries in a temporary folder; skipped only where the binaries are missing."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="psycopg2-binary is in the test extra: pip install -e '.[test]'")

from harness.results import ResultStore
from harness.runner import run_sweep
from harness.runner.optuna_backend.driver import run_optuna
from harness.runner.optuna_backend.job import OptunaJob
from harness.runner.optuna_backend.storage_url import database_url
from harness.runner.optuna_backend.study import prepare_study
from tests.test_backends import BLOCK_ENV, FAKE, REPO, kill_worker_mid_trial, make_spec


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([shutil.which("initdb")]
                                                                       if shutil.which("initdb") else [])
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway server on a unix socket in a temporary folder (run as `postgres` when we are root)."""
    bindir = _binaries()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs them with apt-get")
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the server as")
    folder = Path(tempfile.mkdtemp(prefix="vireid-pg-"))
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port, password = folder / "data", _free_port(), "pw-for-tests"
    (folder / "pw").write_text(password + "\n")
    if user is not None:
        os.chown(folder / "pw", user.pw_uid, user.pw_gid)
    run_as = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    # password authentication over TCP, as a database server that several nodes reach is set up
    subprocess.run([bindir / "initdb", "-D", data, "-U", "vireid", f"--pwfile={folder / 'pw'}",
                    "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8"], check=True, capture_output=True,
                   **run_as)
    subprocess.run([bindir / "pg_ctl", "-D", data, "-l", folder / "log", "-w", "-o",
                    f"-k {folder} -p {port} -c listen_addresses=127.0.0.1", "start"], check=True,
                   capture_output=True, **run_as)
    subprocess.run([bindir / "createdb", "-h", str(folder), "-p", str(port), "-U", "vireid", "-O", "vireid", "vireid"],
                   check=True, capture_output=True, **run_as)
    try:
        # exactly the README's form, postgresql://vireid:PASSWORD@DBHOST/vireid (with the test server's port)
        yield f"postgresql://vireid:{password}@127.0.0.1:{port}/vireid"
    finally:
        subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], check=False, capture_output=True,
                       **run_as)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def grid_search_spec():
    """A search whose trials are fixed (sampler grid), so two runs train exactly the same configs."""
    space = {"train.lr": {"type": "uniform", "low": 0.01, "high": 0.06, "step": 0.01}}
    return make_spec("pg", search={"space": space, "n_trials": 6, "sampler": "grid", "pruner": "none"})


def comparable(folder: Path):
    df = ResultStore(folder).dataframe()
    ok = df[df["status"] == "ok"]
    return sorted((r["trial_key"], r["protocol"], r["val_mAP"], r["rank1"], r["mAP"])
                  for r in ok.to_dict("records"))


def test_two_workers_on_one_postgres_study_exact_budget_retry_and_same_records_as_sqlite(tmp_path, postgres_url):
    spec = grid_search_spec()
    run_optuna(spec, tmp_path / "sqlite", quiet=True, trial_fn=FAKE)  # the embedded default, one worker

    # a worker that dies mid-trial on the shared study
    job = OptunaJob(spec=spec, folder=tmp_path / "pg", overrides={}, trial_fn=FAKE, heartbeat_interval=1,
                    grace_period=2, storage=postgres_url)
    prepare_study(job)
    block = tmp_path / "block"
    block.write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO), BLOCK_ENV: str(block), "CUDA_VISIBLE_DEVICES": ""}
    kill_worker_mid_trial(job, block, env)

    # through the entry point `vireid sweep --backend optuna --storage URL` calls
    run_sweep(spec, backend="optuna", results_dir=tmp_path, quiet=True, trial_fn=FAKE, workers=2,
              storage=postgres_url, stale_after=2)
    study = optuna.load_study(study_name="pg", storage=database_url(postgres_url))
    states = [t.state for t in study.trials]
    killed = [t for t in study.trials if any(t.number in u.system_attrs.get("retry_history", [])
                                             for u in study.trials)]
    assert len(killed) == 1 and killed[0].state == optuna.trial.TrialState.FAIL  # retried by a copy
    assert states.count(optuna.trial.TrialState.COMPLETE) == 6 and len(states) == 7  # exactly the budget
    assert not (tmp_path / "pg" / "optuna.sqlite").exists()  # the study lives in PostgreSQL
    pg_records = ResultStore(tmp_path / "pg").dataframe()
    assert os.getpid() not in set(pg_records["pid"])  # the worker processes trained
    assert comparable(tmp_path / "pg") == comparable(tmp_path / "sqlite")


def test_the_readme_url_with_a_wrong_password_is_refused_before_any_file(tmp_path, postgres_url, capsys):
    from harness.cli import main

    spec = tmp_path / "spec.yaml"
    spec.write_text("name: pgbad\nbase: {method: agw, model: {backbone: test_resnet, non_local: false}, "
                    "data: {height: 64, width: 32}}\n")
    wrong = postgres_url.replace(":pw-for-tests@", ":wrong@")
    code = main(["sweep", str(spec), "--backend", "optuna", "--storage", wrong, "--results-dir",
                 str(tmp_path / "results"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--storage" in err and "cannot connect" in err and "password" in err, err
    assert not (tmp_path / "results").exists()
