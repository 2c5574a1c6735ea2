"""Helpers every layout writer uses: identity splits, missing camera folders, saving images.

A dataset module's `write_synthetic` (see harness.data.registry) builds its on-disk layout from
these; the folder is written into a temporary sibling by `ensure_synthetic` and renamed into
place whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.synthetic.drawing import render_identity_images
from harness.data.synthetic.spec import (
    JPEG_QUALITY,
    TAG_MISSING,
    TAG_SPLIT,
    SynthCamera,
    SynthLayout,
    SynthSpec,
    seeded_rng,
)
from harness.errors import InputError


def save_image(array: np.ndarray, path: Path) -> None:
    """JPEG (quality JPEG_QUALITY) for .jpg, BMP otherwise; 2-D arrays are single-channel."""
    image = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
    if path.suffix == ".jpg":
        image.save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(path, format="BMP")


def write_identity_images(folder: Path, spec: SynthSpec, layout: SynthLayout, pid: int, camera: SynthCamera,
                          names: list[str]) -> None:
    """The `spec.images_per_camera` images of one (identity, camera), saved under `names`."""
    for image, name in zip(render_identity_images(spec, layout, pid, camera), names):
        save_image(image, folder / name)


def test_count(spec: SynthSpec, layout: SynthLayout) -> int:
    n_test = round(spec.num_identities * spec.test_fraction)
    if n_test < 2:
        raise InputError(
            f"SynthSpec: num_identities={spec.num_identities} x test_fraction={spec.test_fraction} "
            f"gives {n_test} test identities for {layout.name}; expected >= 2"
        )
    return n_test


def identity_order(spec: SynthSpec, layout: SynthLayout, *key: int) -> list[int]:
    """Identities 1..num_identities in a seeded order (per layout and `key`), for splits."""
    order = seeded_rng(spec.seed, TAG_SPLIT, layout.synthetic_code, *key).permutation(
        np.arange(1, spec.num_identities + 1)
    )
    return [int(p) for p in order]


def present_cameras(spec: SynthSpec, layout: SynthLayout) -> dict[int, tuple[SynthCamera, ...]]:
    """Cameras that hold a folder for each identity.

    round(missing_camera_rate x #pairs) (identity, camera) pairs are dropped in a seeded order,
    skipping any drop that would leave an identity without a visible or an infrared camera.
    """
    cameras = layout.sensors
    pids = range(1, spec.num_identities + 1)
    pairs = [(pid, cam) for pid in pids for cam in cameras]
    target = round(spec.missing_camera_rate * len(pairs))
    remaining = {(pid, ir): sum(c.infrared == ir for c in cameras) for pid in pids for ir in (False, True)}
    dropped: set[tuple[int, SynthCamera]] = set()
    order = seeded_rng(spec.seed, TAG_MISSING, layout.synthetic_code).permutation(len(pairs))
    for i in order:
        if len(dropped) >= target:
            break
        pid, cam = pairs[int(i)]
        if remaining[(pid, cam.infrared)] > 1:
            remaining[(pid, cam.infrared)] -= 1
            dropped.add((pid, cam))
    return {pid: tuple(c for c in cameras if (pid, c) not in dropped) for pid in pids}


def prepare_output(out: Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"synthetic output folder {out}: expected a missing or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def id_line(ids: list[int]) -> str:
    return ",".join(str(p) for p in ids) + "\n"
