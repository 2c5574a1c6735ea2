"""Training loop: SGD with the AGW schedule, batched augmentation, per-epoch atomic checkpoints.

The trainer never looks at test data; it trains for the configured number of epochs and the
final model is what gets evaluated. An optional per-epoch callback (validation, pruning) gets
the epoch index and may raise to stop the trial.
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from harness.config import TrainConfig
from harness.data.augment import train_augment
from harness.data.sampler import IdentitySampler
from harness.data.splits import ImageSplit
from harness.errors import HarnessError


class TrialFailure(RuntimeError):
    """The trial cannot continue (non-finite loss, diverged); recorded as a failed trial."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise HarnessError(f"train.device: {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"train.device={name!r}: CUDA is not available on this machine; use auto or cpu")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_context(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_epochs`, then x gamma at each milestone."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / cfg.warmup_epochs
    return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class TrainStats:
    epochs_run: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0
    throughput: float = float("nan")
    """Training images/s after the warm-up iterations."""
    last_losses: dict[str, float] = field(default_factory=dict)


EpochCallback = Callable[[int, dict[str, float]], None]


class Trainer:
    def __init__(self, method: nn.Module, cfg: TrainConfig, train: ImageSplit, images: torch.Tensor, *,
                 device: torch.device, seed: int, checkpoint_path: Path | None = None,
                 on_epoch: EpochCallback | None = None, on_iter: Callable[[int, int], None] | None = None,
                 warmup_iters: int = 3) -> None:
        self.method, self.cfg, self.device = method, cfg, device
        self.images = images.to(device, non_blocking=True)
        self.pids = torch.as_tensor(train.pids, dtype=torch.long, device=device)
        self.cams = torch.as_tensor(train.cams, dtype=torch.long, device=device)
        self.modalities = torch.as_tensor(train.modalities, dtype=torch.long, device=device)
        self.sampler = IdentitySampler(train.pids, train.modalities, num_identities=cfg.num_identities,
                                       images_per_modality=cfg.images_per_modality, seed=seed)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed + 1)
        n_vis = int((train.modalities == 0).sum())
        n_ir = int((train.modalities == 1).sum())
        self.iters_per_epoch = cfg.iters_per_epoch or max(1, max(n_vis, n_ir) // self.sampler.batch_size)
        kwargs: dict[str, Any] = dict(momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        if cfg.fused_optimizer:
            kwargs["fused"] = True
        groups = method.param_groups()
        for g in groups:
            g["initial_lr"] = g["lr"]
        self.optimizer = torch.optim.SGD(groups, **kwargs)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: lr_factor(e, cfg))
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.checkpoint_path = checkpoint_path
        self.on_epoch, self.on_iter = on_epoch, on_iter
        self.warmup_iters = warmup_iters
        self.start_epoch = 0
        self.stats = TrainStats()
        self.step_model = method
        if cfg.channels_last:
            method.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "stats": self.stats.__dict__.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        self.stats = TrainStats(**state["stats"])
        self.start_epoch = state["epoch"] + 1

    def maybe_resume(self) -> bool:
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        self.load_state_dict(state)
        return True

    # ------------------------------------------------------------------ the step
    def train_step(self, indices: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        x = train_augment(self.images[indices], self.generator, pad=cfg.pad, flip=cfg.flip,
                          erasing_p=cfg.erasing_p, erasing_area=tuple(cfg.erasing_area))
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.device, cfg.amp):
            losses = self.step_model.training_losses(x, self.modalities[indices], self.pids[indices],
                                                     self.cams[indices])
        total = sum(losses.values())
        values = {k: float(v.detach()) for k, v in losses.items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise TrialFailure(f"non-finite loss term(s) {', '.join(bad)}: {values}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values["total"] = sum(values.values())
        return values

    def fit(self) -> TrainStats:
        self.method.to(self.device)
        self.method.train()
        measured_images, measured_time = 0, 0.0
        global_iter = 0
        for epoch in range(self.start_epoch, self.cfg.epochs):
            sums: dict[str, float] = {}
            for it in range(self.iters_per_epoch):
                indices = torch.as_tensor(self.sampler.next_batch(), device=self.device)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                t0 = time.perf_counter()
                values = self.train_step(indices)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                self.stats.train_seconds += dt
                self.stats.images_seen += len(indices)
                if global_iter >= self.warmup_iters:
                    measured_images += len(indices)
                    measured_time += dt
                global_iter += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if self.on_iter:
                    self.on_iter(epoch, it)
            self.scheduler.step()
            self.stats.epochs_run = epoch + 1
            self.stats.last_losses = {k: v / self.iters_per_epoch for k, v in sums.items()}
            if measured_time > 0:
                self.stats.throughput = measured_images / measured_time
            if self.checkpoint_path is not None:
                atomic_torch_save(self.state_dict(epoch), self.checkpoint_path)
            if self.on_epoch:
                self.on_epoch(epoch, self.stats.last_losses)
        return self.stats
