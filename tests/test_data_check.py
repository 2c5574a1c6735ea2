import shutil
from collections import Counter

import pytest

from harness.data.check import check_dataset, describe_split
from harness.data.llcm import load_llcm
from harness.data.regdb import load_regdb
from harness.data.sysu import load_sysu
from harness.errors import HarnessError
from tests.conftest_trees import (
    LLCM_TEST_FOLDERS,
    LLCM_TRAIN,
    SYSU_FOLDERS,
    SYSU_IDS,
    make_llcm_tree,
    make_regdb_tree,
    make_sysu_tree,
    regdb_index_name,
)


def _problem_paths(report):
    return {p.path: p.message for p in report.problems}


def _has_problem(report, path, text):
    return any(p.path == str(path) and text in p.message for p in report.problems)


# SYSU-MM01 -----------------------------------------------------------------------------------


def test_sysu_good_tree_counts(tmp_path):
    tree = make_sysu_tree(tmp_path / "SYSU-MM01")
    report = check_dataset("SYSU-MM01", tree.root)
    assert report.ok, report.format()
    for split, ids in SYSU_IDS.items():
        cams = Counter()
        for (pid, cam), count in SYSU_FOLDERS.items():
            if pid in ids:
                cams[f"cam{cam}"] += count
        counts = report.counts[split]
        assert counts.identities == len(ids)
        assert counts.per_camera == dict(sorted(cams.items()))
        assert counts.images == sum(cams.values())
        infrared = cams["cam3"] + cams["cam6"]
        assert counts.per_modality == {"infrared": infrared, "visible": counts.images - infrared}
    text = report.format()
    assert "SYSU-MM01" in text and "OK" in text and "cam3=" in text


def test_sysu_planted_problems(tmp_path):
    root = tmp_path / "SYSU-MM01"
    make_sysu_tree(root, ids={"train": [1, 2, 3, 77], "val": [4], "test": [5, 7, 9, 12]})
    (root / "exp" / "val_id.txt").unlink()
    (root / "exp" / "test_id.txt").write_text("5,7,nine,12\n")
    corrupt = root / "cam1" / "0007" / "0002.jpg"
    corrupt.write_bytes(b"definitely not an image")
    empty = root / "cam6" / "0009" / "0001.bmp"
    empty.write_bytes(b"")
    truncated = root / "cam2" / "0012" / "0003.jpg"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    (root / "cam4" / "0033").mkdir()
    (root / "cam5" / "misc").mkdir()

    report = check_dataset("sysu", root)
    assert not report.ok
    assert _has_problem(report, root / "exp" / "val_id.txt", "missing")
    assert _has_problem(report, f"{root / 'exp' / 'test_id.txt'}:1", "'nine'")
    assert _has_problem(report, root / "exp" / "train_id.txt", "identity 77")
    assert _has_problem(report, corrupt, "cannot decode")
    assert _has_problem(report, empty, "empty")
    assert _has_problem(report, truncated, "cannot decode")
    assert _has_problem(report, root / "cam4" / "0033", "no images")
    assert _has_problem(report, root / "cam5" / "misc", "not an integer")
    assert len(report.problems) == 8, report.format()
    text = report.format()
    assert "8 problem(s)" in text and str(corrupt) in text


def test_missing_root_is_a_problem_not_an_exception(tmp_path):
    for dataset in ("sysu", "regdb", "llcm"):
        report = check_dataset(dataset, tmp_path / "absent")
        assert not report.ok
        assert [p.path for p in report.problems] == [str(tmp_path / "absent")]
    with pytest.raises(HarnessError, match="market"):
        check_dataset("market", tmp_path)


# RegDB ---------------------------------------------------------------------------------------


def test_regdb_good_tree_and_planted_problems(tmp_path):
    root = tmp_path / "RegDB"
    tree = make_regdb_tree(root, trials=tuple(range(1, 11)))
    report = check_dataset("regdb", root)
    assert report.ok, report.format()
    assert len(report.counts) == 20
    counts = report.counts["trial 3 train"]
    assert (counts.identities, counts.images) == (3, 12)
    assert counts.per_camera == {"Thermal": 6, "Visible": 6}
    assert counts.per_modality == {"infrared": 6, "visible": 6}

    idx = root / "idx"
    malformed = idx / regdb_index_name("test", "visible", 4)
    lines = malformed.read_text().splitlines()
    lines[1] = lines[1].split(" ")[0]
    lines[3] = lines[3].rsplit(" ", 1)[0] + " -2"
    malformed.write_text("\n".join(lines) + "\n")
    (idx / regdb_index_name("train", "thermal", 7)).unlink()
    one_sided = idx / regdb_index_name("train", "visible", 5)
    rel, _ = tree.lists[5]["test_visible"][0]
    one_sided.write_text(one_sided.read_text() + f"{rel} 999\n")
    missing_image = idx / regdb_index_name("test", "thermal", 6)
    missing_image.write_text(missing_image.read_text() + "Thermal/0/gone.bmp 7\n")
    corrupt = root / "Thermal" / "2" / "t_2_1.bmp"
    corrupt.write_bytes(b"BM garbage")

    report = check_dataset("regdb", root)
    assert _has_problem(report, f"{malformed}:2", "malformed line")
    assert _has_problem(report, f"{malformed}:4", "label -2 is out of range")
    assert _has_problem(report, idx / regdb_index_name("train", "thermal", 7), "missing")
    assert _has_problem(report, one_sided, "[999]")
    assert _has_problem(report, str(root / rel), "both the train and the test lists of trial 5")
    n_lines = len(missing_image.read_text().splitlines())
    assert _has_problem(report, f"{missing_image}:{n_lines}", "gone.bmp does not exist")
    assert _has_problem(report, corrupt, "cannot decode")
    # trial 7 has no thermal training list, so every visible training label is one-sided there
    assert _has_problem(report, idx / regdb_index_name("train", "visible", 7), "no thermal image")
    assert len(report.problems) == 8, report.format()


