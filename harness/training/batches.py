"""The batch source of a trial: the resident uint8 train images, the identity sampler and the augmentation.

The uint8 train images stay on the device when they take at most a quarter of its free memory;
otherwise they stay in pinned host memory and each batch is gathered on the host and copied
asynchronously. Augmentation runs batched on the device with its own seeded generator; the
method's `training_batch` turns the sampler's images into the batch it trains on (by default
each image augmented once).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from harness.config import TrainConfig
from harness.data.augment import train_augment
from harness.data.sampler import IdentitySampler
from harness.data.splits import ImageSplit
from harness.training.device import fits_on_device
from harness.training.profiling import PhaseTimer
from methods.base import Augment, ReIDMethod, TrainingBatch


def steps_per_epoch(train: ImageSplit, cfg: TrainConfig) -> int:
    """Optimiser steps in one epoch, as the AGW and MCLNet code count them.

    Their identity sampler draws int(N / (P*K)) + 1 batches of P*K images per modality, with N
    the image count of the larger modality: one pass over it, the last batch partly repeated
    (SYSU-MM01: int(22,258 / 32) + 1 = 696). `train.iters_per_epoch` overrides the count.
    """
    if cfg.iters_per_epoch:
        return cfg.iters_per_epoch
    larger = max(int((train.modalities == 0).sum()), int((train.modalities == 1).sum()))
    return larger // (cfg.num_identities * cfg.images_per_modality) + 1


def train_augmentation(cfg: TrainConfig, generator: torch.Generator) -> Augment:
    """The configured train augmentation (pad + crop, flip, grayscale, normalise, erasing) drawing from `generator`."""
    return functools.partial(train_augment, generator=generator, pad=cfg.pad, flip=cfg.flip,
                             erasing_p=cfg.erasing_p, erasing_area=tuple(cfg.erasing_area),
                             grayscale_p=cfg.grayscale_p, ratio=tuple(cfg.erasing_ratio),
                             aspect=cfg.erasing_aspect, fill=cfg.erasing_fill,
                             fill_value=tuple(cfg.erasing_value), attempts=cfg.erasing_attempts)


class BatchSource:
    """Index batches from the identity sampler, turned into the method's training batches on the device."""

    def __init__(self, train: ImageSplit, images: torch.Tensor, cfg: TrainConfig, *, device: torch.device,
                 seed: int, timer: PhaseTimer, method: ReIDMethod) -> None:
        self.cfg, self.device, self.timer, self.method = cfg, device, timer, method
        self.images_on_device = images.device.type == device.type or fits_on_device(
            images.numel() * images.element_size(), device)
        self.images = images.to(device, non_blocking=True) if self.images_on_device else images.pin_memory()
        self._staging: torch.Tensor | None = None
        self._staging_free: Any = None  # CUDA event: the last copy out of the staging buffer finished
        self.pids = torch.as_tensor(train.pids, dtype=torch.long, device=device)
        self.cams = torch.as_tensor(train.cams, dtype=torch.long, device=device)
        self.modalities = torch.as_tensor(train.modalities, dtype=torch.long, device=device)
        self.sampler = IdentitySampler(train.pids, train.modalities, num_identities=cfg.num_identities,
                                       images_per_modality=cfg.images_per_modality, seed=seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed + 1)
        self.augment = train_augmentation(cfg, self.generator)
        self.steps_per_epoch = steps_per_epoch(train, cfg)

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    def next_indices(self) -> torch.Tensor:
        """Image indices of the next batch (a CPU tensor)."""
        with self.timer("data"):
            return torch.from_numpy(self.sampler.next_batch())

    def _gather(self, indices: torch.Tensor, on_device: torch.Tensor) -> torch.Tensor:
        """uint8 images of a batch on the device (`on_device`: the same indices on the device)."""
        if self.images_on_device:
            return self.images[on_device]
        indices = indices.cpu()
        shape = (len(indices), *self.images.shape[1:])
        if self._staging is None or self._staging.shape != shape:
            self._staging = torch.empty(shape, dtype=self.images.dtype, pin_memory=self.device.type == "cuda")
            self._staging_free = None
        if self._staging_free is not None:
            self._staging_free.synchronize()  # the previous batch's copy still reads the buffer
        torch.index_select(self.images, 0, indices, out=self._staging)
        batch = self._staging.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self._staging_free = torch.cuda.Event()
            self._staging_free.record()
        return batch

    def batch(self, indices: torch.Tensor) -> TrainingBatch:
        """(images, modality, pids, cams) the method trains on for the sampler's batch `indices`, on the device."""
        with self.timer("data"):
            on_device = indices.to(self.device, non_blocking=True)
            x, modality, pids, cams = self.method.training_batch(
                self._gather(indices, on_device), self.modalities[on_device], self.pids[on_device],
                self.cams[on_device], augment=self.augment, generator=self.generator)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return x, modality, pids, cams

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
