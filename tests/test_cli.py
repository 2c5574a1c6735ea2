import argparse
import subprocess
import sys

import pytest

from harness.cli import main
from tests.conftest import TINY


def _flat(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}={v}".replace("'", "")


def test_methods_lists_presets(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("agw", "agw+mcm", "agw+mcm+center", "agw+mcm+ica", "mclnet", "mclnet-no-mcm"):
        assert f"\n{name} " in out
    mclnet_line = next(line for line in out.splitlines() if line.startswith("mclnet "))
    assert mclnet_line.split()[1:4] == ["yes", "ica", "yes"]
    # each family under its own switches
    caj_header = next(line for line in out.splitlines() if "channel_aug" in line)
    assert caj_header.split()[:3] == ["method", "channel_aug", "triplet"]
    assert next(line for line in out.splitlines() if line.startswith("caj+no-ca ")).split()[1:3] == ["-", "adp"]
    assert "caj+<wrt|no-ca" in out and "agw+<mcm|center|ica|cca" in out


def test_methods_lists_the_deen_family_under_its_own_switches(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.split()[1:2] == ["dee"])
    assert header.split()[:5] == ["method", "dee", "mfa", "cpm", "ort"]
    assert next(line for line in lines if line.startswith("deen-no-mfa ")).split()[1:5] == ["yes", "-", "yes", "yes"]
    assert "deen-base+<dee|mfa|cpm|ort" in "\n".join(lines)


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--set", "method=foo"], "unknown method 'foo'"),
    (["run", "--set", "model.backbone=resnet_nope", "--set", "train.epochs=1"], "resnet_nope"),
    (["run", "--set", "train.epochs=two"], "train.epochs: expected an integer"),
    (["run", "--set", "trian.epochs=1"], "unknown config key 'trian.epochs'"),
    (["run", "--set", "data.dataset=sysu"], "data.root"),
    (["run", "--set", "data.dataset=sysu", "--set", "data.root=/no/such/dir"], "/no/such/dir"),
    (["sweep", "no-such-spec.yaml"], "no-such-spec.yaml: file not found"),
    (["table", "/no/such/results"], "no records.sqlite"),
])
def test_bad_input_exits_2_with_a_message(argv, fragment, capsys, tmp_path):
    code = main(argv + (["--results-dir", str(tmp_path)] if argv[0] in ("run", "sweep") else []))
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err


