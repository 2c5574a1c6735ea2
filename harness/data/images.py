"""Decode image files into one uint8 tensor, with an on-disk cache so repeated trials skip decoding.

A cache entry is two files in `cache_dir`: ``images-<key>.npy`` (uint8, N x 3 x H x W) and
``images-<key>.json`` (its manifest). The key hashes the ordered path list and the size; the
manifest records a fingerprint of every file's size and modification time, so an edited,
replaced or touched file makes the entry stale and it is rebuilt in place. Both files are
written to temporary names and moved into place with os.replace, array first, manifest last:
an interrupted or failed build never leaves an entry that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from harness.errors import HarnessError

CACHE_FORMAT = 1
_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


def _decode_image(path: str, height: int, width: int) -> np.ndarray:
    """One image as uint8 (H, W, 3): any mode (grey infrared included) becomes RGB."""
    try:
        if os.path.getsize(path) == 0:
            raise HarnessError(f"image file {path} is empty")
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except HarnessError:
        raise
    except _DECODE_ERRORS as exc:
        raise HarnessError(f"cannot decode image {path}: {exc}") from exc


def _check_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise HarnessError(f"load_images {what}: expected an integer >= 1, got {value!r}")
    return int(value)


def _file_stats(paths: Sequence[str]) -> list[tuple[int, int]]:
    stats = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as exc:
            raise HarnessError(f"cannot read image {path}: {exc.strerror or exc}") from exc
        stats.append((info.st_size, info.st_mtime_ns))
    return stats


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, separators=(",", ":")).encode("utf-8")).hexdigest()


def decode_images(paths: Sequence[str], height: int, width: int, *, workers: int | None = None) -> np.ndarray:
    """uint8 (N, 3, H, W), decoded in a thread pool (Pillow releases the GIL while decoding)."""
    out = np.empty((len(paths), 3, height, width), dtype=np.uint8)

    def decode_into(index: int) -> None:
        out[index] = _decode_image(paths[index], height, width).transpose(2, 0, 1)

    if workers is None:
        workers = min(32, (os.cpu_count() or 1) + 4)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        # list() re-raises the first failing image's error; images not started yet are dropped.
        list(pool.map(decode_into, range(len(paths))))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _write_atomically(target: Path, write: Callable[[BinaryIO], object]) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


def _read_cache(array_file: Path, manifest_file: Path, expected: dict) -> np.ndarray | None:
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest != expected:
        return None
    try:
        array = np.load(array_file, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if array.dtype != np.uint8 or array.shape != tuple(expected["shape"]):
        return None
    return array


def load_images(
    paths: Sequence[str],
    height: int,
    width: int,
    *,
    cache_dir: Path | None,
) -> torch.Tensor:
    """Images resized to (height, width), bilinear, as a uint8 tensor (N, 3, H, W) in `paths` order.

    With `cache_dir`, a valid cache entry is read instead of decoding (see the module docstring).
    An unreadable, empty or corrupt image raises HarnessError naming it.
    """
    height = _check_size(height, "height")
    width = _check_size(width, "width")
    paths = [os.fspath(p) for p in paths]
    stats = _file_stats(paths)
    if cache_dir is None:
        return torch.from_numpy(decode_images(paths, height, width))

    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot create image cache folder {cache_dir}: {exc}") from exc
    key = _digest({"format": CACHE_FORMAT, "paths": paths, "height": height, "width": width})[:32]
    array_file = cache_dir / f"images-{key}.npy"
    manifest_file = cache_dir / f"images-{key}.json"
    expected = {
        "format": CACHE_FORMAT,
        "key": key,
        "count": len(paths),
        "shape": [len(paths), 3, height, width],
        "files": _digest(stats),
    }
    cached = _read_cache(array_file, manifest_file, expected)
    if cached is not None:
        return torch.from_numpy(cached)

    images = decode_images(paths, height, width)
    try:
        manifest_file.unlink(missing_ok=True)
        _write_atomically(array_file, lambda stream: np.save(stream, images, allow_pickle=False))
        _write_atomically(
            manifest_file, lambda stream: stream.write(json.dumps(expected, indent=1).encode("utf-8"))
        )
    except OSError as exc:
        raise HarnessError(f"cannot write image cache in {cache_dir}: {exc}") from exc
    return torch.from_numpy(images)
