"""What `vireid data check` reports: counts per split, camera and modality, and every problem.

Dataset descriptions fill a CheckReport in their `check` method (harness.data.registry) with the
helpers here; images are opened with the loaders' own decoder, so the check refuses exactly the
files training would refuse.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from harness.data.images import decode_image
from harness.data.splits import DataProblem
from harness.errors import HarnessError

MODALITY_NAMES = {0: "visible", 1: "infrared"}


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
    title: str = ""
    counts: dict[str, SplitCounts] = field(default_factory=dict)
    problems: list[DataProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        title = self.title or self.dataset
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


def count_images(images: Iterable[tuple[int, str, int]]) -> SplitCounts:
    """From (pid, camera name, modality) per image."""
    ids: set[int] = set()
    cams: Counter[str] = Counter()
    modalities: Counter[str] = Counter()
    total = 0
    for pid, cam, modality in images:
        ids.add(pid)
        cams[cam] += 1
        modalities[MODALITY_NAMES[modality]] += 1
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


def verify_images(paths: Iterable[str], problems: list[DataProblem]) -> None:
    unique = sorted(set(paths))
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4)) as pool:
        for path, message in zip(unique, pool.map(_image_problem, unique)):
            if message is not None:
                problems.append(DataProblem(path, message))


