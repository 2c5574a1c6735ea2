"""Per-epoch training checkpoints: written atomically, read back to resume a trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.atomic import atomic_path


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` whole or not at all."""
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint at `path` (tensors mapped to `device`), or None when there is none."""
    if not path.is_file():
        return None
    return torch.load(path, map_location=device, weights_only=False)
