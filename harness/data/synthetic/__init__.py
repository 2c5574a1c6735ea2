"""Procedural visible-infrared person images, written in the layout of any registered dataset.

Tests and smoke runs need data whose modality gap is real: an identity keeps its body shape,
garment patterns, accessories and garment emissivities in every camera, while garment colour
exists only in the visible cameras. Modules: `spec` (SynthSpec, seeding), `attributes` (identity,
scene and sensor draws), `drawing` (render_person), `layouts` (helpers of the per-dataset
writers), `cache` (ensure_synthetic). Each dataset module writes its own layout
(`Dataset.write_synthetic`, see harness.data.registry).
"""

from harness.data.synthetic.cache import (
    MARKER_NAME,
    cache_key,
    default_cache_dir,
    ensure_synthetic,
)
from harness.data.synthetic.drawing import render_identity_images, render_person
from harness.data.synthetic.layouts import present_cameras
from harness.data.synthetic.spec import (
    GENERATOR_VERSION,
    JPEG_QUALITY,
    SynthCamera,
    SynthLayout,
    SynthSpec,
)

__all__ = [
    "GENERATOR_VERSION",
    "JPEG_QUALITY",
    "MARKER_NAME",
    "SynthCamera",
    "SynthLayout",
    "SynthSpec",
    "cache_key",
    "default_cache_dir",
    "ensure_synthetic",
    "present_cameras",
    "render_identity_images",
    "render_person",
]
