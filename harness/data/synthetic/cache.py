"""The synthetic-tree cache: one complete folder per (layout, spec, generator version).

A tree is generated into a temporary sibling and renamed into place only after its marker file
is written (harness.atomic.atomic_directory), so an interrupted run never leaves a tree that looks
complete; temporaries of a killed generator are removed on the next call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Protocol

from harness.atomic import atomic_directory
from harness.data.cache_root import cache_root
from harness.data.synthetic.spec import GENERATOR_VERSION, SynthLayout, SynthSpec

MARKER_NAME = ".synthetic-complete.json"
log = logging.getLogger(__name__)


class WritableLayout(SynthLayout, Protocol):
    def write_synthetic(self, out: Path, spec: SynthSpec) -> Path: ...


def default_cache_dir() -> Path:
    """The synthetic trees' folder under the cache root ($VIREID_CACHE or ~/.cache/vireid)."""
    return cache_root() / "synthetic"


def cache_key(layout: SynthLayout, spec: SynthSpec) -> str:
    """Folder name that changes with the layout, every spec field and the generator version."""
    payload = json.dumps(
        {"layout": layout.name, "spec": dataclasses.asdict(spec), "version": GENERATOR_VERSION}, sort_keys=True
    )
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return f"{layout.name}-n{spec.num_identities}-s{spec.seed}-{digest}"


def ensure_synthetic(layout: WritableLayout, spec: SynthSpec, cache_dir: Path | None = None) -> Path:
    """Return a complete cached dataset root in `layout`, generating it first when needed."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / cache_key(layout, spec)
    if (final / MARKER_NAME).is_file():
        return final
    log.info("building synthetic data (%s layout, %d identities, %d image(s) per camera) in %s", layout.name,
             spec.num_identities, spec.images_per_camera, final)
    started = time.perf_counter()
    try:
        with atomic_directory(final) as temporary:
            layout.write_synthetic(temporary, spec)
            marker = {
                "layout": layout.name,
                "spec": dataclasses.asdict(spec),
                "generator_version": GENERATOR_VERSION,
                "seconds": round(time.perf_counter() - started, 3),
            }
            (temporary / MARKER_NAME).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
            if final.exists() and not (final / MARKER_NAME).is_file():
                shutil.rmtree(final)  # an incomplete tree from an older or interrupted writer
    except OSError:
        if not (final / MARKER_NAME).is_file():  # a concurrent writer did not finish it either
            raise
    log.info("built the synthetic data in %.0f s", time.perf_counter() - started)
    return final

