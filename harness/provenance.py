"""What identifies a result: the key of its configuration and the library versions that computed it.

Same config + seed + library versions on CPU gives the same numbers, so records and saved models
carry both.
"""

from __future__ import annotations

import hashlib
import json
import platform
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config import TrialConfig


def config_key(cfg: TrialConfig) -> str:
    """Stable id of a trial's full configuration (identical configs share results and checkpoints)."""
    blob = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def library_versions() -> dict[str, str]:
    """The versions a result depends on (imported here, so reading a record needs no torch)."""
    import numpy as np
    import timm
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__}
