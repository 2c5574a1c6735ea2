import os
import random
from pathlib import Path

import numpy as np
import pytest

from harness.data.llcm import load_llcm, training_camera
from harness.data.regdb import load_regdb
from harness.data.splits import ImageSplit, validation_protocol
from harness.data.sysu import load_sysu
from harness.errors import HarnessError
from tests.conftest_trees import (
    LLCM_TEST_FOLDERS,
    LLCM_TEST_IDS,
    SYSU_IDS,
    make_llcm_tree,
    make_regdb_tree,
    make_sysu_tree,
    regdb_index_name,
)

ALL_CAMS = (1, 2, 4, 5)
INDOOR_CAMS = (1, 2)


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    return make_sysu_tree(tmp_path_factory.mktemp("sysu") / "SYSU-MM01")


@pytest.fixture(scope="module")
def sysu_bundle(sysu):
    return load_sysu(sysu.root, modes=("all", "indoor"), shots=(1, 10), trials=10)


def spec_single_shot_gallery(root: Path, test_ids, cams, trial: int) -> list[str]:
    """The spec text, literally: seed Python's random with t, walk ids sorted, cams as listed."""
    state = random.getstate()
    try:
        random.seed(trial)
        files = []
        for pid in sorted(test_ids):
            for cam in cams:
                folder = os.path.join(str(root), f"cam{cam}", f"{pid:04d}")
                if os.path.isdir(folder):
                    files.append(random.choice(sorted(os.path.join(folder, f) for f in os.listdir(folder))))
        return files
    finally:
        random.setstate(state)


def draw_consuming_missing(root: Path, test_ids, cams, trial: int) -> list[str]:
    """A wrong variant: a missing folder still consumes a random draw."""
    rng = random.Random(trial)
    files = []
    for pid in sorted(test_ids):
        for cam in cams:
            folder = os.path.join(str(root), f"cam{cam}", f"{pid:04d}")
            if os.path.isdir(folder):
                files.append(rng.choice(sorted(os.path.join(folder, f) for f in os.listdir(folder))))
            else:
                rng.random()
    return files


# SYSU-MM01 -----------------------------------------------------------------------------------


def test_sysu_train_split_relabels_ascending_and_parses_cameras(sysu, sysu_bundle):
    train_ids = sorted(SYSU_IDS["train"] + SYSU_IDS["val"])  # [1, 2, 3, 4]
    expected = set()
    for (pid, cam), names in sysu.folders.items():
        if pid in train_ids:
            for name in names:
                path = str(sysu.root / f"cam{cam}" / f"{pid:04d}" / name)
                expected.add((path, train_ids.index(pid), cam - 1, int(cam in (3, 6))))
    train = sysu_bundle.train
    got = set(zip(train.paths, train.pids.tolist(), train.cams.tolist(), train.modalities.tolist()))
    assert got == expected
    assert len(train) == len(expected) == 18
    assert sysu_bundle.num_classes == 4
    assert sysu_bundle.num_cameras == 6
    assert train.pids.dtype == np.int64 and train.cams.dtype == np.int64
    assert all(os.path.isabs(p) for p in train.paths)
    assert sysu_bundle.validation is None


def test_sysu_protocol_names_and_query(sysu, sysu_bundle):
    assert set(sysu_bundle.protocols) == {"all-single", "indoor-single", "all-multi", "indoor-multi"}
    expected_query = sorted(
        (str(sysu.root / f"cam{cam}" / f"{pid:04d}" / name), pid, cam - 1)
        for (pid, cam), names in sysu.folders.items()
        if pid in SYSU_IDS["test"] and cam in (3, 6)
        for name in names
    )
    for protocol in sysu_bundle.protocols.values():
        assert protocol.metric_protocol == "sysu"
        q = protocol.query
        assert sorted(zip(q.paths, q.pids.tolist(), q.cams.tolist())) == expected_query
        assert set(q.modalities.tolist()) == {1}
        assert protocol.trial_masks.shape == (10, len(protocol.gallery))
        assert protocol.trial_masks.any(axis=0).all()  # the gallery is exactly the union


