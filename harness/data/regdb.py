"""RegDB: index-file splits (10 trials) and the two cross-modality test directions.

Layout: ``Visible/<id>/<file>``, ``Thermal/<id>/<file>`` and
``idx/{train,test}_{visible,thermal}_{1..10}.txt`` with lines ``<relative path> <integer label>``
(paths relative to the root). Each trial has its own train and test split. Visible images are
camera 0 / modality 0, thermal images camera 1 / modality 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.layout import absolute_root, read_labelled_list
from harness.data.splits import (
    MODALITY_INFRARED,
    MODALITY_VISIBLE,
    DataProblem,
    DatasetBundle,
    EvalProtocol,
    ImageSplit,
    report_problem,
)
from harness.errors import HarnessError

REGDB_TRIALS = range(1, 11)
REGDB_MODALITIES = {"visible": MODALITY_VISIBLE, "thermal": MODALITY_INFRARED}
REGDB_DIRECTIONS = {"v2t": ("visible", "thermal"), "t2v": ("thermal", "visible")}


def index_file(root: Path, part: str, modality: str, trial: int) -> Path:
    return root / "idx" / f"{part}_{modality}_{trial}.txt"


def check_trial(trial: object) -> int:
    if isinstance(trial, bool) or not isinstance(trial, (int, np.integer)) or trial not in REGDB_TRIALS:
        raise HarnessError(f"RegDB trial: expected an integer in 1..10, got {trial!r}")
    return int(trial)


@dataclass
class RegdbTrial:
    """The four index lists of one trial: entries[(part, modality)] -> [(path, label)]."""

    root: Path
    trial: int
    entries: dict[tuple[str, str], list[tuple[str, int]]]


def scan_regdb_trial(
    root: str | os.PathLike[str], trial: int, problems: list[DataProblem] | None = None
) -> RegdbTrial | None:
    """Read one trial's index files; None when the root itself is missing."""
    base = absolute_root(root)
    if not base.is_dir():
        report_problem(problems, base, "RegDB root folder does not exist")
        return None
    entries = {
        (part, modality): read_labelled_list(index_file(base, part, modality, trial), base, problems)
        for part in ("train", "test")
        for modality in REGDB_MODALITIES
    }
    scan = RegdbTrial(base, trial, entries)
    _check_trial_lists(scan, problems)
    return scan


def _check_trial_lists(scan: RegdbTrial, problems: list[DataProblem] | None) -> None:
    """Every training label has images of both modalities; no image is both train and test."""
    train_v = {label for _, label in scan.entries[("train", "visible")]}
    train_t = {label for _, label in scan.entries[("train", "thermal")]}
    for modality, other, only in (("visible", "thermal", train_v - train_t), ("thermal", "visible", train_t - train_v)):
        if only:
            report_problem(
                problems,
                index_file(scan.root, "train", modality, scan.trial),
                f"training labels with no {other} image (not a label of the {other} list): {sorted(only)[:10]}",
            )
    train_paths = {path for key, e in scan.entries.items() if key[0] == "train" for path, _ in e}
    test_paths = {path for key, e in scan.entries.items() if key[0] == "test" for path, _ in e}
    for path in sorted(train_paths & test_paths)[:10]:
        report_problem(problems, path, f"image is in both the train and the test lists of trial {scan.trial}")


def _split(entries: list[tuple[str, int]], modality: str, labels: dict[int, int] | None = None) -> ImageSplit:
    code = REGDB_MODALITIES[modality]
    return ImageSplit.from_records(
        [(path, label if labels is None else labels[label], code, code) for path, label in entries]
    )


def regdb_train_split(scan: RegdbTrial) -> tuple[ImageSplit, int]:
    """Both training lists, labels relabelled 0..K-1 over their union (ascending label)."""
    visible = scan.entries[("train", "visible")]
    thermal = scan.entries[("train", "thermal")]
    labels = {label: i for i, label in enumerate(sorted({lab for _, lab in visible + thermal}))}
    split = _split(visible, "visible", labels)
    other = _split(thermal, "thermal", labels)
    combined = ImageSplit(
        split.paths + other.paths,
        np.concatenate([split.pids, other.pids]),
        np.concatenate([split.cams, other.cams]),
        np.concatenate([split.modalities, other.modalities]),
    )
    return combined, len(labels)


def regdb_protocol(scan: RegdbTrial, direction: str) -> EvalProtocol:
    """All test images of one modality against all of the other (one trial, no sampling)."""
    if direction not in REGDB_DIRECTIONS:
        raise HarnessError(f"RegDB direction {direction!r}: expected one of {', '.join(REGDB_DIRECTIONS)}")
    query_modality, gallery_modality = REGDB_DIRECTIONS[direction]
    gallery = _split(scan.entries[("test", gallery_modality)], gallery_modality)
    return EvalProtocol(
        name=direction,
        metric_protocol="regdb",
        query=_split(scan.entries[("test", query_modality)], query_modality),
        gallery=gallery,
        trial_masks=np.ones((1, len(gallery)), dtype=bool),
    )


def load_regdb(root: str | os.PathLike[str], *, trial: int) -> DatasetBundle:
    """One RegDB trial (1..10): its training split and protocols "v2t" and "t2v"."""
    trial = check_trial(trial)
    scan = scan_regdb_trial(root, trial)
    assert scan is not None  # a missing root raised already
    train, num_classes = regdb_train_split(scan)
    return DatasetBundle(
        name="regdb",
        train=train,
        num_classes=num_classes,
        num_cameras=2,
        protocols={direction: regdb_protocol(scan, direction) for direction in REGDB_DIRECTIONS},
        validation=None,
    )
