"""SYSU-MM01: the real on-disk layout and its published test protocol.

Layout: ``cam1..cam6/<identity>/<image>`` and ``exp/{train,val,test}_id.txt`` (comma-separated
integers). Camera and identity come from the folder names (``camN`` / an integer folder name),
never from character offsets of the path, so any root path works. A missing (identity, camera)
folder is normal.

Image files are the regular files of an identity folder whose suffix is an image suffix
(``IMAGE_SUFFIXES``) and whose name does not start with a dot; an empty identity folder holds no
images (and, like a missing one, consumes no random draw).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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
from harness.errors import HarnessError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

SYSU_CAMERAS = (1, 2, 3, 4, 5, 6)
SYSU_INFRARED_CAMERAS = frozenset({3, 6})
SYSU_QUERY_CAMERAS = (3, 6)
SYSU_GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SYSU_SHOTS = {1: "single", 10: "multi"}
SYSU_ID_FILES = {"train": "train_id.txt", "val": "val_id.txt", "test": "test_id.txt"}

_CAMERA_FOLDER = re.compile(r"cam(\d+)")


def absolute_root(root: str | os.PathLike[str]) -> Path:
    """The dataset root as an absolute path (not resolving symlinks, so user paths stay readable)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(root))))


def is_image_file(entry: os.DirEntry[str]) -> bool:
    return (
        not entry.name.startswith(".")
        and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
        and entry.is_file()
    )


def check_positive_int(value: object, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise HarnessError(f"{what}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def read_id_list(path: Path, problems: list[DataProblem] | None = None) -> list[int]:
    """Identity ids of a comma-separated id file (one line; blank lines and a trailing comma are fine)."""
    if not path.is_file():
        report_problem(problems, path, "id file is missing (expected comma-separated integer ids)")
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report_problem(problems, path, f"cannot read id file: {exc}")
        return []
    ids: list[int] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        for token in line.split(","):
            token = token.strip()
            if not token:
                continue
            try:
                ids.append(int(token))
            except ValueError:
                report_problem(
                    problems,
                    f"{path}:{line_number}",
                    f"malformed token {token!r}: expected comma-separated integer ids",
                )
    if not ids:
        report_problem(problems, path, "id file lists no ids (expected comma-separated integer ids)")
    return sorted(set(ids))


@dataclass
class IdentityFolder:
    path: str
    files: list[str]  # file names, sorted

    def file_paths(self) -> list[str]:
        return [os.path.join(self.path, name) for name in self.files]


@dataclass
class CameraTree:
    """``camN/<identity>/`` folders under one base folder: tree[cam][pid] -> IdentityFolder."""

    base: Path
    folders: dict[int, dict[int, IdentityFolder]] = field(default_factory=dict)

    def get(self, cam: int, pid: int) -> IdentityFolder | None:
        return self.folders.get(cam, {}).get(pid)

    def identities(self) -> set[int]:
        return {pid for by_pid in self.folders.values() for pid, f in by_pid.items() if f.files}


def scan_camera_tree(
    base: Path,
    allowed_cams: Iterable[int],
    problems: list[DataProblem] | None = None,
) -> CameraTree:
    """Index ``base/camN/<integer id>/<images>``; other entries of `base` are ignored."""
    allowed = set(allowed_cams)
    tree = CameraTree(base)
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError as exc:
        report_problem(problems, base, f"cannot list folder: {exc}")
        return tree
    for cam_entry in entries:
        match = _CAMERA_FOLDER.fullmatch(cam_entry.name)
        if not match or not cam_entry.is_dir():
            continue
        cam = int(match.group(1))
        if cam not in allowed:
            report_problem(
                problems,
                cam_entry.path,
                f"unexpected camera folder (expected one of "
                f"{', '.join(f'cam{c}' for c in sorted(allowed))})",
            )
            continue
        by_pid: dict[int, IdentityFolder] = {}
        try:
            id_entries = sorted(os.scandir(cam_entry.path), key=lambda e: e.name)
        except OSError as exc:
            report_problem(problems, cam_entry.path, f"cannot list folder: {exc}")
            continue
        for id_entry in id_entries:
            if id_entry.name.startswith(".") or not id_entry.is_dir():
                continue
            try:
                pid = int(id_entry.name)
            except ValueError:
                report_problem(
                    problems, id_entry.path, "identity folder name is not an integer id"
                )
                continue
            if pid in by_pid:
                report_problem(
                    problems,
                    id_entry.path,
                    f"identity {pid} has two folders in {cam_entry.name} "
                    f"(also {by_pid[pid].path})",
                )
                continue
            try:
                files = sorted(e.name for e in os.scandir(id_entry.path) if is_image_file(e))
            except OSError as exc:
                report_problem(problems, id_entry.path, f"cannot list folder: {exc}")
                continue
            by_pid[pid] = IdentityFolder(id_entry.path, files)
        tree.folders[cam] = by_pid
    return tree


def camera_pool(
    tree: CameraTree,
    ids: Sequence[int],
    cams: Sequence[int],
    modality_of_cam: dict[int, int],
    pid_labels: dict[int, int] | None = None,
) -> tuple[ImageSplit, dict[tuple[int, int], list[int]]]:
    """Images of `ids` x `cams` in walk order (id, camera as listed, file name).

    Returns the split (cams 0-based, pids relabelled through `pid_labels` when given) and
    (original pid, on-disk cam) -> the positions of that folder's images, sorted by file name.
    """
    records: list[tuple[str, int, int, int]] = []
    candidates: dict[tuple[int, int], list[int]] = {}
    for pid in ids:
        label = pid if pid_labels is None else pid_labels[pid]
        for cam in cams:
            folder = tree.get(cam, pid)
            if folder is None or not folder.files:
                continue
            start = len(records)
            records.extend((path, label, cam - 1, modality_of_cam[cam]) for path in folder.file_paths())
            candidates[(pid, cam)] = list(range(start, len(records)))
    return ImageSplit.from_records(records), candidates


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
    trials = check_positive_int(trials, "SYSU-MM01 trials")
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
