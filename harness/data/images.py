"""Decode image files into one uint8 tensor, with an on-disk cache so repeated trials skip decoding.

A cache entry is two files in `cache_dir`: ``images-<key>.npy`` (uint8, N x 3 x H x W) and
``images-<key>.json`` (its manifest). The key hashes the ordered path list, the size and the
resampling filter; the manifest records a fingerprint of every file's size and modification time
(an edited, replaced or touched file makes the entry stale) and the SHA-256 of the array's bytes,
verified once per load, so a damaged array (a zeroed or altered ``.npy`` with a valid header) is
rebuilt instead of silently changing a trial's numbers. Both files go through
harness.atomic, array first, manifest last: an interrupted or failed build never leaves an entry
that looks valid.

decode_image is the one place an image file becomes pixels; `vireid data check` calls it too,
so the check refuses exactly what training would refuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import typing
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from harness.atomic import atomic_path, atomic_write_text
from harness.config import ResizeFilter
from harness.errors import EnvironmentFault, HarnessError, InputError, check_int

CACHE_FORMAT = 2
log = logging.getLogger(__name__)
RESAMPLING = {name: getattr(Image.Resampling, name.upper()) for name in typing.get_args(ResizeFilter)}
"""Resize filters by config name (data.train_resize / data.test_resize): PIL's, which antialias
when shrinking."""

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


def _eight_bit(image: Image.Image, path: str) -> Image.Image:
    """An 8-bit image with the same picture: 16-bit greyscale scaled linearly 0..65535 -> 0..255.

    Pillow's own conversion of a 16-bit image clips every value above 255 to white; 32-bit
    integer and float images carry no agreed range and are refused.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.rint(values * (255.0 / 65535.0)).astype(np.uint8), mode="L")
    if image.mode in ("I", "F"):
        raise InputError(
            f"image {path}: {image.mode!r} (32-bit {'integer' if image.mode == 'I' else 'float'}) images "
            "have no fixed value range; convert the dataset to 8- or 16-bit images"
        )
    return image


def decode_image(path: str, height: int, width: int, resample: str = "bilinear") -> np.ndarray:
    """One image as uint8 (H, W, 3): any mode (grey infrared, 16-bit thermal) becomes 8-bit RGB."""
    if resample not in RESAMPLING:
        raise InputError(f"resize filter {resample!r}: expected one of {', '.join(RESAMPLING)}")
    try:
        if os.path.getsize(path) == 0:
            raise InputError(f"image file {path} is empty")
        with Image.open(path) as image:
            rgb = _eight_bit(image, path).convert("RGB").resize((width, height), RESAMPLING[resample])
            return np.asarray(rgb, dtype=np.uint8)
    except HarnessError:
        raise
    except _DECODE_ERRORS as exc:
        raise InputError(f"cannot decode image {path}: {exc}") from exc


def _file_stats(paths: Sequence[str]) -> list[tuple[int, int]]:
    stats = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as exc:
            raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from exc
        stats.append((info.st_size, info.st_mtime_ns))
    return stats


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode("utf-8")).hexdigest()


def content_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order), without copying a contiguous array."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def decode_images(
    paths: Sequence[str], height: int, width: int, *, resample: str = "bilinear", workers: int | None = None
) -> np.ndarray:
    """uint8 (N, 3, H, W), decoded in a thread pool (Pillow releases the GIL while decoding)."""
    out = np.empty((len(paths), 3, height, width), dtype=np.uint8)

    def decode_into(index: int) -> None:
        out[index] = decode_image(paths[index], height, width, resample).transpose(2, 0, 1)

    if workers is None:
        workers = min(32, (os.cpu_count() or 1) + 4)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        # list() re-raises the first failing image's error; images not started yet are dropped.
        list(pool.map(decode_into, range(len(paths))))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _read_cache(array_file: Path, manifest_file: Path, expected: dict) -> np.ndarray | None:
    """The cached array if its manifest matches and its bytes hash to the recorded digest."""
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or {k: manifest.get(k) for k in expected} != expected:
        return None
    try:
        array = np.load(array_file, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.dtype != np.uint8 or array.shape != tuple(expected["shape"]):
        return None
    if manifest.get("sha256") != content_digest(array):
        return None
    return array


def load_images(
    paths: Sequence[str],
    height: int,
    width: int,
    *,
    cache_dir: Path | None,
    resample: str = "bilinear",
) -> torch.Tensor:
    """Images resized to (height, width) with `resample`, as a uint8 tensor (N, 3, H, W) in `paths` order.

    With `cache_dir`, a valid cache entry is read instead of decoding (see the module docstring).
    An unreadable, empty or corrupt image raises InputError naming it.
    """
    height = check_int(height, "load_images height", minimum=1)
    width = check_int(width, "load_images width", minimum=1)
    if resample not in RESAMPLING:
        raise InputError(f"resize filter {resample!r}: expected one of {', '.join(RESAMPLING)}")
    paths = [os.fspath(p) for p in paths]
    stats = _file_stats(paths)
    if cache_dir is None:
        return torch.from_numpy(decode_images(paths, height, width, resample=resample))

    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EnvironmentFault(f"cannot create image cache folder {cache_dir}: {exc}") from exc
    key_fields = {"format": CACHE_FORMAT, "paths": paths, "height": height, "width": width, "resample": resample}
    key = _digest(key_fields)[:32]
    array_file = cache_dir / f"images-{key}.npy"
    manifest_file = cache_dir / f"images-{key}.json"
    expected = {
        "format": CACHE_FORMAT,
        "key": key,
        "resample": resample,
        "count": len(paths),
        "shape": [len(paths), 3, height, width],
        "files": _digest(stats),
    }
    cached = _read_cache(array_file, manifest_file, expected)
    if cached is not None:
        return torch.from_numpy(cached)

    log.info("decoding %d images to %dx%d (%s) for the image cache %s", len(paths), height, width, resample,
             cache_dir)
    started = time.perf_counter()
    images = decode_images(paths, height, width, resample=resample)
    log.info("decoded and cached %d images in %.0f s", len(paths), time.perf_counter() - started)
    try:
        manifest_file.unlink(missing_ok=True)
        with atomic_path(array_file) as temporary:
            np.save(temporary, images, allow_pickle=False)
        atomic_write_text(manifest_file, json.dumps({**expected, "sha256": content_digest(images)}, indent=1))
    except OSError as exc:
        raise EnvironmentFault(f"cannot write image cache in {cache_dir}: {exc}") from exc
    return torch.from_numpy(images)
