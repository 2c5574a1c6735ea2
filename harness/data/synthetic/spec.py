"""What a synthetic dataset is: its size and seed (SynthSpec), the layout it imitates, seeding.

Every random draw of the generator comes from `seeded_rng(seed, TAG, ...)`, keyed by what it is
for (identity, scene, sensor, sample, split, missing folder), so each image depends only on its
own key and files are byte-identical whatever the generation order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from harness.data.splits import Sensor
from harness.errors import InputError, check_int

GENERATOR_VERSION = 1
JPEG_QUALITY = 90

TAG_IDENTITY, TAG_SCENE, TAG_SENSOR, TAG_SAMPLE, TAG_SPLIT, TAG_MISSING = range(101, 107)

SynthCamera = Sensor
"""A camera of a layout as the generator sees it (number, infrared, scene)."""

class SynthLayout(Protocol):
    """The facts of a real layout the generator needs; every registered Dataset provides them."""

    name: str
    synthetic_code: int
    """Distinct per layout: part of every seed, so two layouts never share an image."""
    sensors: tuple[Sensor, ...]


@dataclass(frozen=True)
class SynthSpec:
    """Size and randomness of a synthetic dataset; the cache key of `ensure_synthetic`.

    These defaults are the only ones: `harness.config.SyntheticConfig` (data.synthetic) reads them.
    """

    num_identities: int = 60
    images_per_camera: int = 4
    height: int = 128
    width: int = 64
    seed: int = 0
    test_fraction: float = 0.4
    missing_camera_rate: float = 0.1

    def __post_init__(self) -> None:
        # Values are normalised to int / float so that equal specs give equal cache keys.
        def integer(name: str, minimum: int) -> None:
            object.__setattr__(self, name, check_int(getattr(self, name), f"SynthSpec.{name}", minimum=minimum))

        def fraction(name: str, zero_allowed: bool) -> None:
            value = getattr(self, name)
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not number or not (0.0 <= float(value) < 1.0) or (float(value) == 0.0 and not zero_allowed):
                low = "[0" if zero_allowed else "(0"
                raise InputError(f"SynthSpec.{name}={value!r}: expected a number in {low}, 1)")
            object.__setattr__(self, name, float(value))

        integer("num_identities", 4)
        integer("images_per_camera", 1)
        integer("height", 32)
        integer("width", 16)
        integer("seed", 0)
        fraction("test_fraction", zero_allowed=False)
        fraction("missing_camera_rate", zero_allowed=True)


def seeded_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))
