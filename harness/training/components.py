"""The one builder of a trial's components (data -> method -> trainer), shared by `run_trial` and the bench.

Building always happens in the same order, so the global random streams are consumed the same
way everywhere: seed the generators, place the train images, create the method (its
initialisation draws from torch's generator), then the trainer (its sampler and augmentation
have their own seeded generators).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.config import TrialConfig
from harness.data.splits import ImageSplit
from harness.training.device import resolve_device
from harness.training.loop import EpochCallback, IterationCallback, Trainer
from harness.training.profiling import PhaseTimer
from harness.training.seeding import seed_everything


@dataclass(frozen=True)
class TrainData:
    """What a trainer trains on: the train split, its uint8 images and the label spaces."""

    train: ImageSplit
    images: torch.Tensor
    num_classes: int
    num_cameras: int


@dataclass
class TrialComponents:
    method: Any
    trainer: Trainer
    device: torch.device


def prepare_run(cfg: TrialConfig) -> torch.device:
    """Seed every global generator, apply `train.threads` and the numerics mode's torch switch and
    resolve `train.device`; first step of any run."""
    from harness.numerics import configure_torch

    configure_torch()
    seed_everything(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return resolve_device(cfg.train.device)


def build_components(cfg: TrialConfig, data: TrainData, device: torch.device, *,
                     checkpoint_path: Path | None = None, timer: PhaseTimer | None = None,
                     compile_backend: str = "inductor",
                     before_trainer: Callable[[Any, torch.device], None] | None = None,
                     epoch_callbacks: list[EpochCallback] | None = None,
                     iteration_callbacks: list[IterationCallback] | None = None) -> TrialComponents:
    """The method (on `device`, in training mode) and its trainer.

    `before_trainer(method, device)` runs on the eager method before the trainer converts it
    (channels_last) and compiles it: the place to count FLOPs or reset memory statistics.
    """
    from methods import create_method

    method = create_method(cfg, data.num_classes, data.num_cameras).to(device)
    method.train()
    if before_trainer is not None:
        before_trainer(method, device)
    trainer = Trainer(method, cfg.train, data.train, data.images, device=device, seed=cfg.seed,
                      checkpoint_path=checkpoint_path, epoch_callbacks=epoch_callbacks,
                      iteration_callbacks=iteration_callbacks, timer=timer or PhaseTimer(device),
                      compile_backend=compile_backend)
    return TrialComponents(method=method, trainer=trainer, device=device)
