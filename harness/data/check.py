"""Dataset tree inspection behind ``vireid data check`` and ``vireid data split``.

check_dataset walks a tree with the loaders' own scanning code in collecting mode, so it reports
every problem (with the file or folder concerned) instead of stopping at the first, and opens
every image. describe_split lists the exact query and gallery of one evaluation trial, computed
by the same protocol functions the loaders use.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from harness.data.images import decode_image
from harness.data.layout import absolute_root
from harness.data.llcm import LLCM_DIRECTIONS, LLCM_FOLDERS, llcm_protocol, scan_llcm
from harness.data.regdb import (
    REGDB_DIRECTIONS,
    REGDB_TRIALS,
    check_trial,
    regdb_protocol,
    scan_regdb_trial,
)
from harness.data.splits import MODALITY_INFRARED, DataProblem, EvalProtocol, ImageSplit
from harness.data.sysu import (
    SYSU_CAMERAS,
    SYSU_GALLERY_CAMERAS,
    SYSU_ID_FILES,
    SYSU_SHOTS,
    scan_sysu,
    sysu_modality,
    sysu_protocol,
)
from harness.errors import HarnessError

DATASET_NAMES = {
    "sysu": "sysu",
    "sysu-mm01": "sysu",
    "sysu_mm01": "sysu",
    "sysumm01": "sysu",
    "regdb": "regdb",
    "llcm": "llcm",
}
_TITLES = {"sysu": "SYSU-MM01", "regdb": "RegDB", "llcm": "LLCM"}
_MODALITY_NAMES = {0: "visible", 1: "infrared"}


def canonical_dataset(dataset: str) -> str:
    name = DATASET_NAMES.get(str(dataset).strip().lower())
    if name is None:
        raise HarnessError(f"dataset {dataset!r}: expected one of sysu, regdb, llcm")
    return name


@dataclass
class SplitCounts:
    identities: int
    images: int
    per_camera: dict[str, int]
    per_modality: dict[str, int]


@dataclass
class CheckReport:
    dataset: str
    root: str
    counts: dict[str, SplitCounts] = field(default_factory=dict)
    problems: list[DataProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        title = _TITLES.get(self.dataset, self.dataset)
        status = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"{title} at {self.root}: {status}"]
        if self.counts:
            width = max(len(name) for name in self.counts)
            lines.append(f"  {'split'.ljust(width)}  {'ids':>6}  {'images':>7}  per camera | per modality")
            for name, c in self.counts.items():
                cams = " ".join(f"{cam}={n}" for cam, n in c.per_camera.items()) or "-"
                modalities = " ".join(f"{m}={n}" for m, n in c.per_modality.items()) or "-"
                lines.append(
                    f"  {name.ljust(width)}  {c.identities:>6}  {c.images:>7}  {cams} | {modalities}"
                )
        if self.problems:
            lines.append("Problems:")
            lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)


def _counts(images: Iterable[tuple[int, str, int]]) -> SplitCounts:
    """From (pid, camera name, modality) per image."""
    ids: set[int] = set()
    cams: Counter[str] = Counter()
    modalities: Counter[str] = Counter()
    total = 0
    for pid, cam, modality in images:
        ids.add(pid)
        cams[cam] += 1
        modalities[_MODALITY_NAMES[modality]] += 1
        total += 1
    return SplitCounts(
        identities=len(ids),
        images=total,
        per_camera=dict(sorted(cams.items())),
        per_modality=dict(sorted(modalities.items())),
    )


def _image_problem(path: str) -> str | None:
    """What training's decoder (harness.data.images.decode_image) would refuse in this file."""
    try:
        decode_image(path, 2, 2)
    except HarnessError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the finding itself
        return f"cannot decode image: {exc}"
    return None


def _verify_images(paths: Iterable[str], problems: list[DataProblem]) -> None:
    unique = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
        for path, message in zip(unique, pool.map(_image_problem, unique)):
            if message is not None:
                problems.append(DataProblem(path, message))


def _check_sysu(report: CheckReport) -> None:
    layout = scan_sysu(report.root, report.problems)
    if layout is None:
        return
    for split in SYSU_ID_FILES:
        report.counts[split] = _counts(
            (pid, f"cam{cam}", sysu_modality(cam))
            for pid in layout.ids[split]
            for cam in SYSU_CAMERAS
            if (folder := layout.tree.get(cam, pid)) is not None
            for _ in folder.files
        )
    every_image = []
    for by_pid in layout.tree.folders.values():
        for folder in by_pid.values():
            every_image.extend(folder.file_paths())
    _verify_images(every_image, report.problems)


def _check_regdb(report: CheckReport) -> None:
    every_image: list[str] = []
    for trial in REGDB_TRIALS:
        scan = scan_regdb_trial(report.root, trial, report.problems)
        if scan is None:
            return
        for part in ("train", "test"):
            visible = scan.entries[(part, "visible")]
            thermal = scan.entries[(part, "thermal")]
            report.counts[f"trial {trial} {part}"] = _counts(
                [(label, "Visible", 0) for _, label in visible]
                + [(label, "Thermal", MODALITY_INFRARED) for _, label in thermal]
            )
            every_image.extend(path for path, _ in visible + thermal)
    _verify_images(every_image, report.problems)


