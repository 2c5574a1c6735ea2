"""Where every on-disk cache (decoded images, synthetic trees) lives: one rule for all of them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config import DataConfig

CACHE_ENV = "VIREID_CACHE"
DEFAULT_CACHE = "~/.cache/vireid"


def cache_root(cfg: DataConfig | None = None) -> Path:
    """`data.cache_dir` when set, else $VIREID_CACHE, else ~/.cache/vireid (`~` expanded)."""
    if cfg is not None and cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
