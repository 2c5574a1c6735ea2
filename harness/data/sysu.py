"""SYSU-MM01: the real on-disk layout and its published test protocol.

Layout: ``cam1..cam6/<identity>/<image>`` and ``exp/{train,val,test}_id.txt`` (comma-separated
integers). Camera and identity come from the folder names (``camN`` / an integer folder name),
never from character offsets of the path, so any root path works. A missing (identity, camera)
folder is normal.

Every camera folder cam1..cam6 must exist (a missing one, e.g. a whole infrared camera, is a
problem for the loader and the check alike); identity folders are read as harness.data.layout
describes.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.data.layout import CameraTree, absolute_root, camera_pool, read_id_list, scan_camera_tree
from harness.data.splits import (
    MODALITY_INFRARED,
    MODALITY_VISIBLE,
    DataProblem,
    DatasetBundle,
    EvalProtocol,
    ImageSplit,
    report_problem,
    sampled_gallery_protocol,
)
from harness.errors import HarnessError, check_int

SYSU_CAMERAS = (1, 2, 3, 4, 5, 6)
SYSU_INFRARED_CAMERAS = frozenset({3, 6})
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


def scan_sysu(root: str | os.PathLike[str], problems: list[DataProblem] | None = None) -> SysuLayout | None:
    """Read the id files and index the camera folders; None when the root itself is missing."""
    base = absolute_root(root)
    if not base.is_dir():
        report_problem(problems, base, "SYSU-MM01 root folder does not exist")
        return None
    ids = {split: read_id_list(base / "exp" / name, problems) for split, name in SYSU_ID_FILES.items()}
    tree = scan_camera_tree(base, SYSU_CAMERAS, problems)
    if not tree.folders:
        report_problem(problems, base, "no camera folders cam1..cam6 found")
    else:
        for cam in SYSU_CAMERAS:
            if cam not in tree.folders:
                kind = "infrared" if cam in SYSU_INFRARED_CAMERAS else "visible"
                report_problem(
                    problems, base / f"cam{cam}", f"camera folder is missing (cam{cam} is a {kind} camera; "
                    "SYSU-MM01 has cam1..cam6, infrared cam3 and cam6)"
                )
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
        raise HarnessError(f"SYSU-MM01 mode {mode!r}: expected one of {', '.join(SYSU_GALLERY_CAMERAS)}")
    if shots not in SYSU_SHOTS:
        raise HarnessError(f"SYSU-MM01 shots {shots!r}: expected 1 (single-shot) or 10 (multi-shot)")
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
        raise HarnessError("SYSU-MM01 modes and shots: expected sequences, e.g. ('all',) and (1,)")
    for mode in modes:
        if mode not in SYSU_GALLERY_CAMERAS:
            raise HarnessError(f"SYSU-MM01 mode {mode!r}: expected one of {', '.join(SYSU_GALLERY_CAMERAS)}")
    for shot in shots:
        if shot not in SYSU_SHOTS:
            raise HarnessError(f"SYSU-MM01 shots {shot!r}: expected 1 (single-shot) or 10 (multi-shot)")
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