def test_malformed_yaml_spec(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\ngrid: {method: [agw\n")
    assert main(["sweep", str(spec)]) == 2
    assert "bad.yaml: malformed YAML (line" in capsys.readouterr().err


def _commands(parser, prefix=()):
    """Every command path of the parser (`run`, `data`, `data check`, ...), read from argparse itself."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*prefix, name)
                yield from _commands(child, (*prefix, name))


def test_help_of_every_subcommand(capsys):
    from harness.cli import build_parser

    commands = list(_commands(build_parser()))
    assert {("run",), ("sweep",), ("table",), ("methods",), ("data", "check"), ("data", "split"), ("data", "synth"),
            ("bench",), ("eval",), ("export-backbone",)} <= set(commands)
    # in this process, not one interpreter per command (the kill test below runs `python -m harness.cli`)
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0, command
        assert out.startswith(f"usage: vireid {' '.join(command)}") and "show this help message" in out, command


def test_sweep_end_to_end_resumes_and_tables(tmp_path, capsys):
    import yaml

    from harness.results import ResultStore

    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny", "base": TINY,
        "grid": {"method": ["agw", "mclnet"], "seed": [0, 1]},
        "table": {"baseline": "agw", "protocol": "all-single"},
    }))
    assert main(["sweep", str(spec), "--results-dir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.split()[:1] == ["agw"] and " 2 " in line for line in lines)
    assert any(line.split()[:1] == ["mclnet"] for line in lines) and "Differences to agw" in " ".join(out.split())
    assert max(len(line) for line in lines if "│" in line or line.startswith(" ")) <= 80
    folder = tmp_path / "tiny"
    for name in ("table.md", "table.tex", "table-all-single.md", "table-all-single.csv", "table-all-single.tex",
                 "cmc-all-single.png", "cmc-all-single.pdf"):
        assert (folder / name).is_file()
    store = ResultStore(folder)
    first = store.dataframe()
    assert len(first) == 4 and set(first["status"]) == {"ok"}
    # rerun: every trial is finished, nothing is run again and nothing is lost
    assert main(["sweep", str(spec), "--results-dir", str(tmp_path), "--quiet"]) == 0
    again = store.dataframe()
    assert again["record_id"].tolist() == first["record_id"].tolist()
    assert (main(["table", str(folder), "--baseline", "mclnet", "--no-plots"])) == 0
    assert "Differences to mclnet" in " ".join(capsys.readouterr().out.split())


def test_paper_spec_dry_run_on_synthetic_regdb_layout(tmp_path, capsys):
    argv = ["sweep", "benchmarks/paper_main_regdb.yaml", "--dry-run", "--set", "data.trial=2",
            "--set", "train.epochs=1", "--results-dir", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "RegDB V→T" in out and "RegDB T→V" in out
    # MCLNet's published RegDB V->T Rank-1 is never printed beside dry-run (synthetic) rows
    assert "80.30" not in out and "Published numbers are not shown" in out
    from harness.results import ResultStore

    df = ResultStore(tmp_path / "paper-main-regdb-dry-run").dataframe()
    assert sorted(set(df["protocol"])) == ["t2v", "v2t"] and len(df) == 4  # 2 methods x 2 directions
    assert set(df["dataset"]) == {"synthetic-regdb"}


def test_deen_llcm_spec_dry_run_on_synthetic_llcm_layout(tmp_path, capsys):
    argv = ["sweep", "benchmarks/paper_deen_llcm.yaml", "--dry-run", "--set", "train.epochs=1",
            "--results-dir", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "LLCM IR→VIS" in out and "LLCM VIS→IR" in out
    assert "(published)" not in out and "not shown beside rows measured on synthetic" in " ".join(out.split())
    from harness.results import ResultStore

    df = ResultStore(tmp_path / "paper-deen-llcm-dry-run").dataframe()
    assert sorted(set(df["protocol"])) == ["ir2vis", "vis2ir"] and set(df["method"]) == {"deen"}
    assert set(df["dataset"]) == {"synthetic-llcm"} and (df["status"] == "ok").all()


def test_local_sweep_killed_with_sigkill_resumes_without_losing_records(tmp_path):
    import os
    import signal
    import time

    import yaml

    from harness.results import ResultStore

    base = {**TINY, "train": {**TINY["train"], "epochs": 3}}
    spec = tmp_path / "kill.yaml"
    spec.write_text(yaml.safe_dump({"name": "kill", "base": base,
                                    "grid": {"method": ["agw", "agw+mcm", "mclnet"], "seed": [0]}}))
    cmd = [sys.executable, "-m", "harness.cli", "sweep", str(spec), "--results-dir", str(tmp_path), "--quiet"]
    env = {**os.environ, "VIREID_CACHE": os.environ["VIREID_CACHE"]}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = ResultStore(tmp_path / "kill")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if store.path.exists() and len(store.statuses()) >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = store.dataframe()
    assert 1 <= len(before) < 3 and set(before["status"]) == {"ok"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    after = store.dataframe()
    assert sorted(after["method"]) == ["agw", "agw+mcm", "mclnet"]
    # records finished before the kill are the same rows, untouched
    kept = after.set_index("record_id").loc[before["record_id"]]
    assert kept["rank1"].tolist() == before["rank1"].tolist()
    assert not list((tmp_path / "kill" / "checkpoints").glob("*.ckpt"))
