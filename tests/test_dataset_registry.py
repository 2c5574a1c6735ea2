"""The dataset registry: one description per dataset, and adding a dataset is one module.

`PairedCameras` below is the worked example of ARCHITECTURE.md ("Adding a dataset"): a complete
dataset in one class, registered with one decorator, that the config, the loaders, `vireid data
check / split / synth` and the synthetic generator then all accept.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from harness.cli import main
from harness.config import TrialConfig
from harness.data import registry
from harness.data.layout import (
    absolute_root,
    camera_pool,
    read_id_list,
    scan_camera_tree,
)
from harness.data.registry import Dataset, get_dataset, load_dataset, register_dataset
from harness.data.report import CheckReport, count_images, verify_images
from harness.data.splits import DatasetBundle, EvalProtocol, Sensor
from harness.data.synthetic.layouts import (
    id_line,
    identity_order,
    prepare_output,
    write_identity_images,
)
from harness.errors import ConfigError


def test_builtin_descriptions_state_the_published_camera_facts():
    assert registry.dataset_names() == ("sysu", "regdb", "llcm")
    sysu, regdb, llcm = (get_dataset(name) for name in ("sysu", "regdb", "llcm"))
    # SYSU-MM01: six cameras, cam3 (indoor) and cam6 (outdoor) infrared
    assert sysu.cameras == (1, 2, 3, 4, 5, 6) and sysu.infrared_cameras() == {3, 6}
    # ... and cam3 shares the indoor room with cam2 (the rule that drops cam2 from cam3's gallery)
    assert sysu.shared_scene_cameras() == {3: (2,)} and regdb.shared_scene_cameras() == {2: (1,)}
    # RegDB: one dual camera, visible + thermal
    assert len(regdb.sensors) == 2 and regdb.infrared_cameras() == {2}
    # LLCM: nine cameras recording both modalities
    assert llcm.cameras == tuple(range(1, 10))
    assert {s.number for s in llcm.sensors if not s.infrared} == set(range(1, 10))
    assert get_dataset("SYSU-MM01") is sysu and get_dataset(" LLCM ") is llcm
    with pytest.raises(ConfigError, match="market.*sysu, regdb, llcm"):
        get_dataset("market")


@pytest.mark.parametrize(("layout", "metric"), [("sysu", "sysu"), ("regdb", "regdb")])
def test_validation_protocol_uses_the_dataset_rule(layout, metric):
    cfg = TrialConfig.from_dict({"data": {"dataset": "synthetic", "val_identities": 2, "synthetic": {
        "layout": layout, "num_identities": 12, "images_per_camera": 1, "height": 32, "width": 16}}})
    bundle = load_dataset(cfg.data, seed=0)
    assert bundle.validation is not None and bundle.validation.metric_protocol == metric


# ---------------------------------------------------------------------------------------------
# Worked example: a dataset in one class
# ---------------------------------------------------------------------------------------------


class PairedCameras(Dataset):
    """``cam1/<id>/*`` visible, ``cam2/<id>/*`` infrared, ``test_id.txt``: infrared queries all
    visible test images; training on the other ids."""

    name = "paired"
    title = "Paired cameras"
    sensors = (Sensor(1, False, 1), Sensor(2, True, 1))
    synthetic_code = 90
    config_keys: ClassVar[dict[str, str]] = {}
    split_options: ClassVar[dict[str, str]] = {}
    splits = "Train on the ids not in test_id.txt; protocol i2v: every infrared test image against every visible one."
    validation_metric = "regdb"

    def _scan(self, root, problems=None):
        base = absolute_root(root)
        tree = scan_camera_tree(base, self.cameras, problems)
        return tree, read_id_list(base / "test_id.txt", problems)

    def load(self, root: Path, cfg) -> DatasetBundle:
        tree, test_ids = self._scan(root)
        modality = {s.number: s.modality for s in self.sensors}
        train_ids = sorted(tree.identities() - set(test_ids))
        labels = {pid: label for label, pid in enumerate(train_ids)}
        train, _ = camera_pool(tree, train_ids, self.cameras, modality, labels)
        return DatasetBundle(self.name, train, len(train_ids), len(self.cameras),
                             {"i2v": self._protocol(tree, test_ids)}, None)

    def _protocol(self, tree, test_ids) -> EvalProtocol:
        query, _ = camera_pool(tree, test_ids, (2,), {2: 1})
        gallery, _ = camera_pool(tree, test_ids, (1,), {1: 0})
        return EvalProtocol("i2v", "regdb", query, gallery, np.ones((1, len(gallery)), dtype=bool))

    def check(self, report: CheckReport) -> None:
        tree, _ = self._scan(report.root, report.problems)
        report.counts["all"] = count_images(
            (pid, f"cam{cam}", int(cam == 2)) for cam, by_pid in tree.folders.items()
            for pid, folder in by_pid.items() for _ in folder.files
        )
        verify_images([p for by_pid in tree.folders.values() for f in by_pid.values() for p in f.file_paths()],
                      report.problems)

    def split_protocol(self, root, options):
        return self._protocol(*self._scan(root)), 0, 0

    def write_synthetic(self, out: Path, spec) -> Path:
        out = prepare_output(out)
        for pid in range(1, spec.num_identities + 1):
            for camera in self.sensors:
                folder = out / f"cam{camera.number}" / f"{pid:04d}"
                folder.mkdir(parents=True)
                write_identity_images(folder, spec, self, pid, camera,
                                      [f"{k:02d}.png" for k in range(spec.images_per_camera)])
        (out / "test_id.txt").write_text(id_line(sorted(identity_order(spec, self)[: spec.num_identities // 2])))
        return out


@pytest.fixture
def paired_registered(monkeypatch):
    monkeypatch.setattr(registry, "DATASETS", dict(registry.DATASETS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    register_dataset(PairedCameras)
    return registry.DATASETS["paired"]


def test_one_registered_class_is_a_whole_dataset(paired_registered, tmp_path, capsys):
    out = tmp_path / "paired"
    assert main(["data", "synth", "--layout", "paired", str(out), "--identities", "6",
                 "--images-per-camera", "2", "--height", "32", "--width", "16"]) == 0
    assert main(["data", "check", "--dataset", "paired", str(out)]) == 0
    assert "Paired cameras" in capsys.readouterr().out
    assert main(["data", "split", "--dataset", "paired", str(out), "--json"]) == 0
    assert main(["data", "split", "--dataset", "paired", str(out), "--mode", "all"]) == 2  # not its option

    cfg = TrialConfig.from_dict({"data": {"dataset": "synthetic", "val_identities": 1, "synthetic": {
        "layout": "paired", "num_identities": 6, "images_per_camera": 2, "height": 32, "width": 16}}})
    bundle = load_dataset(cfg.data, seed=0)
    assert bundle.name == "synthetic-paired" and set(bundle.protocols) == {"i2v"}
    assert bundle.num_classes == 2 and bundle.validation.metric_protocol == "regdb"
    real = TrialConfig.from_dict({"data": {"dataset": "paired", "root": str(out)}})
    assert load_dataset(real.data).protocols["i2v"].query.modalities.tolist() == [1] * 6


def test_names_are_unique(paired_registered):
    class Clash(PairedCameras):
        aliases = ("SYSU-MM01",)

    with pytest.raises(ValueError, match="taken"):
        register_dataset(Clash)
