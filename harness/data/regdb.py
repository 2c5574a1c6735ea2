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
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from harness.data.layout import absolute_root, loop_note, read_labelled_list
from harness.data.registry import Dataset, register_dataset
from harness.data.report import CheckReport, count_images, verify_images
from harness.data.splits import (
    DataProblem,
    DatasetBundle,
    EvalProtocol,
    ImageSplit,
    Sensor,
    report_problem,
)
from harness.data.synthetic.layouts import (
    identity_order,
    prepare_output,
    write_identity_images,
)
from harness.errors import InputError, check_int

if TYPE_CHECKING:
    from harness.config import DataConfig
    from harness.data.synthetic.spec import SynthSpec

REGDB_TRIALS = range(1, 11)
REGDB_SENSORS = {"visible": Sensor(1, False, 1), "thermal": Sensor(2, True, 1)}  # one co-located dual camera
REGDB_MODALITIES = {name: sensor.modality for name, sensor in REGDB_SENSORS.items()}
REGDB_FOLDERS = {"visible": "Visible", "thermal": "Thermal"}
REGDB_DIRECTIONS = {"v2t": ("visible", "thermal"), "t2v": ("thermal", "visible")}


def index_file(root: Path, part: str, modality: str, trial: int) -> Path:
    return root / "idx" / f"{part}_{modality}_{trial}.txt"


def check_trial(trial: object) -> int:
    return check_int(trial, "RegDB trial", minimum=min(REGDB_TRIALS), maximum=max(REGDB_TRIALS))


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
        report_problem(problems, base, f"RegDB root folder does not exist{loop_note(base)}")
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
    sensor = REGDB_SENSORS[modality]
    return ImageSplit.from_records(
        [(path, label if labels is None else labels[label], sensor.number - 1, sensor.modality)
         for path, label in entries]
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
        raise InputError(f"RegDB direction {direction!r}: expected one of {', '.join(REGDB_DIRECTIONS)}")
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
        num_cameras=len(REGDB_SENSORS),
        protocols={direction: regdb_protocol(scan, direction) for direction in REGDB_DIRECTIONS},
        validation=None,
    )


@register_dataset
class RegDB(Dataset):
    name = "regdb"
    title = "RegDB"
    sensors = tuple(REGDB_SENSORS.values())
    synthetic_code = 2
    config_keys: ClassVar[dict[str, str]] = {"trial": "the split 1..10 (each split trains its own model)"}
    split_options: ClassVar[dict[str, str]] = {"trial": "split 1..10 (default 1)",
                                               "direction": "v2t | t2v (default v2t)"}
    splits = ("Ten splits from idx/{train,test}_{visible,thermal}_<t>.txt; a split trains on its train "
              "lists (labels relabelled 0..K-1) and tests v2t and t2v on all of its test images.")
    validation_metric = "regdb"

    def load(self, root: Path, cfg: DataConfig) -> DatasetBundle:
        return load_regdb(root, trial=cfg.trial)

    def check(self, report: CheckReport) -> None:
        every_image: list[str] = []
        for trial in REGDB_TRIALS:
            scan = scan_regdb_trial(report.root, trial, report.problems)
            if scan is None:
                return
            for part in ("train", "test"):
                images = [
                    (label, REGDB_FOLDERS[modality], REGDB_MODALITIES[modality])
                    for modality in REGDB_SENSORS
                    for _, label in scan.entries[(part, modality)]
                ]
                report.counts[f"trial {trial} {part}"] = count_images(images)
                every_image.extend(path for modality in REGDB_SENSORS for path, _ in scan.entries[(part, modality)])
        verify_images(every_image, report.problems)

    def split_protocol(self, root: Path, options: dict[str, object]) -> tuple[EvalProtocol, int, int]:
        trial = check_trial(1 if options["trial"] is None else options["trial"])
        direction = "v2t" if options["direction"] is None else options["direction"]
        if direction not in REGDB_DIRECTIONS:
            raise InputError(f"RegDB direction {direction!r}: expected one of {', '.join(REGDB_DIRECTIONS)}")
        scan = scan_regdb_trial(root, trial)
        assert scan is not None  # a missing root raised already
        return regdb_protocol(scan, direction), 0, trial

    def write_synthetic(self, out: Path, spec: SynthSpec) -> Path:
        """Visible/<id>/*.bmp, Thermal/<id>/*.bmp (single channel) and idx/*.txt for the ten splits.

        Every identity has one visible and one thermal camera (no missing folders); split t is a
        fresh random half of the ids for training; index labels are 0..K-1 in ascending identity
        order within each file's identity set.
        """
        if spec.num_identities < 4:
            raise InputError(f"SynthSpec.num_identities={spec.num_identities}: RegDB needs >= 4 (2 train + 2 test)")
        out = prepare_output(out)
        for pid in range(1, spec.num_identities + 1):
            for modality, camera in REGDB_SENSORS.items():
                folder = out / REGDB_FOLDERS[modality] / str(pid)
                folder.mkdir(parents=True)
                names = [_synthetic_file_name(pid, camera.infrared, k) for k in range(spec.images_per_camera)]
                write_identity_images(folder, spec, self, pid, camera, names)
        (out / "idx").mkdir()
        half = spec.num_identities // 2
        for trial in REGDB_TRIALS:
            order = identity_order(spec, self, trial)
            for part, ids in (("train", sorted(order[:half])), ("test", sorted(order[half:]))):
                for modality, camera in REGDB_SENSORS.items():
                    lines = [
                        f"{REGDB_FOLDERS[modality]}/{pid}/{_synthetic_file_name(pid, camera.infrared, k)} {label}\n"
                        for label, pid in enumerate(ids)
                        for k in range(spec.images_per_camera)
                    ]
                    index_file(out, part, modality, trial).write_text("".join(lines))
        return out


def _synthetic_file_name(pid: int, infrared: bool, k: int) -> str:
    return f"{'t' if infrared else 'v'}_{pid:05d}_{k + 1:02d}.bmp"
