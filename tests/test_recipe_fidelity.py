"""The authors' recipe, item by item, against references derived by hand from their public code."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import TrainConfig
from harness.data.splits import ImageSplit
from harness.training import steps_per_epoch


def _split(num_visible: int, num_infrared: int) -> ImageSplit:
    modalities = np.repeat([0, 1], [num_visible, num_infrared])
    return ImageSplit(paths=tuple(f"{i}.png" for i in range(len(modalities))),
                      pids=np.arange(len(modalities)) % 7, cams=modalities * 2, modalities=modalities)


@pytest.mark.parametrize(("visible", "infrared", "expected"), [
    (22_258, 11_909, 696),  # SYSU-MM01: int(22258 / 32) + 1 = 695 + 1
    (2_060, 2_060, 65),     # RegDB (one split): int(2060 / 32) + 1 = 64 + 1
    (16_946, 13_975, 530),  # LLCM (16,946 VIS + 13,975 NIR = 30,921 train images): int(16946 / 32) + 1
    (100, 300, 10),         # the larger modality counts: int(300 / 32) + 1
    (64, 10, 3),            # an exact multiple still gets the extra batch: 64 / 32 + 1
])
def test_an_epoch_counts_steps_as_the_authors_sampler(visible, infrared, expected):
    cfg = TrainConfig(num_identities=8, images_per_modality=4)
    assert steps_per_epoch(_split(visible, infrared), cfg) == expected


def test_iters_per_epoch_overrides_the_count():
    cfg = TrainConfig(num_identities=8, images_per_modality=4, iters_per_epoch=5)
    assert steps_per_epoch(_split(22_258, 11_909), cfg) == 5
