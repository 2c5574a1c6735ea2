"""LLCM: index-file training split and the two folder-based test directions.

Layout: ``idx/train_vis.txt`` / ``idx/train_nir.txt`` (``<relative path> <label>`` lines),
``idx/test_id.txt`` (comma-separated ids), ``test_vis/camK/<id>/*`` and ``test_nir/camK/<id>/*``.
The nine cameras capture both modalities, so camera labels (K-1) are shared across modalities.

Training images' camera: the ``_cNN_`` part of the file name (``0001_c01_s185535_f7010_vis.jpg``
-> camera 1) when present, otherwise a ``camK`` component of the path relative to the root;
an image with neither is an error.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from harness.data.layout import (
    CameraTree,
    absolute_root,
    camera_pool,
    loop_note,
    read_id_list,
    read_labelled_list,
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
    sampled_query_protocol,
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

LLCM_SENSORS = tuple(Sensor(c, False, c) for c in range(1, 10)) + tuple(
    Sensor(c, True, c) for c in (1, 2, 4, 5, 6, 7, 8, 9)  # the nine cameras; cam3 records no NIR test image
)
LLCM_CAMERAS = tuple(sorted({sensor.number for sensor in LLCM_SENSORS}))
LLCM_FOLDERS = {"vis": ("test_vis", MODALITY_VISIBLE), "nir": ("test_nir", MODALITY_INFRARED)}
# direction -> (modality whose test images are all used, modality sampled once per (id, camera))
LLCM_DIRECTIONS = {"ir2vis": ("nir", "vis"), "vis2ir": ("vis", "nir")}

_FILE_NAME_CAMERA = re.compile(r"_c(\d+)_")
_CAMERA_COMPONENT = re.compile(r"cam(\d+)")


def training_camera(image: str, root: Path) -> int | None:
    """1-based camera of a training image, or None when neither the name nor the path says."""
    match = _FILE_NAME_CAMERA.search(os.path.basename(image))
    if match:
        return int(match.group(1))
    relative = os.path.relpath(image, root)
    for component in reversed(Path(relative).parts[:-1]):
        match = _CAMERA_COMPONENT.fullmatch(component)
        if match:
            return int(match.group(1))
    return None


@dataclass
class LlcmLayout:
    root: Path
    train: dict[str, list[tuple[str, int, int]]]  # "vis"/"nir" -> (path, label, 1-based camera)
    test_ids: list[int]
    trees: dict[str, CameraTree]  # "vis"/"nir"


def scan_llcm(root: str | os.PathLike[str], problems: list[DataProblem] | None = None) -> LlcmLayout | None:
    """Read the index files and index the test folders; None when the root itself is missing."""
    base = absolute_root(root)
    if not base.is_dir():
        report_problem(problems, base, f"LLCM root folder does not exist{loop_note(base)}")
        return None
    train: dict[str, list[tuple[str, int, int]]] = {}
    for modality in LLCM_FOLDERS:
        index = base / "idx" / f"train_{modality}.txt"
        entries = []
        for path, label in read_labelled_list(index, base, problems):
            cam = training_camera(path, base)
            if cam is None:
                report_problem(
                    problems,
                    path,
                    "cannot tell the camera: expected '_cNN_' in the file name or a camK folder",
                )
                continue
            if cam not in LLCM_CAMERAS:
                report_problem(problems, path, f"camera {cam} is out of range 1..{len(LLCM_CAMERAS)}")
                continue
            entries.append((path, label, cam))
        train[modality] = entries
    test_ids = read_id_list(base / "idx" / "test_id.txt", problems)
    trees = {}
    for modality, (folder, _) in LLCM_FOLDERS.items():
        if (base / folder).is_dir():
            trees[modality] = scan_camera_tree(base / folder, LLCM_CAMERAS, problems)
        else:
            report_problem(problems, base / folder, "test folder is missing (expected camK/<id>/ images)")
            trees[modality] = CameraTree(base / folder)
    present = trees["vis"].identities() | trees["nir"].identities()
    for pid in test_ids:
        if pid not in present:
            report_problem(
                problems,
                base / "idx" / "test_id.txt",
                f"identity {pid} is listed but has no image in test_vis or test_nir",
            )
    return LlcmLayout(base, train, test_ids, trees)


def llcm_train_split(layout: LlcmLayout) -> tuple[ImageSplit, int]:
    """Visible then near-infrared training images; labels relabelled 0..K-1 over their union."""
    all_labels = sorted({label for entries in layout.train.values() for _, label, _ in entries})
    labels = {label: i for i, label in enumerate(all_labels)}
    records = [
        (path, labels[label], cam - 1, LLCM_FOLDERS[modality][1])
        for modality in LLCM_FOLDERS
        for path, label, cam in layout.train[modality]
    ]
    return ImageSplit.from_records(records), len(labels)


def llcm_protocol(layout: LlcmLayout, direction: str, trials: int) -> EvalProtocol:
    """One LLCM test direction as the official LLCM test code computes it.

    Both directions draw, per trial t with `random.Random(t)`, one image per (test id, camera)
    of the SAMPLED modality: walk test ids ascending and cameras cam1..cam9, taking
    `rng.choice(sorted(files))` per existing folder (a missing folder consumes no draw, so
    walking cam1..cam9 equals walking only the cameras that modality has). The other modality
    contributes ALL its test images.

    ir2vis: the sampled set is the visible gallery; queries are every near-infrared image.
    vis2ir: the sampled set is near-infrared and, as in the official code (which ranks the
    sampled set against all visible images), it is the QUERY side of trial t (``query_masks``),
    ranked against every visible test image as gallery.
    """
    if direction not in LLCM_DIRECTIONS:
        raise InputError(f"LLCM direction {direction!r}: expected one of {', '.join(LLCM_DIRECTIONS)}")
    full_modality, sampled_modality = LLCM_DIRECTIONS[direction]
    full, _ = camera_pool(
        layout.trees[full_modality],
        layout.test_ids,
        LLCM_CAMERAS,
        dict.fromkeys(LLCM_CAMERAS, LLCM_FOLDERS[full_modality][1]),
    )
    pool, candidates = camera_pool(
        layout.trees[sampled_modality],
        layout.test_ids,
        LLCM_CAMERAS,
        dict.fromkeys(LLCM_CAMERAS, LLCM_FOLDERS[sampled_modality][1]),
    )
    draw = {
        "name": direction,
        "metric_protocol": "llcm",
        "pool": pool,
        "candidates": candidates,
        "ids": layout.test_ids,
        "cams": LLCM_CAMERAS,
        "trials": trials,
        "shots": 1,
        "rng_for_trial": random.Random,
    }
    if direction == "vis2ir":
        return sampled_query_protocol(gallery=full, **draw)
    return sampled_gallery_protocol(query=full, **draw)


def load_llcm(root: str | os.PathLike[str], *, trials: int = 10) -> DatasetBundle:
    """LLCM: training split from the index files, protocols "ir2vis" and "vis2ir"."""
    trials = check_int(trials, "LLCM trials", minimum=1)
    layout = scan_llcm(root)
    assert layout is not None  # a missing root raised already
    train, num_classes = llcm_train_split(layout)
    return DatasetBundle(
        name="llcm",
        train=train,
        num_classes=num_classes,
        num_cameras=len(LLCM_CAMERAS),
        protocols={d: llcm_protocol(layout, d, trials) for d in LLCM_DIRECTIONS},
        validation=None,
    )


@register_dataset
class LLCM(Dataset):
    name = "llcm"
    title = "LLCM"
    sensors = LLCM_SENSORS
    synthetic_code = 3
    config_keys: ClassVar[dict[str, str]] = {
        "gallery_trials": "seeded draws per direction (random.Random(t), t = 0..trials-1)"}
    split_options: ClassVar[dict[str, str]] = {"direction": "ir2vis | vis2ir (default ir2vis)",
                                               "trial": "draw t >= 0 (default 0)"}
    splits = ("Train from idx/train_vis.txt and idx/train_nir.txt (labels relabelled 0..K-1); test ids "
              "idx/test_id.txt under test_vis/ and test_nir/; ir2vis and vis2ir as the official test code.")
    validation_metric = "regdb"

    def load(self, root: Path, cfg: DataConfig) -> DatasetBundle:
        return load_llcm(root, trials=cfg.gallery_trials)

    def check(self, report: CheckReport) -> None:
        layout = scan_llcm(report.root, report.problems)
        if layout is None:
            return
        report.counts["train"] = count_images(
            (label, f"cam{cam}", LLCM_FOLDERS[modality][1])
            for modality, entries in layout.train.items()
            for _, label, cam in entries
        )
        test_ids = set(layout.test_ids)
        report.counts["test"] = count_images(
            (pid, f"cam{cam}", LLCM_FOLDERS[modality][1])
            for modality, tree in layout.trees.items()
            for cam, by_pid in tree.folders.items()
            for pid, folder in by_pid.items()
            if pid in test_ids
            for _ in folder.files
        )
        every_image = [path for entries in layout.train.values() for path, _, _ in entries]
        every_image += [
            path
            for tree in layout.trees.values()
            for by_pid in tree.folders.values()
            for folder in by_pid.values()
            for path in folder.file_paths()
        ]
        verify_images(every_image, report.problems)

    def split_protocol(self, root: Path, options: dict[str, object]) -> tuple[EvalProtocol, int, int]:
        direction = "ir2vis" if options["direction"] is None else options["direction"]
        if direction not in LLCM_DIRECTIONS:
            raise InputError(f"LLCM direction {direction!r}: expected one of {', '.join(LLCM_DIRECTIONS)}")
        draw = split_draw_index(options["trial"])
        layout = scan_llcm(root)
        assert layout is not None  # a missing root raised already
        return llcm_protocol(layout, direction, trials=draw + 1), draw, draw

    def write_synthetic(self, out: Path, spec: SynthSpec) -> Path:
        """vis/ and nir/ training folders with idx/train_{vis,nir}.txt, test_vis/ and test_nir/ camK
        folders and idx/test_id.txt; training index labels are 0..K-1 in ascending identity order."""
        n_test = test_count(spec, self)
        if spec.num_identities - n_test < 2:
            raise InputError(
                f"SynthSpec: num_identities={spec.num_identities} leaves {spec.num_identities - n_test} LLCM train "
                "identities; expected >= 2 (raise num_identities or lower test_fraction)"
            )
        order = identity_order(spec, self)
        train, test = sorted(order[n_test:]), sorted(order[:n_test])
        out = prepare_output(out)
        train_label = {pid: label for label, pid in enumerate(train)}
        index_lines: dict[bool, list[str]] = {False: [], True: []}
        test_set = set(test)
        for pid, cameras in present_cameras(spec, self).items():
            for camera in cameras:
                modality = "nir" if camera.infrared else "vis"
                if pid in test_set:
                    folder = out / f"test_{modality}" / f"cam{camera.number}" / f"{pid:04d}"
                else:
                    folder = out / modality / f"{pid:04d}"
                folder.mkdir(parents=True, exist_ok=True)
                names = [
                    f"{pid:04d}_c{camera.number:02d}_s000000_f{k:04d}_{modality}.jpg"
                    for k in range(spec.images_per_camera)
                ]
                write_identity_images(folder, spec, self, pid, camera, names)
                if pid not in test_set:
                    index_lines[camera.infrared] += [f"{modality}/{pid:04d}/{name} {train_label[pid]}\n"
                                                     for name in names]
        (out / "idx").mkdir()
        (out / "idx" / "train_vis.txt").write_text("".join(index_lines[False]))
        (out / "idx" / "train_nir.txt").write_text("".join(index_lines[True]))
        (out / "idx" / "test_id.txt").write_text(id_line(test))
        return out
