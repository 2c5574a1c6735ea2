"""SYSU-MM01: the real on-disk layout and its published test protocol.

Layout: ``cam1..cam6/<identity>/<image>`` and ``exp/{train,val,test}_id.txt`` (comma-separated
integers). Camera and identity come from the folder names (``camN`` / an integer folder name),
never from character offsets of the path, so any root path works. A missing (identity, camera)
folder is normal.

Every camera folder cam1..cam6 must exist and hold identity folders (a missing or empty one, e.g.
a whole infrared camera, is a problem for the loader and the check alike); identity folders are
read as harness.data.layout describes.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from harness.data.layout import (
    CameraTree,
    absolute_root,
    camera_pool,
    loop_note,
    read_id_list,
    require_cameras,
    scan_camera_tree,
)
from harness.data.registry import Dataset, register_dataset, split_draw_index
from harness.data.report import CheckReport, count_images, verify_images
from harness.data.splits import (
    MODALITY_INFRARED,
    MODALITY_VISIBLE,
    DataProblem,
    DatasetBundle,
    EvalProtocol,
    ImageSplit,
    Sensor,
    report_problem,
    sampled_gallery_protocol,
)
from harness.data.synthetic.layouts import (
    id_line,
    identity_order,
    prepare_output,
    present_cameras,
    test_count,
    write_identity_images,
)
from harness.errors import InputError, check_int

if TYPE_CHECKING:
    from harness.config import DataConfig
    from harness.data.synthetic.spec import SynthSpec

SYSU_SENSORS = (
    Sensor(1, False, 1),
    Sensor(2, False, 2),
    Sensor(3, True, 2),  # infrared, in the same indoor room as cam2
    Sensor(4, False, 4),
    Sensor(5, False, 5),
    Sensor(6, True, 6),  # infrared, outdoor
)
SYSU_CAMERAS = tuple(sensor.number for sensor in SYSU_SENSORS)
SYSU_INFRARED_CAMERAS = frozenset(sensor.number for sensor in SYSU_SENSORS if sensor.infrared)
SYSU_QUERY_CAMERAS = (3, 6)
SYSU_GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SYSU_SHOTS = {1: "single", 10: "multi"}
SYSU_ID_FILES = {"train": "train_id.txt", "val": "val_id.txt", "test": "test_id.txt"}


def sysu_modality(cam: int) -> int:
    return MODALITY_INFRARED if cam in SYSU_INFRARED_CAMERAS else MODALITY_VISIBLE


@dataclass
class SysuLayout:
    root: Path
    ids: dict[str, list[int]]  # "train" / "val" / "test" -> sorted ids
    tree: CameraTree


def _describe_camera(cam: int) -> str:
    kind = "infrared" if cam in SYSU_INFRARED_CAMERAS else "visible"
    return f"cam{cam} is a {kind} camera; SYSU-MM01 has cam1..cam6, infrared cam3 and cam6"


def scan_sysu(root: str | os.PathLike[str], problems: list[DataProblem] | None = None) -> SysuLayout | None:
    """Read the id files and index the camera folders; None when the root itself is missing."""
    base = absolute_root(root)
    if not base.is_dir():
        report_problem(problems, base, f"SYSU-MM01 root folder does not exist{loop_note(base)}")
        return None
    ids = {split: read_id_list(base / "exp" / name, problems) for split, name in SYSU_ID_FILES.items()}
    tree = scan_camera_tree(base, SYSU_CAMERAS, problems)
    if not tree.folders:
        report_problem(problems, base, "no camera folders cam1..cam6 found")
    else:
        require_cameras(tree, SYSU_CAMERAS, _describe_camera, problems)
    present = tree.identities()
    for split, name in SYSU_ID_FILES.items():
        for pid in ids[split]:
            if pid not in present:
                report_problem(
                    problems,
                    base / "exp" / name,
                    f"identity {pid} is listed but has no image in any camera folder",
                )
    overlap = sorted(set(ids["test"]) & (set(ids["train"]) | set(ids["val"])))
    if overlap:
        report_problem(
            problems,
            base / "exp" / SYSU_ID_FILES["test"],
            f"test ids also listed for training: {overlap[:10]}",
        )
    return SysuLayout(base, ids, tree)


def sysu_train_split(layout: SysuLayout) -> tuple[ImageSplit, int]:
    train_ids = sorted(set(layout.ids["train"]) | set(layout.ids["val"]))
    labels = {pid: label for label, pid in enumerate(train_ids)}
    modality = {cam: sysu_modality(cam) for cam in SYSU_CAMERAS}
    split, _ = camera_pool(layout.tree, train_ids, SYSU_CAMERAS, modality, labels)
    return split, len(train_ids)


def sysu_protocol(layout: SysuLayout, mode: str, shots: int, trials: int) -> EvalProtocol:
    """The published SYSU-MM01 test protocol for one search mode and shot count.

    Query: every test-identity image of cam3 and cam6. Gallery of trial t (t = 0..trials-1):
    with `random.Random(t)` (the same sequence as `random.seed(t)`), walk test ids ascending and,
    within each, the mode's gallery cameras in order (all: cam1, cam2, cam4, cam5; indoor: cam1,
    cam2); for each existing folder take `rng.choice(sorted(files))` (single-shot) or
    `rng.sample(sorted(files), min(10, len(files)))` (multi-shot: our own seeded draw, since the
    public code has none). A missing folder consumes no draw.
    """
    if mode not in SYSU_GALLERY_CAMERAS:
        raise InputError(f"SYSU-MM01 mode {mode!r}: expected one of {', '.join(SYSU_GALLERY_CAMERAS)}")
    if shots not in SYSU_SHOTS:
        raise InputError(f"SYSU-MM01 shots {shots!r}: expected 1 (single-shot) or 10 (multi-shot)")
    test_ids = layout.ids["test"]
    modality = {cam: sysu_modality(cam) for cam in SYSU_CAMERAS}
    query, _ = camera_pool(layout.tree, test_ids, SYSU_QUERY_CAMERAS, modality)
    gallery_cams = SYSU_GALLERY_CAMERAS[mode]
    pool, candidates = camera_pool(layout.tree, test_ids, gallery_cams, modality)
    return sampled_gallery_protocol(
        name=f"{mode}-{SYSU_SHOTS[shots]}",
        metric_protocol="sysu",
        query=query,
        pool=pool,
        candidates=candidates,
        ids=test_ids,
        cams=gallery_cams,
        trials=trials,
        shots=shots,
        rng_for_trial=random.Random,
    )


def load_sysu(
    root: str | os.PathLike[str],
    *,
    modes: Sequence[str] = ("all", "indoor"),
    shots: Sequence[int] = (1,),
    trials: int = 10,
) -> DatasetBundle:
    """SYSU-MM01: train on train+val ids (relabelled 0..K-1 ascending), test on the protocols
    ``f"{mode}-{single|multi}"`` for each mode x shots (see sysu_protocol)."""
    trials = check_int(trials, "SYSU-MM01 trials", minimum=1)
    if isinstance(modes, str) or isinstance(shots, (int, str)):
        raise InputError("SYSU-MM01 modes and shots: expected sequences, e.g. ('all',) and (1,)")
    for mode in modes:
        if mode not in SYSU_GALLERY_CAMERAS:
            raise InputError(f"SYSU-MM01 mode {mode!r}: expected one of {', '.join(SYSU_GALLERY_CAMERAS)}")
    for shot in shots:
        if shot not in SYSU_SHOTS:
            raise InputError(f"SYSU-MM01 shots {shot!r}: expected 1 (single-shot) or 10 (multi-shot)")
    layout = scan_sysu(root)
    assert layout is not None  # a missing root raised already
    train, num_classes = sysu_train_split(layout)
    protocols = {}
    for mode in modes:
        for shot in shots:
            protocol = sysu_protocol(layout, mode, shot, trials)
            protocols[protocol.name] = protocol
    return DatasetBundle(
        name="sysu",
        train=train,
        num_classes=num_classes,
        num_cameras=len(SYSU_CAMERAS),
        protocols=protocols,
        validation=None,
    )


SYNTHETIC_VAL_FRACTION = 0.25
"""Synthetic trees: val ids as a share of the non-test ids, as SYSU's 99 val of 395 train+val."""