@pytest.mark.parametrize("mode,cams", [("all", ALL_CAMS), ("indoor", INDOOR_CAMS)])
def test_sysu_single_shot_gallery_matches_spec_draw(sysu, sysu_bundle, mode, cams):
    protocol = sysu_bundle.protocols[f"{mode}-single"]
    for trial in range(10):
        expected = spec_single_shot_gallery(sysu.root, SYSU_IDS["test"], cams, trial)
        gallery = protocol.trial_gallery(trial)
        assert list(gallery.paths) == expected
        # labels follow the folders: original id, 0-based camera, visible
        for path, pid, cam in zip(gallery.paths, gallery.pids.tolist(), gallery.cams.tolist()):
            assert Path(path).parent.name == f"{pid:04d}"
            assert Path(path).parent.parent.name == f"cam{cam + 1}"
        assert set(gallery.modalities.tolist()) == {0}


def test_sysu_missing_folder_consumes_no_draw(sysu, sysu_bundle):
    # The tree has missing gallery folders ahead of multi-file folders (e.g. id 5 has no cam1),
    # so a draw that consumed a number per missing folder gives other galleries.
    protocol = sysu_bundle.protocols["all-single"]
    differs = 0
    for trial in range(10):
        wrong = draw_consuming_missing(sysu.root, SYSU_IDS["test"], ALL_CAMS, trial)
        right = spec_single_shot_gallery(sysu.root, SYSU_IDS["test"], ALL_CAMS, trial)
        assert list(protocol.trial_gallery(trial).paths) == right
        differs += wrong != right
    assert differs > 0


def test_sysu_multi_shot_sizes_and_draw(tmp_path):
    folders = {(1, 1): 1, (1, 3): 1, (5, 1): 12, (5, 2): 3, (5, 3): 2, (6, 4): 10, (6, 6): 1}
    tree = make_sysu_tree(tmp_path / "s", folders, {"train": [1], "val": [], "test": [5, 6]})
    # every id file must list ids
    with pytest.raises(HarnessError, match="val_id.txt"):
        load_sysu(tree.root)
    (tree.root / "exp" / "val_id.txt").write_text("1")
    bundle = load_sysu(tree.root, modes=("all", "indoor"), shots=(10,), trials=4)
    sizes = {"all": {(5, 1): 10, (5, 2): 3, (6, 4): 10}, "indoor": {(5, 1): 10, (5, 2): 3}}
    for mode, cams in (("all", ALL_CAMS), ("indoor", INDOOR_CAMS)):
        protocol = bundle.protocols[f"{mode}-multi"]
        for trial in range(4):
            gallery = protocol.trial_gallery(trial)
            per_folder = {}
            for pid, cam in zip(gallery.pids.tolist(), gallery.cams.tolist()):
                per_folder[(pid, cam + 1)] = per_folder.get((pid, cam + 1), 0) + 1
            assert per_folder == sizes[mode]
            assert len(set(gallery.paths)) == len(gallery)
            rng = random.Random(trial)
            expected = set()
            for pid in (5, 6):
                for cam in cams:
                    folder = tree.root / f"cam{cam}" / f"{pid:04d}"
                    if folder.is_dir():
                        files = sorted(os.listdir(folder))
                        expected |= {str(folder / f) for f in rng.sample(files, min(10, len(files)))}
            assert set(gallery.paths) == expected


def test_sysu_camera_and_id_come_from_folder_names(tmp_path):
    root = tmp_path / "cam3" / "0042" / "data cam6 0007" / "SYSU_cam1"
    folders = {(1, 1): 1, (1, 3): 1, (2, 6): 2, (2, 2): 1, (8, 3): 1, (8, 5): 2}
    make_sysu_tree(root, folders, {"train": [1, 2], "val": [2], "test": [8]})
    bundle = load_sysu(root, modes=("all",), trials=1)
    got = sorted(
        (Path(p).parent.parent.name, int(Path(p).parent.name), c, m)
        for p, c, m in zip(bundle.train.paths, bundle.train.cams.tolist(), bundle.train.modalities.tolist())
    )
    assert got == [("cam1", 1, 0, 0), ("cam2", 2, 1, 0), ("cam3", 1, 2, 1), ("cam6", 2, 5, 1), ("cam6", 2, 5, 1)]
    assert bundle.train.pids.tolist().count(0) == 2 and bundle.train.pids.tolist().count(1) == 3
    protocol = bundle.protocols["all-single"]
    assert protocol.query.pids.tolist() == [8] and protocol.query.cams.tolist() == [2]
    assert sorted(protocol.gallery.cams.tolist()) == [4]


