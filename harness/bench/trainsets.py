"""Random train sets with a valid two-modality label layout, of a benchmark's or a dataset's size."""

from __future__ import annotations

import numpy as np
import torch

from harness.data.splits import MODALITY_INFRARED, MODALITY_VISIBLE, ImageSplit
from harness.data.sysu import SYSU_SENSORS
from harness.errors import ConfigError

BENCH_NUM_CLASSES = 395  # SYSU-MM01 training identities
BENCH_NUM_CAMERAS = len(SYSU_SENSORS)
SYSU_TRAIN_VISIBLE, SYSU_TRAIN_INFRARED = 22_258, 11_909  # SYSU-MM01 training images
# One SYSU-MM01 all-search evaluation pass: 3,803 infrared queries + a multi-shot gallery trial
# (96 test identities x 4 visible cameras x 10 images).
SYSU_EVAL_IMAGES = 3_803 + 96 * 4 * 10
# SYSU-MM01's cameras of each modality, 0-based as ImageSplit.cams holds them
_VISIBLE_CAMERAS = np.array([s.number - 1 for s in SYSU_SENSORS if not s.infrared])
_INFRARED_CAMERAS = np.array([s.number - 1 for s in SYSU_SENSORS if s.infrared])


def synthetic_train_set(num_identities: int, images_per_modality: int, height: int, width: int, *,
                        seed: int = 0) -> tuple[ImageSplit, torch.Tensor]:
    """Random uint8 images with a valid two-modality label layout (timing and tests, not learning)."""
    count = num_identities * images_per_modality
    return sized_train_set(num_identities, count, count, height, width, seed=seed)


def sized_train_set(num_identities: int, num_visible: int, num_infrared: int, height: int, width: int, *,
                    seed: int = 0, device: torch.device | str = "cpu") -> tuple[ImageSplit, torch.Tensor]:
    """Random uint8 images of a dataset's size: identities spread evenly over each modality's images.

    The images are drawn on `device` (a SYSU-MM01-sized set at 288x144 is 4.3 GB: drawing it on
    the GPU where it will live avoids a host copy).
    """
    if num_identities < 2 or num_visible < num_identities or num_infrared < num_identities:
        raise ConfigError(
            f"bench: a train set needs at least 2 identities and one visible and one infrared image per identity; "
            f"got {num_identities} identities, {num_visible} visible and {num_infrared} infrared images")
    generator = np.random.default_rng(seed)
    pids = np.concatenate([np.arange(num_visible) % num_identities, np.arange(num_infrared) % num_identities])
    modalities = np.repeat([MODALITY_VISIBLE, MODALITY_INFRARED], [num_visible, num_infrared])
    cams = np.concatenate([generator.choice(_VISIBLE_CAMERAS, num_visible),
                           generator.choice(_INFRARED_CAMERAS, num_infrared)])
    split = ImageSplit(paths=tuple(f"random/{i}.png" for i in range(len(pids))), pids=pids, cams=cams,
                       modalities=modalities)
    device = torch.device(device)
    torch_generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randint(0, 256, (len(pids), 3, height, width), dtype=torch.uint8, generator=torch_generator,
                           device=device)
    return split, images
