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

from harness.data.splits import (
    MODALITY_INFRARED,
    MODALITY_VISIBLE,
    DataProblem,
    DatasetBundle,
    EvalProtocol,
    ImageSplit,
    report_problem,
)
from harness.data.sysu import absolute_root
from harness.errors import HarnessError

REGDB_TRIALS = range(1, 11)
REGDB_MODALITIES = {"visible": MODALITY_VISIBLE, "thermal": MODALITY_INFRARED}
REGDB_DIRECTIONS = {"v2t": ("visible", "thermal"), "t2v": ("thermal", "visible")}
_EXPECTED_LINE = "expected '<relative image path> <non-negative integer label>'"


def read_labelled_list(
    path: Path, root: Path, problems: list[DataProblem] | None = None
) -> list[tuple[str, int]]:
    """(absolute image path, label) per line of an index file; blank lines are skipped.

    The label is the last whitespace-separated token, so a path may itself contain spaces.
    """
    if not path.is_file():
        report_problem(problems, path, f"index file is missing ({_EXPECTED_LINE} per line)")
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        report_problem(problems, path, f"cannot read index file: {exc}")
        return []
    entries: list[tuple[str, int]] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        tokens = line.strip().rsplit(None, 1)
        if len(tokens) != 2:
            report_problem(problems, where, f"malformed line {line.strip()!r}: {_EXPECTED_LINE}")
            continue
        relative, label_text = tokens
        try:
            label = int(label_text)
        except ValueError:
            report_problem(
                problems, where, f"malformed label {label_text!r} in {line.strip()!r}: {_EXPECTED_LINE}"
            )
            continue
        if label < 0:
            report_problem(problems, where, f"label {label} is out of range: {_EXPECTED_LINE}")
            continue
        image = os.path.normpath(os.path.join(root, relative))
        if not os.path.isfile(image):
            report_problem(problems, where, f"image {image} does not exist")
            continue
        entries.append((image, label))
    if not entries:
        report_problem(problems, path, f"index file lists no images ({_EXPECTED_LINE} per line)")
    return entries


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
    return RegdbTrial(base, trial, entries)


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
