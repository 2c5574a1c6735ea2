"""Dataset trees that look plausible but are wrong: `data check` and the loaders agree on each.

Both run the same scanning code (harness.data.layout and the dataset modules): the check
collects every problem, a loader raises InputError (exit code 2) at the first one, before
anything trains.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from harness.cli import main
from harness.data.check import check_dataset
from harness.data.llcm import load_llcm
from harness.data.regdb import load_regdb
from harness.data.sysu import load_sysu
from harness.errors import InputError
from tests.conftest_trees import (
    make_llcm_tree,
    make_regdb_tree,
    make_sysu_tree,
    regdb_index_name,
)


def _problems(report, text):
    return [str(p) for p in report.problems if text in p.message]


def _check_and_load_agree(dataset, root, load, path, text):
    report = check_dataset(dataset, root)
    assert any(p.path == str(path) and text in p.message for p in report.problems), report.format()
    with pytest.raises(InputError, match=text):
        load(root)


def test_sysu_without_an_infrared_camera_is_refused(tmp_path):
    tree = make_sysu_tree(tmp_path / "SYSU-MM01")
    shutil.rmtree(tree.root / "cam6")
    _check_and_load_agree("sysu", tree.root, load_sysu, tree.root / "cam6", "camera folder is missing")
    assert "infrared" in _problems(check_dataset("sysu", tree.root), "camera folder is missing")[0]


@pytest.mark.parametrize("camera, kind", [("cam3", "infrared"), ("cam1", "visible")])
def test_sysu_camera_folder_without_any_identity_is_refused_like_a_missing_one(tmp_path, camera, kind):
    tree = make_sysu_tree(tmp_path / "SYSU-MM01")
    shutil.rmtree(tree.root / camera)
    (tree.root / camera).mkdir()
    (tree.root / camera / "README.txt").write_text("not an identity folder")  # a stray file is still no identity
    _check_and_load_agree("sysu", tree.root, load_sysu, tree.root / camera, "camera folder holds no identity folder")
    assert kind in _problems(check_dataset("sysu", tree.root), "holds no identity folder")[0]
    assert main(["data", "check", "--dataset", "sysu", str(tree.root)]) == 2


def test_empty_identity_folder_is_refused(tmp_path):
    tree = make_sysu_tree(tmp_path / "SYSU-MM01")
    empty = tree.root / "cam4" / "0033"
    empty.mkdir()
    _check_and_load_agree("sysu", tree.root, load_sysu, empty, "identity folder holds no images")
    llcm = make_llcm_tree(tmp_path / "LLCM")
    empty = llcm.root / "test_nir" / "cam2" / "0023"
    empty.mkdir()
    _check_and_load_agree("llcm", llcm.root, load_llcm, empty, "identity folder holds no images")


def test_regdb_label_without_the_other_modality_is_refused(tmp_path):
    tree = make_regdb_tree(tmp_path / "RegDB", trials=tuple(range(1, 11)))
    one_sided = tree.root / "idx" / regdb_index_name("train", "visible", 1)
    visible_image = tree.lists[1]["train_visible"][0][0]
    one_sided.write_text(one_sided.read_text() + f"{visible_image} 999\n")
    _check_and_load_agree(
        "regdb", tree.root, lambda root: load_regdb(root, trial=1), one_sided, "training labels with no thermal image"
    )
    load_regdb(tree.root, trial=2)  # the other trials are untouched


@pytest.mark.parametrize("where", ["identity", "image", "camera"])
def test_symbolic_link_loop_is_named_in_check_and_loader(tmp_path, capsys, where):
    tree = make_sysu_tree(tmp_path / "SYSU-MM01")
    link = {
        "identity": tree.root / "cam4" / "0042",
        "image": tree.root / "cam1" / "0007" / "9999.jpg",
        "camera": tree.root / "cam5",
    }[where]
    if link.exists():
        shutil.rmtree(link)
    os.symlink(link.name, link)  # resolves to itself
    _check_and_load_agree("sysu", tree.root, load_sysu, link, "symbolic link loop")
    assert main(["data", "check", "--dataset", "sysu", str(tree.root)]) == 2
    assert "symbolic link loop" in capsys.readouterr().out


def test_symbolic_link_loop_as_training_run_input_exits_2(tmp_path, capsys):
    tree = make_sysu_tree(tmp_path / "SYSU-MM01")
    os.symlink("0042", tree.root / "cam4" / "0042")
    code = main(["run", "--set", "data.dataset=sysu", "--set", f"data.root={tree.root}",
                 "--set", "model.backbone=test_resnet", "--set", "train.epochs=1",
                 "--results-dir", str(tmp_path / "results")])
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    assert "symbolic link loop" in captured.err + captured.out


def test_sixteen_bit_and_thirty_two_bit_images_in_check(tmp_path):
    tree = make_sysu_tree(tmp_path / "SYSU-MM01")
    sixteen = tree.root / "cam3" / "0012" / "0001.bmp"
    sixteen.unlink()
    sixteen = sixteen.with_suffix(".png")
    Image.fromarray(np.full((12, 6), 30000, np.uint16)).save(sixteen)
    report = check_dataset("sysu", tree.root)
    assert report.ok, report.format()  # 16-bit is converted with its scale, as training does
    floating = tree.root / "cam6" / "0012" / "0001.tif"
    Image.fromarray(np.full((12, 6), 0.5, np.float32), mode="F").save(floating)
    report = check_dataset("sysu", tree.root)
    assert [p.path for p in report.problems] == [str(floating)]
    assert "32-bit float" in report.problems[0].message


def test_symbolic_link_loops_in_index_files_and_roots(tmp_path):
    regdb = make_regdb_tree(tmp_path / "RegDB", trials=tuple(range(1, 11)))
    index = regdb.root / "idx" / regdb_index_name("test", "thermal", 3)
    os.symlink("loop.bmp", regdb.root / "Thermal" / "0" / "loop.bmp")
    index.write_text(index.read_text() + "Thermal/0/loop.bmp 7\n")
    line = f"{index}:{len(index.read_text().splitlines())}"
    _check_and_load_agree("regdb", regdb.root, lambda root: load_regdb(root, trial=3), line, "symbolic link loop")
    looped_root = tmp_path / "looped"
    os.symlink("looped", looped_root)
    report = check_dataset("llcm", looped_root)
    assert [p.message for p in report.problems] == ["LLCM root folder does not exist (a symbolic link loop)"]
    with pytest.raises(InputError, match="symbolic link loop"):
        load_llcm(looped_root)
