"""What a benchmark is run on: its config, input size, batch layout, and a trainer built the way a trial builds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.bench.trainsets import (
    BENCH_NUM_CAMERAS,
    BENCH_NUM_CLASSES,
    SYSU_TRAIN_INFRARED,
    SYSU_TRAIN_VISIBLE,
    sized_train_set,
    synthetic_train_set,
)
from harness.config import TrialConfig
from harness.errors import ConfigError
from harness.training import PhaseTimer, TrainData, Trainer, build_components, prepare_run


def parse_size(size: str) -> tuple[int, int]:
    """"288x144" -> (288, 144)."""
    parts = str(size).lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"bench --size {size!r}: expected HEIGHTxWIDTH in pixels, e.g. 288x144") from None
    if height < 1 or width < 1:
        raise ConfigError(f"bench --size {size!r}: height and width must be positive")
    return height, width


def batch_layout(batch: int, images_per_modality: int) -> tuple[int, int]:
    """(P identities, K images per modality) with 2*P*K == batch and P >= 2 where possible.

    K is `images_per_modality`, lowered until it divides the batch into at least two identities
    (WRT and the center terms need more than one identity per batch).
    """
    if batch < 4 or batch % 2:
        raise ConfigError(f"bench --batch {batch}: expected an even batch of at least 4 (2 identities x "
                           "1 visible + 1 infrared image)")
    for k in range(max(1, images_per_modality), 0, -1):
        if batch % (2 * k) == 0 and batch // (2 * k) >= 2:
            return batch // (2 * k), k
    raise AssertionError("unreachable: k = 1 always fits an even batch >= 4")


def parse_image_counts(counts: str | None) -> tuple[int, int]:
    """"22258,11909" -> (22258, 11909); None -> SYSU-MM01's training set."""
    if counts is None:
        return SYSU_TRAIN_VISIBLE, SYSU_TRAIN_INFRARED
    try:
        visible, infrared = (int(c) for c in str(counts).split(","))
    except ValueError:
        raise ConfigError(f"bench --train-images {counts!r}: expected VISIBLE,INFRARED image counts, "
                           "e.g. 22258,11909") from None
    return visible, infrared


@dataclass
class StepSetup:
    """A trainer ready to run benchmark steps, and what it was built from."""

    cfg: TrialConfig
    method: nn.Module
    trainer: Trainer
    device: torch.device
    height: int
    width: int
    batch: int

    def step(self) -> dict[str, float]:
        """One full training step (sampling, augmentation, forward, losses, backward, update)."""
        return self.trainer.train_step(self.trainer.next_indices())


def bench_config(method: str, backbone: str, batch: int, *, device: str = "auto", amp: str = "none",
                 channels_last: bool = False, compile: bool = False,
                 overrides: dict[str, Any] | None = None) -> TrialConfig:
    """The trial config of a benchmark; `overrides` (dotted keys) win over the keyword arguments."""
    cfg = TrialConfig(method=method).with_overrides(
        {"model.backbone": backbone, "train.device": device, "train.amp": amp, "train.channels_last": channels_last,
         "train.compile": compile, **(overrides or {})}, where="bench")
    num_identities, images_per_modality = batch_layout(batch, cfg.train.images_per_modality)
    return cfg.with_overrides({"train.num_identities": num_identities,
                               "train.images_per_modality": images_per_modality}, where="bench")


def build_step_setup(cfg: TrialConfig, height: int, width: int, *, timer: PhaseTimer | None = None,
                     compile_backend: str = "inductor", before_trainer: Any = None,
                     train_size: tuple[int, int, int] | None = None) -> StepSetup:
    """Method + trainer on a random train set, everything on the config's device.

    The train set is just large enough for the sampler, or `train_size` = (identities, visible
    images, infrared images), drawn on the device. `before_trainer(method, device)` runs on the
    eager method before the trainer converts it (channels_last) and compiles it: the place to
    count FLOPs.
    """
    device = prepare_run(cfg)
    t = cfg.train
    if train_size is None:
        num_classes = BENCH_NUM_CLASSES
        num_identities = min(BENCH_NUM_CLASSES, max(2 * t.num_identities, 8))
        train, images = synthetic_train_set(num_identities, t.images_per_modality, height, width, seed=cfg.seed)
    else:
        num_classes = train_size[0]
        train, images = sized_train_set(*train_size, height, width, seed=cfg.seed, device=device)
    parts = build_components(cfg, TrainData(train, images, num_classes, BENCH_NUM_CAMERAS), device, timer=timer,
                             compile_backend=compile_backend, before_trainer=before_trainer)
    method, trainer = parts.method, parts.trainer
    return StepSetup(cfg=cfg, method=method, trainer=trainer, device=device, height=height, width=width,
                     batch=trainer.sampler.batch_size)


@dataclass
class BenchSettings:
    """What a timing was taken of and on: method, input, device, library versions, accelerations."""

    method: str
    backbone: str
    height: int
    width: int
    batch: int
    device: str
    device_name: str
    torch_version: str
    timm_version: str
    amp: str
    channels_last: bool
    compile: bool
    fused_optimizer: bool


def bench_settings(cfg: TrialConfig, height: int, width: int, batch: int, device: torch.device) -> dict[str, Any]:
    """The BenchSettings fields of a run, as keyword arguments."""
    import timm

    from harness.provenance import device_label

    t = cfg.train
    return dict(method=cfg.method, backbone=cfg.model.backbone, height=height, width=width, batch=batch,
                device=str(device), device_name=device_label(device), torch_version=torch.__version__,
                timm_version=timm.__version__, amp=t.amp, channels_last=t.channels_last, compile=t.compile,
                fused_optimizer=t.fused_optimizer)