@register_dataset
class SysuMM01(Dataset):
    name = "sysu"
    title = "SYSU-MM01"
    aliases = ("sysu-mm01", "sysu_mm01", "sysumm01")
    sensors = SYSU_SENSORS
    synthetic_code = 1
    config_keys: ClassVar[dict[str, str]] = {
        "modes": "search modes evaluated: all (gallery cam1, cam2, cam4, cam5) and/or indoor (cam1, cam2)",
        "shots": "gallery images per (id, camera): 1 single-shot, 10 multi-shot",
        "gallery_trials": "seeded gallery draws per protocol (random.Random(t), t = 0..trials-1)",
    }
    split_options: ClassVar[dict[str, str]] = {
        "mode": "all | indoor (default all)",
        "shots": "1 | 10 (default 1)",
        "trial": "gallery draw t >= 0 (default 0)",
    }
    splits = ("Train on the ids of exp/train_id.txt and exp/val_id.txt (relabelled 0..K-1); test ids "
              "exp/test_id.txt; queries every cam3/cam6 test image; protocols <mode>-<single|multi>.")
    validation_metric = "sysu"

    def load(self, root: Path, cfg: DataConfig) -> DatasetBundle:
        return load_sysu(root, modes=tuple(cfg.modes), shots=tuple(cfg.shots), trials=cfg.gallery_trials)

    def check(self, report: CheckReport) -> None:
        layout = scan_sysu(report.root, report.problems)
        if layout is None:
            return
        for split in SYSU_ID_FILES:
            report.counts[split] = count_images(
                (pid, f"cam{cam}", sysu_modality(cam))
                for pid in layout.ids[split]
                for cam in SYSU_CAMERAS
                if (folder := layout.tree.get(cam, pid)) is not None
                for _ in folder.files
            )
        every_image = [
            path for by_pid in layout.tree.folders.values()
            for folder in by_pid.values() for path in folder.file_paths()
        ]
        verify_images(every_image, report.problems)

    def split_protocol(self, root: Path, options: dict[str, object]) -> tuple[EvalProtocol, int, int]:
        mode = "all" if options["mode"] is None else options["mode"]
        shots = 1 if options["shots"] is None else options["shots"]
        draw = split_draw_index(options["trial"])
        if mode not in SYSU_GALLERY_CAMERAS:
            raise InputError(f"SYSU-MM01 mode {mode!r}: expected one of {', '.join(SYSU_GALLERY_CAMERAS)}")
        if shots not in SYSU_SHOTS:
            raise InputError(f"SYSU-MM01 shots {shots!r}: expected 1 (single-shot) or 10 (multi-shot)")
        layout = scan_sysu(root)
        assert layout is not None  # a missing root raised already
        return sysu_protocol(layout, mode, shots, trials=draw + 1), draw, draw

    def write_synthetic(self, out: Path, spec: SynthSpec) -> Path:
        """cam1..cam6/%04d/%04d.jpg (cam3, cam6 single-channel infrared) and exp/*_id.txt."""
        train, val, test = self.identity_split(spec)
        out = prepare_output(out)
        for pid, cameras in present_cameras(spec, self).items():
            for camera in cameras:
                folder = out / f"cam{camera.number}" / f"{pid:04d}"
                folder.mkdir(parents=True)
                names = [f"{k + 1:04d}.jpg" for k in range(spec.images_per_camera)]
                write_identity_images(folder, spec, self, pid, camera, names)
        (out / "exp").mkdir()
        for name, ids in (("train_id", train), ("val_id", val), ("test_id", test)):
            (out / "exp" / f"{name}.txt").write_text(id_line(ids))
        return out

    def identity_split(self, spec: SynthSpec) -> tuple[list[int], list[int], list[int]]:
        """Synthetic (train, val, test) identity lists, each ascending; ids are 1..num_identities."""
        n_test = test_count(spec, self)
        n_val = max(1, round((spec.num_identities - n_test) * SYNTHETIC_VAL_FRACTION))
        n_train = spec.num_identities - n_test - n_val
        if n_train < 2:
            raise InputError(
                f"SynthSpec: num_identities={spec.num_identities} leaves {n_train} SYSU train identities "
                f"after {n_test} test and {n_val} val; expected >= 2 (raise num_identities or lower test_fraction)"
            )
        order = identity_order(spec, self)
        test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
        return sorted(train), sorted(val), sorted(test)