def _check_llcm(report: CheckReport) -> None:
    layout = scan_llcm(report.root, report.problems)
    if layout is None:
        return
    report.counts["train"] = _counts(
        (label, f"cam{cam}", LLCM_FOLDERS[modality][1])
        for modality, entries in layout.train.items()
        for _, label, cam in entries
    )
    test_ids = set(layout.test_ids)
    report.counts["test"] = _counts(
        (pid, f"cam{cam}", LLCM_FOLDERS[modality][1])
        for modality, tree in layout.trees.items()
        for cam, by_pid in tree.folders.items()
        for pid, folder in by_pid.items()
        if pid in test_ids
        for _ in folder.files
    )
    every_image = [path for entries in layout.train.values() for path, _, _ in entries]
    for tree in layout.trees.values():
        for by_pid in tree.folders.values():
            for folder in by_pid.values():
                every_image.extend(folder.file_paths())
    _verify_images(every_image, report.problems)


def check_dataset(dataset: str, root: Path) -> CheckReport:
    """Counts per split, camera and modality, and every problem found (never raises for the tree)."""
    name = canonical_dataset(dataset)
    report = CheckReport(dataset=name, root=str(absolute_root(root)))
    {"sysu": _check_sysu, "regdb": _check_regdb, "llcm": _check_llcm}[name](report)
    return report


def _entries(split: ImageSplit) -> list[dict]:
    return [
        {"path": path, "id": pid, "camera": cam + 1, "modality": _MODALITY_NAMES[modality]}
        for path, pid, cam, modality in zip(
            split.paths, split.pids.tolist(), split.cams.tolist(), split.modalities.tolist()
        )
    ]


def _no_option(dataset: str, **options: object) -> None:
    for option, value in options.items():
        if value is not None:
            raise HarnessError(f"{_TITLES[dataset]} has no {option} option (got {value!r})")


def describe_split(
    dataset: str,
    root: Path,
    *,
    mode: str | None = None,
    shots: int | None = None,
    trial: int | None = None,
    direction: str | None = None,
) -> dict:
    """The exact query and gallery of one evaluation trial, as the loaders define them.

    SYSU-MM01: mode "all"/"indoor" (default "all"), shots 1/10 (default 1), trial = gallery draw
    t >= 0 (default 0). RegDB: trial = split 1..10 (default 1), direction "v2t"/"t2v" (default
    "v2t"). LLCM: direction "ir2vis"/"vis2ir" (default "ir2vis"), trial = draw t >= 0 (default 0).
    The lists are those evaluated: for LLCM vis2ir the trial's sampled NIR images are the queries
    and every VIS image the gallery. An option that does not apply to the dataset is an error. Entries carry the image path, the
    original identity id and the on-disk camera number (SYSU camN / LLCM camK; RegDB 1 = Visible,
    2 = Thermal).
    """
    name = canonical_dataset(dataset)
    protocol: EvalProtocol
    if name == "sysu":
        _no_option(name, direction=direction)
        mode = "all" if mode is None else mode
        shots = 1 if shots is None else shots
        draw = _draw_index(trial)
        if mode not in SYSU_GALLERY_CAMERAS:
            raise HarnessError(f"SYSU-MM01 mode {mode!r}: expected one of {', '.join(SYSU_GALLERY_CAMERAS)}")
        if shots not in SYSU_SHOTS:
            raise HarnessError(f"SYSU-MM01 shots {shots!r}: expected 1 (single-shot) or 10 (multi-shot)")
        layout = scan_sysu(root)
        assert layout is not None
        protocol = sysu_protocol(layout, mode, shots, trials=draw + 1)
    elif name == "regdb":
        _no_option(name, mode=mode, shots=shots)
        draw = 0
        trial = check_trial(1 if trial is None else trial)
        direction = "v2t" if direction is None else direction
        if direction not in REGDB_DIRECTIONS:
            raise HarnessError(f"RegDB direction {direction!r}: expected one of {', '.join(REGDB_DIRECTIONS)}")
        scan = scan_regdb_trial(root, trial)
        assert scan is not None
        protocol = regdb_protocol(scan, direction)
    else:
        _no_option(name, mode=mode, shots=shots)
        direction = "ir2vis" if direction is None else direction
        if direction not in LLCM_DIRECTIONS:
            raise HarnessError(f"LLCM direction {direction!r}: expected one of {', '.join(LLCM_DIRECTIONS)}")
        draw = _draw_index(trial)
        layout = scan_llcm(root)
        assert layout is not None
        protocol = llcm_protocol(layout, direction, trials=draw + 1)
    gallery = protocol.trial_gallery(draw)
    return {
        "dataset": name,
        "root": str(absolute_root(root)),
        "protocol": protocol.name,
        "metric_protocol": protocol.metric_protocol,
        "trial": draw if name != "regdb" else trial,
        "query": _entries(protocol.trial_query(draw)),
        "gallery": _entries(gallery),
    }


def _draw_index(trial: int | None) -> int:
    if trial is None:
        return 0
    if isinstance(trial, bool) or not isinstance(trial, int) or trial < 0:
        raise HarnessError(f"trial: expected a gallery draw index >= 0, got {trial!r}")
    return trial
