"""What identifies a result: the key of its configuration and the library versions that computed it.

Same config + seed + library versions on CPU gives the same numbers, so records and saved models
carry both.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config import TrialConfig


def config_key(cfg: TrialConfig) -> str:
    """Stable id of a trial's full configuration (identical configs share results and checkpoints).

    A `model.pretrained_file` enters by its content (SHA-256) as well as its path: other weights
    under the same name are another trial, never a finished one to skip or a checkpoint to resume.
    Keys added later (`harness.config_schema.new_key`) enter only when set away from their default.
    """
    data = cfg.key_dict()
    weights = cfg.model.pretrained_file
    if weights is not None and os.path.isfile(weights):
        data["model"]["pretrained_file_sha256"] = file_sha256(weights)
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """The versions a result depends on (imported here, so reading a record needs no torch)."""
    import numpy as np
    import timm
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__}
