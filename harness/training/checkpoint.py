"""Per-epoch training checkpoints: written atomically, read back to resume a trial.

A checkpoint can hold no code. It is loaded with `torch.load(weights_only=True)`, which accepts
only tensors and plain containers (dict, list, tuple, str, numbers), so a file planted in a
results folder cannot run anything on resume. numpy arrays in the state (numpy's RNG state) are
stored as tensors and turned back into arrays on load. A checkpoint that cannot be read is
reported and ignored: the trial restarts from scratch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.atomic import atomic_path

log = logging.getLogger(__name__)

_ARRAY_TAG = "__ndarray__"


def _to_plain(value: Any) -> Any:
    """`value` with numpy arrays and scalars replaced by tensors and Python numbers."""
    if isinstance(value, np.ndarray):
        return {_ARRAY_TAG: torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_plain(item) for item in value)
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY_TAG}:
            return value[_ARRAY_TAG].numpy()
        return {key: _from_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_from_plain(item) for item in value)
    return value


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` whole or not at all, in a form that loads with weights_only=True."""
    with atomic_path(path) as temporary:
        torch.save(_to_plain(state), temporary)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint at `path` (tensors mapped to `device`), or None when there is none or it is unreadable."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable file means: start afresh
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("ignoring unreadable checkpoint %s (%s: %s); the trial restarts from scratch",
                    path, type(exc).__name__, first_line)
        return None
    if not isinstance(state, dict):
        log.warning("ignoring checkpoint %s: not a checkpoint dictionary; the trial restarts from scratch", path)
        return None
    return _from_plain(state)
