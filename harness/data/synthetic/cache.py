"""The synthetic-tree cache: one complete folder per (layout, spec, generator version).

A tree is generated into a temporary sibling and renamed into place only after its marker file
is written, so an interrupted run never leaves a tree that looks complete; temporaries older than
six hours (a killed generator) are removed on the next call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Protocol

from harness.data.synthetic.spec import GENERATOR_VERSION, SynthLayout, SynthSpec

MARKER_NAME = ".synthetic-complete.json"
_STALE_TEMP_SECONDS = 6 * 3600


class WritableLayout(SynthLayout, Protocol):
    def write_synthetic(self, out: Path, spec: SynthSpec) -> Path: ...


def default_cache_dir() -> Path:
    """$VIREID_CACHE/synthetic, or ~/.cache/vireid/synthetic."""
    root = os.environ.get("VIREID_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "vireid") / "synthetic"


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
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root, final.name)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        started = time.perf_counter()
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
        try:
            os.replace(temporary, final)
        except OSError:
            if not (final / MARKER_NAME).is_file():  # a concurrent writer did not finish it either
                raise
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return final


def _remove_stale_temporaries(root: Path, name: str) -> None:
    now = time.time()
    for leftover in root.glob(f".{name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TEMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass
