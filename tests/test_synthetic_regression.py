"""Regression guard: the synthetic generator writes exactly the same trees as before.

The expected digests were recorded from the generator before its modules were reorganised; a
change to any pixel, file name, index line or split of a small tree in any layout shows here.
The file digests also depend on the JPEG/BMP encoders of the installed Pillow; the pixel digest
(rendered arrays, before encoding) depends only on numpy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness.data.registry import get_dataset
from harness.data.synthetic import SynthSpec, render_person

SPEC = SynthSpec(num_identities=8, images_per_camera=2, height=48, width=24, seed=5)

TREE_DIGESTS = {
    "sysu": "198351b7ffe39c060e6e9de24619d03b2b3d73473f1f10961e34425c3c5bb772",
    "regdb": "cb86638157c93acac4ae807e3df06b87d3fe344282596be129f57dfd76cffb95",
    "llcm": "69b2450987153970d6f0dc9b426f48e7e16fbb3679a887f1961fbaf3e40c19f2",
}
PIXEL_DIGEST = "46c0d86f016adf22a29825d66f0f66f6f2e4ca74f3dc23f8104c41dfc6cbca53"


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("layout", ["sysu", "regdb", "llcm"])
def test_tree_bytes_unchanged(layout, tmp_path: Path) -> None:
    assert _tree_digest(get_dataset(layout).write_synthetic(tmp_path / layout, SPEC)) == TREE_DIGESTS[layout]


def test_rendered_pixels_unchanged() -> None:
    digest = hashlib.sha256()
    for layout in ("sysu", "regdb", "llcm"):
        dataset = get_dataset(layout)
        for camera in dataset.sensors:
            for pid in (1, 2):
                for index in (0, 1):
                    digest.update(render_person(SPEC, dataset, pid, camera, index).tobytes())
    assert digest.hexdigest() == PIXEL_DIGEST