def test_sysu_errors(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        load_sysu(tmp_path / "nowhere")

    root = tmp_path / "a"
    make_sysu_tree(root)
    (root / "exp" / "test_id.txt").unlink()
    with pytest.raises(HarnessError, match=r"test_id\.txt.*missing"):
        load_sysu(root)

    root = tmp_path / "b"
    make_sysu_tree(root)
    (root / "exp" / "train_id.txt").write_text("1,2,x3,4\n")
    with pytest.raises(HarnessError, match=r"train_id\.txt:1.*'x3'"):
        load_sysu(root)

    root = tmp_path / "c"
    make_sysu_tree(root, ids={"train": [1, 2, 3, 77], "val": [4], "test": [5, 7, 9, 12]})
    with pytest.raises(HarnessError, match=r"train_id\.txt.*identity 77"):
        load_sysu(root)

    root = tmp_path / "d"
    (root / "exp").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (root / "exp" / f"{split}_id.txt").write_text("1")
    with pytest.raises(HarnessError, match="no camera folders"):
        load_sysu(root)

    root = tmp_path / "e"
    make_sysu_tree(root)
    with pytest.raises(HarnessError, match="mode"):
        load_sysu(root, modes=("outdoor",))
    with pytest.raises(HarnessError, match="shots"):
        load_sysu(root, shots=(5,))
    with pytest.raises(HarnessError, match="trials"):
        load_sysu(root, trials=0)


# RegDB ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def regdb(tmp_path_factory):
    return make_regdb_tree(tmp_path_factory.mktemp("regdb") / "RegDB")


@pytest.mark.parametrize("trial", [1, 2])
def test_regdb_train_split_relabels_across_modalities(regdb, trial):
    bundle = load_regdb(regdb.root, trial=trial)
    lists = regdb.lists[trial]
    labels = sorted({label for _, label in lists["train_visible"] + lists["train_thermal"]})
    assert labels == sorted(10 * pid + 7 for pid in ([1, 2, 3] if trial == 1 else [2, 3, 4]))
    expected = {
        (str(regdb.root / rel), labels.index(label), cam, cam)
        for key, cam in (("train_visible", 0), ("train_thermal", 1))
        for rel, label in lists[key]
    }
    train = bundle.train
    got = set(zip(train.paths, train.pids.tolist(), train.cams.tolist(), train.modalities.tolist()))
    assert got == expected and len(train) == 12
    assert bundle.num_classes == 3 and bundle.num_cameras == 2


def test_regdb_both_directions(regdb):
    bundle = load_regdb(regdb.root, trial=2)
    lists = regdb.lists[2]
    for name, query_key, gallery_key, query_modality in (
        ("v2t", "test_visible", "test_thermal", 0),
        ("t2v", "test_thermal", "test_visible", 1),
    ):
        protocol = bundle.protocols[name]
        assert protocol.metric_protocol == "regdb"
        assert list(protocol.query.paths) == [str(regdb.root / rel) for rel, _ in lists[query_key]]
        assert protocol.query.pids.tolist() == [label for _, label in lists[query_key]]
        assert list(protocol.gallery.paths) == [str(regdb.root / rel) for rel, _ in lists[gallery_key]]
        assert set(protocol.query.modalities.tolist()) == {query_modality}
        assert set(protocol.gallery.modalities.tolist()) == {1 - query_modality}
        assert set(protocol.gallery.cams.tolist()) == {1 - query_modality}
        assert protocol.trial_masks.shape == (1, len(protocol.gallery)) and protocol.trial_masks.all()


def test_regdb_errors(tmp_path):
    tree = make_regdb_tree(tmp_path / "RegDB", trials=(1,))
    for bad in (0, 11, "1", True):
        with pytest.raises(HarnessError, match="1..10"):
            load_regdb(tree.root, trial=bad)
    with pytest.raises(HarnessError, match=r"train_visible_2\.txt.*missing"):
        load_regdb(tree.root, trial=2)

    index = tree.root / "idx" / regdb_index_name("test", "thermal", 1)
    lines = index.read_text().splitlines()
    lines[2] = lines[2].split(" ")[0]  # a path without its label
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(HarnessError, match=rf"{index.name}:3: malformed.*<relative image path> <"):
        load_regdb(tree.root, trial=1)

    lines[2] = "Thermal/0/t_0_0.bmp seven"
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(HarnessError, match=rf"{index.name}:3: malformed label 'seven'"):
        load_regdb(tree.root, trial=1)

    lines[2] = "Thermal/0/missing.bmp 7"
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(HarnessError, match=rf"{index.name}:3: image .*missing\.bmp does not exist"):
        load_regdb(tree.root, trial=1)


# LLCM ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llcm(tmp_path_factory):
    return make_llcm_tree(tmp_path_factory.mktemp("llcm") / "LLCM")


def spec_llcm_gallery(root: Path, modality: str, trial: int) -> list[str]:
    state = random.getstate()
    try:
        random.seed(trial)
        files = []
        for pid in sorted(LLCM_TEST_IDS):
            for cam in range(1, 10):
                folder = os.path.join(str(root), f"test_{modality}", f"cam{cam}", f"{pid:04d}")
                if os.path.isdir(folder):
                    files.append(random.choice(sorted(os.path.join(folder, f) for f in os.listdir(folder))))
        return files
    finally:
        random.setstate(state)


def test_llcm_train_split(llcm):
    bundle = load_llcm(llcm.root, trials=3)
    labels = sorted({label for entries in llcm.train.values() for _, label, _ in entries})
    assert labels == [3, 8, 11]
    expected = {
        (str(llcm.root / rel), labels.index(label), cam - 1, int(modality == "nir"))
        for modality, entries in llcm.train.items()
        for rel, label, cam in entries
    }
    train = bundle.train
    assert set(zip(train.paths, train.pids.tolist(), train.cams.tolist(), train.modalities.tolist())) == expected
    assert bundle.num_classes == 3 and bundle.num_cameras == 9


def _llcm_test_images(llcm, modality):
    return sorted(
        (str(llcm.root / f"test_{modality}" / f"cam{cam}" / f"{pid:04d}" / name), pid, cam - 1)
        for (mod, cam, pid), names in llcm.test_folders.items()
        if mod == modality
        for name in names
    )


def test_llcm_ir2vis_queries_every_nir_image_against_sampled_vis(llcm):
    protocol = load_llcm(llcm.root, trials=10).protocols["ir2vis"]
    assert protocol.metric_protocol == "llcm" and protocol.query_masks is None
    for trial in range(10):
        q = protocol.trial_query(trial)
        assert sorted(zip(q.paths, q.pids.tolist(), q.cams.tolist())) == _llcm_test_images(llcm, "nir")
        assert set(q.modalities.tolist()) == {1}
        gallery = protocol.trial_gallery(trial)
        assert list(gallery.paths) == spec_llcm_gallery(llcm.root, "vis", trial)
        folders = {(c + 1, p) for p, c in zip(gallery.pids.tolist(), gallery.cams.tolist())}
        assert folders == {(cam, pid) for (mod, cam, pid) in LLCM_TEST_FOLDERS if mod == "vis"}


def test_llcm_vis2ir_ranks_sampled_nir_against_every_vis_image(llcm):
    """The official LLCM test code swaps the roles for VIS->IR: the sampled NIR set is ranked."""
    protocol = load_llcm(llcm.root, trials=10).protocols["vis2ir"]
    assert protocol.metric_protocol == "llcm" and protocol.query_masks is not None
    for trial in range(10):
        query = protocol.trial_query(trial)
        assert list(query.paths) == spec_llcm_gallery(llcm.root, "nir", trial)
        assert set(query.modalities.tolist()) == {1}
        g = protocol.trial_gallery(trial)
        assert sorted(zip(g.paths, g.pids.tolist(), g.cams.tolist())) == _llcm_test_images(llcm, "vis")


def test_llcm_vis2ir_metrics_equal_the_official_role_swap(llcm):
    """Per trial: distmat = sampled NIR x all VIS, scored with the NIR labels and cameras as the
    query side, one query at a time (tests.test_evaluation.reference_metrics), then averaged."""
    from harness.evaluation import evaluate_trials
    from tests.test_evaluation import reference_metrics

    trials = 4
    protocol = load_llcm(llcm.root, trials=trials).protocols["vis2ir"]
    rng = np.random.default_rng(7)
    every_path = sorted(set(protocol.query.paths) | set(protocol.gallery.paths))
    vectors = rng.normal(size=(len(every_path), 3))  # few dimensions: real rank errors happen
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    feature = dict(zip(every_path, vectors))

    def label(path):  # .../test_<modality>/cam<K>/<id>/<file>
        parts = Path(path).parts
        return int(parts[-2]), int(parts[-3][3:])

    vis_all = [
        os.path.join(root, name)
        for pid in sorted(LLCM_TEST_IDS)
        for cam in range(1, 10)
        if os.path.isdir(root := os.path.join(str(llcm.root), "test_vis", f"cam{cam}", f"{pid:04d}"))
        for name in sorted(os.listdir(root))
    ]
    expected = []
    for trial in range(trials):
        nir_drawn = spec_llcm_gallery(llcm.root, "nir", trial)
        similarity = np.array([[feature[n] @ feature[v] for v in vis_all] for n in nir_drawn])
        q_ids, q_cams = zip(*(label(n) for n in nir_drawn))
        g_ids, g_cams = zip(*(label(v) for v in vis_all))
        expected.append(reference_metrics(-similarity, q_ids, g_ids, q_cams, g_cams, "llcm"))

    q_feats = np.stack([feature[p] for p in protocol.query.paths]).astype(np.float32)
    g_feats = np.stack([feature[p] for p in protocol.gallery.paths]).astype(np.float32)
    result = evaluate_trials(
        q_feats, g_feats, protocol.query.pids, protocol.gallery.pids, protocol.query.cams + 1,
        protocol.gallery.cams + 1, protocol.trial_masks, protocol="llcm", query_masks=protocol.query_masks,
    )
    for got, want in zip(result["trials"], expected):
        np.testing.assert_allclose(got["cmc"], want["cmc"], atol=1e-6)
        assert got["mAP"] == pytest.approx(want["mAP"], abs=1e-6)
        assert got["mINP"] == pytest.approx(want["mINP"], abs=1e-6)
        assert got["num_valid_queries"] == want["num_valid_queries"]
    assert result["mAP_mean"] == pytest.approx(np.mean([w["mAP"] for w in expected]), abs=1e-6)


def test_llcm_training_camera_parsing(tmp_path):
    root = tmp_path / "x_c05_y" / "cam7"
    assert training_camera(str(root / "nir" / "0001" / "0001_c03_s1_f2_nir.jpg"), root) == 3
    assert training_camera(str(root / "nir" / "cam4" / "0001" / "0001.jpg"), root) == 4
    assert training_camera(str(root / "nir" / "0001" / "0001.jpg"), root) is None


def test_llcm_errors(tmp_path):
    tree = make_llcm_tree(tmp_path / "LLCM")
    (tree.root / "idx" / "train_nir.txt").write_text("nir/0003/x.jpg 3\n")
    with pytest.raises(HarnessError, match=r"train_nir\.txt:1: image .*x\.jpg does not exist"):
        load_llcm(tree.root)
    (tree.root / "nir" / "0003" / "x.jpg").write_bytes((tree.root / tree.train["nir"][0][0]).read_bytes())
    with pytest.raises(HarnessError, match=r"x\.jpg: cannot tell the camera"):
        load_llcm(tree.root)
    (tree.root / "idx" / "train_nir.txt").write_text(
        "".join(f"{path} {label}\n" for path, label, _ in tree.train["nir"]))
    (tree.root / "idx" / "test_id.txt").write_text("23,20,21,99")
    with pytest.raises(HarnessError, match="identity 99"):
        load_llcm(tree.root)


# validation split ----------------------------------------------------------------------------


def test_validation_protocol_on_sysu(sysu_bundle):
    train = sysu_bundle.train
    remaining, protocol = validation_protocol(train, 2, seed=3, metric_protocol="sysu", trials=4)
    _remaining_again, protocol_again = validation_protocol(train, 2, seed=3, metric_protocol="sysu", trials=4)
    assert list(protocol.gallery.paths) == list(protocol_again.gallery.paths)
    assert (protocol.trial_masks == protocol_again.trial_masks).all()

    held = sorted(set(protocol.query.pids.tolist()))
    assert len(held) == 2
    # held-out ids are drawn among ids with both modalities
    for label in held:
        mods = set(train.modalities[train.pids == label].tolist())
        assert mods == {0, 1}
    # remaining: other ids, relabelled 0..K'-1 in ascending order of the old labels
    kept = sorted(set(range(4)) - set(held))
    old_of_new = {new: old for new, old in enumerate(kept)}
    assert sorted(set(remaining.pids.tolist())) == [0, 1]
    by_path = dict(zip(train.paths, train.pids.tolist()))
    assert all(by_path[p] == old_of_new[n] for p, n in zip(remaining.paths, remaining.pids.tolist()))
    assert len(remaining) + int(np.isin(train.pids, held).sum()) == len(train)
    # query: every infrared image of the held-out ids
    labels = list(zip(train.paths, train.pids.tolist(), train.cams.tolist(), train.modalities.tolist()))
    assert set(protocol.query.paths) == {p for p, label, _, m in labels if label in held and m == 1}
    # gallery: exactly one visible image per (held id, visible camera) in each trial
    pairs = {(label, c) for _, label, c, m in labels if label in held and m == 0}
    for trial in range(4):
        g = protocol.trial_gallery(trial)
        assert sorted(zip(g.pids.tolist(), g.cams.tolist())) == sorted(pairs)
        assert set(g.modalities.tolist()) == {0}
    assert protocol.metric_protocol == "sysu" and protocol.name == "val"


def test_validation_protocol_rules_and_errors(regdb):
    train = load_regdb(regdb.root, trial=1).train
    remaining, protocol = validation_protocol(train, 1, seed=0, metric_protocol="regdb")
    assert protocol.metric_protocol == "regdb" and protocol.num_trials == 1
    assert sorted(set(remaining.pids.tolist())) == [0, 1]
    _, forced = validation_protocol(train, 1, seed=0, metric_protocol="llcm")
    assert forced.metric_protocol == "llcm"
    for bad in (0, 3, 2.0):
        with pytest.raises(HarnessError, match="num_ids"):
            validation_protocol(train, bad, seed=0, metric_protocol="regdb")
    one_modality = ImageSplit(train.paths, train.pids, train.cams, np.zeros(len(train), np.int64))
    with pytest.raises(HarnessError, match="both visible and infrared"):
        validation_protocol(one_modality, 1, seed=0, metric_protocol="regdb")
    held_by_seed = {int(validation_protocol(train, 1, seed=s, metric_protocol="regdb")[1].query.pids[0])
                    for s in range(10)}
    assert len(held_by_seed) > 1  # the seed picks the held-out ids


def test_image_split_validation():
    with pytest.raises(HarnessError, match="same length"):
        ImageSplit(("a", "b"), np.array([1]), np.array([0, 0]), np.array([0, 0]))
    split = ImageSplit(("a", "b", "c"), [5, 6, 7], [0, 1, 2], [0, 1, 1])
    sub = split.subset([2, 0])
    assert sub.paths == ("c", "a") and sub.pids.tolist() == [7, 5] and len(sub) == 2
    assert split.subset(np.array([False, True, False])).paths == ("b",)


def test_sysu_mode_without_gallery_images_is_an_error(tmp_path):
    folders = {(1, 1): 1, (1, 3): 1, (5, 4): 2, (5, 3): 1}
    root = tmp_path / "s"
    make_sysu_tree(root, folders, {"train": [1], "val": [1], "test": [5]})
    assert len(load_sysu(root, modes=("all",)).protocols["all-single"].trial_gallery(0)) == 1
    with pytest.raises(HarnessError, match="indoor-single.*no gallery images"):
        load_sysu(root, modes=("indoor",))