# LLCM ----------------------------------------------------------------------------------------


def test_llcm_good_tree_and_planted_problems(tmp_path):
    root = tmp_path / "LLCM"
    make_llcm_tree(root)
    report = check_dataset("llcm", root)
    assert report.ok, report.format()
    train = report.counts["train"]
    assert train.images == sum(count for *_, count in LLCM_TRAIN)
    assert train.identities == len({pid for _, pid, _, _ in LLCM_TRAIN})
    cams = Counter()
    for _, _, cam, count in LLCM_TRAIN:
        cams[f"cam{cam}"] += count
    assert train.per_camera == dict(sorted(cams.items()))
    test = report.counts["test"]
    assert test.images == sum(LLCM_TEST_FOLDERS.values())
    assert test.per_modality == {
        "infrared": sum(n for (m, _, _), n in LLCM_TEST_FOLDERS.items() if m == "nir"),
        "visible": sum(n for (m, _, _), n in LLCM_TEST_FOLDERS.items() if m == "vis"),
    }

    (root / "idx" / "test_id.txt").write_text("23,20,21,99")
    train_nir = root / "idx" / "train_nir.txt"
    train_nir.write_text(train_nir.read_text() + "nir/0011/0011_c02_extra_nir.jpg\n")
    corrupt = next((root / "test_vis" / "cam5" / "0023").iterdir())
    corrupt.write_bytes(b"\x89PNG broken")
    shutil.rmtree(root / "test_nir")

    report = check_dataset("llcm", root)
    paths = _problem_paths(report)
    n_lines = len(train_nir.read_text().splitlines())
    assert _has_problem(report, root / "idx" / "test_id.txt", "identity 99")
    assert "malformed line" in paths[f"{train_nir}:{n_lines}"]
    assert _has_problem(report, corrupt, "cannot decode")
    assert _has_problem(report, root / "test_nir", "missing")
    assert len(report.problems) == 4, report.format()


# describe_split ------------------------------------------------------------------------------


def _as_entries(split):
    return [
        (p, pid, cam + 1) for p, pid, cam in zip(split.paths, split.pids.tolist(), split.cams.tolist())
    ]


def _described(entries):
    return [(e["path"], e["id"], e["camera"]) for e in entries]


def test_describe_split_agrees_with_loaders(tmp_path):
    sysu = make_sysu_tree(tmp_path / "SYSU-MM01")
    bundle = load_sysu(sysu.root, modes=("indoor", "all"), shots=(1, 10), trials=10)
    for mode, shots, trial in (("all", 1, 0), ("indoor", 1, 7), ("all", 10, 3)):
        described = describe_split("sysu", sysu.root, mode=mode, shots=shots, trial=trial)
        protocol = bundle.protocols[f"{mode}-{'single' if shots == 1 else 'multi'}"]
        assert described["protocol"] == protocol.name and described["metric_protocol"] == "sysu"
        assert _described(described["query"]) == _as_entries(protocol.query)
        assert _described(described["gallery"]) == _as_entries(protocol.trial_gallery(trial))
        # on-disk camera number: the camN folder of the file
        assert all(f"/cam{e['camera']}/" in e["path"] for e in described["gallery"] + described["query"])

    regdb = make_regdb_tree(tmp_path / "RegDB", trials=(2,))
    described = describe_split("regdb", regdb.root, trial=2, direction="t2v")
    protocol = load_regdb(regdb.root, trial=2).protocols["t2v"]
    assert _described(described["query"]) == _as_entries(protocol.query)
    assert _described(described["gallery"]) == _as_entries(protocol.gallery)
    assert {e["camera"] for e in described["query"]} == {2}  # Thermal
    assert {e["modality"] for e in described["gallery"]} == {"visible"}

    llcm = make_llcm_tree(tmp_path / "LLCM")
    protocol = load_llcm(llcm.root, trials=10).protocols["vis2ir"]
    described = describe_split("llcm", llcm.root, direction="vis2ir", trial=4)
    # the lists actually evaluated: trial 4's sampled NIR images as queries, every VIS image as gallery
    assert _described(described["query"]) == _as_entries(protocol.trial_query(4))
    assert len(described["query"]) < len(protocol.query)
    assert {e["modality"] for e in described["query"]} == {"infrared"}
    assert _described(described["gallery"]) == _as_entries(protocol.gallery)
    assert {e["modality"] for e in described["gallery"]} == {"visible"}
    assert described["trial"] == 4

    with pytest.raises(HarnessError, match="no direction"):
        describe_split("sysu", sysu.root, direction="v2t")
    with pytest.raises(HarnessError, match="no mode"):
        describe_split("regdb", regdb.root, mode="all", trial=2)
    with pytest.raises(HarnessError, match="1..10"):
        describe_split("regdb", regdb.root, trial=0)
    with pytest.raises(HarnessError, match="direction"):
        describe_split("llcm", llcm.root, direction="v2t")
    with pytest.raises(HarnessError, match="trial"):
        describe_split("sysu", sysu.root, trial=-1)
