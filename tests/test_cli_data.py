"""`vireid data check | split | synth` through the command line entry point."""

import json
import random

from harness.cli import main
from tests.conftest_trees import make_llcm_tree, make_regdb_tree, make_sysu_tree


def test_data_check_ok_and_broken(tmp_path, capsys):
    tree = make_sysu_tree(tmp_path / "SYSU-MM01")
    assert main(["data", "check", "--dataset", "sysu", str(tree.root)]) == 0
    assert "OK" in capsys.readouterr().out
    (tree.root / "exp" / "test_id.txt").write_text("12,5,x\n")
    assert main(["data", "check", "--dataset", "sysu", str(tree.root)]) == 2
    out = capsys.readouterr().out
    assert "test_id.txt" in out and "'x'" in out


def test_data_check_regdb_and_llcm(tmp_path, capsys):
    regdb = make_regdb_tree(tmp_path / "RegDB", trials=tuple(range(1, 11)))
    assert main(["data", "check", "--dataset", "regdb", str(regdb.root)]) == 0
    llcm = make_llcm_tree(tmp_path / "LLCM")
    assert main(["data", "check", "--dataset", "llcm", str(llcm.root)]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--dataset", "regdb", str(tmp_path / "missing")]) == 2


def test_data_split_prints_the_spec_draw(tmp_path, capsys):
    tree = make_sysu_tree(tmp_path / "SYSU-MM01")
    assert main(["data", "split", "--dataset", "sysu", str(tree.root), "--mode", "indoor", "--trial", "3",
                 "--json"]) == 0
    split = json.loads(capsys.readouterr().out)
    # independent re-statement of the single-shot draw: random.seed(t), ids sorted, cams in order
    random.seed(3)
    expected = []
    for pid in sorted([12, 5, 9, 7]):
        for cam in (1, 2):
            if (pid, cam) in tree.folders:
                expected.append((f"cam{cam}/{pid:04d}/{random.choice(tree.folders[(pid, cam)])}", pid, cam))
    got = [(str(e["path"]).split("SYSU-MM01/")[-1], e["id"], e["camera"]) for e in split["gallery"]]
    assert got == expected
    assert {e["camera"] for e in split["query"]} <= {3, 6}


def test_data_synth_writes_each_layout(tmp_path, capsys):
    for layout in ("sysu", "regdb", "llcm"):
        out = tmp_path / layout
        assert main(["data", "synth", "--layout", layout, str(out), "--identities", "8", "--images-per-camera",
                     "1", "--height", "32", "--width", "16"]) == 0
        assert main(["data", "check", "--dataset", layout, str(out)]) == 0, capsys.readouterr().out
    assert main(["data", "synth", "--layout", "sysu", str(tmp_path / "sysu")]) == 2
    assert "not empty" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    assert main(["data", "synth", "--layout", "regdb", str(tmp_path / "a-file")]) == 2
    assert "is a file or a folder that is not empty" in capsys.readouterr().err
