"""The training loop: one step (batch -> losses -> backward -> update) and the epochs around it.

The trainer never looks at test data; it trains for the configured number of epochs and the
final model is what gets evaluated. After every epoch it writes a checkpoint (when it has a
path) and then calls each of `epoch_callbacks` with (epoch, stats): validation, pruning,
progress and training curves attach there, and a callback may raise to stop the trial.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.config import TrainConfig
from harness.data.splits import ImageSplit
from harness.errors import TrialFailure
from harness.training.batches import BatchSource
from harness.training.checkpoint import load_checkpoint, save_checkpoint
from harness.training.device import autocast_context, synchronize
from harness.training.optim import build_optimizer
from harness.training.profiling import PhaseTimer
from harness.training.seeding import global_rng_state, restore_global_rng_state
from methods.base import ReIDMethod

log = logging.getLogger(__name__)


@dataclass
class TrainStats:
    epochs_run: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0
    throughput: float = float("nan")
    """Training images/s after the warm-up iterations."""
    last_losses: dict[str, float] = field(default_factory=dict)
    """Mean of each loss term over the last epoch's steps ("total": their sum)."""


EpochCallback = Callable[[int, TrainStats], None]
"""Called after each epoch (and its checkpoint) with the 0-based epoch and the running stats."""
IterationCallback = Callable[[int, int], None]
"""Called after each step with (epoch, step within the epoch)."""


class Trainer:
    """Trains one method: owns its optimiser, schedule, gradient scaler and batch source.

    `timer` (disabled by default) receives per-phase times of each step and is handed to the
    method as its `phase_timer`. `compile_backend` is the torch.compile backend used when
    `cfg.compile` is set.
    """

    def __init__(self, method: ReIDMethod, cfg: TrainConfig, train: ImageSplit, images: torch.Tensor, *,
                 device: torch.device, seed: int, checkpoint_path: Path | None = None,
                 epoch_callbacks: list[EpochCallback] | None = None,
                 iteration_callbacks: list[IterationCallback] | None = None,
                 warmup_iters: int = 3, timer: PhaseTimer | None = None,
                 compile_backend: str = "inductor") -> None:
        self.method, self.cfg, self.device = method, cfg, device
        self.timer = timer or PhaseTimer(device)
        method.phase_timer = self.timer
        self.batches = BatchSource(train, images, cfg, device=device, seed=seed, timer=self.timer, method=method)
        self.iters_per_epoch = self.batches.steps_per_epoch
        self.optimizer, self.scheduler = build_optimizer(method.param_groups(), cfg, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.checkpoint_path = checkpoint_path
        self.epoch_callbacks: list[EpochCallback] = list(epoch_callbacks or [])
        self.iteration_callbacks: list[IterationCallback] = list(iteration_callbacks or [])
        self.warmup_iters = warmup_iters
        self.start_epoch = 0
        self.stats = TrainStats()
        self.last_step: dict[str, float] = {}
        """Loss values of the latest step (what iteration callbacks such as progress displays show)."""
        if cfg.channels_last:
            method.to(memory_format=torch.channels_last)
        if cfg.compile:
            method.compile_network(backend=compile_backend)

    # the batch source's parts, as the bench and tests read them
    @property
    def images(self) -> torch.Tensor:
        return self.batches.images

    @property
    def modalities(self) -> torch.Tensor:
        return self.batches.modalities

    @property
    def images_on_device(self) -> bool:
        return self.batches.images_on_device

    @property
    def sampler(self) -> Any:
        return self.batches.sampler

    def next_indices(self) -> torch.Tensor:
        """Image indices of the next batch (a CPU tensor)."""
        return self.batches.next_indices()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **self.batches.state_dict(),
            **global_rng_state(),
            "stats": self.stats.__dict__.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.batches.load_state_dict(state)
        restore_global_rng_state(state)
        self.stats = TrainStats(**state["stats"])
        self.start_epoch = state["epoch"] + 1

    def maybe_resume(self) -> bool:
        """Continue from the checkpoint at `checkpoint_path` when there is one."""
        if self.checkpoint_path is None:
            return False
        state = load_checkpoint(self.checkpoint_path, self.device)
        if state is None:
            return False
        fresh = copy.deepcopy(self.state_dict(-1))
        try:
            self.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 -- a checkpoint that does not fit: start afresh
            self.load_state_dict(fresh)
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            log.warning("ignoring checkpoint %s that does not fit this trial (%s: %s); the trial restarts from "
                        "scratch", self.checkpoint_path, type(exc).__name__, first_line)
            return False
        return True

    # ------------------------------------------------------------------ the step
    def train_step(self, indices: torch.Tensor) -> dict[str, float]:
        """One optimiser step on the batch `indices`; returns each loss term's value and "total"."""
        timer = self.timer
        x, modality, pids, cams = self.batches.batch(indices)
        with autocast_context(self.device, self.cfg.amp):
            losses = self.method.training_losses(x, modality, pids, cams)
        with timer("backward"):
            total = sum(losses.values())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
        # one host sync for every loss value, after the backward pass is queued; nothing is updated yet
        values = dict(zip(losses, torch.stack([v.detach().float() for v in losses.values()]).tolist()))
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            raise TrialFailure(f"non-finite loss term(s) {', '.join(bad)}: {values}")
        with timer("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        values["total"] = sum(values.values())
        return values

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainStats:
        """Train from `start_epoch` to `cfg.epochs`; checkpoint and call the epoch callbacks after each epoch."""
        self.method.to(self.device)
        self.method.train()
        measured_images, measured_time = 0, 0.0
        global_iter = 0
        for epoch in range(self.start_epoch, self.cfg.epochs):
            sums: dict[str, float] = {}
            for it in range(self.iters_per_epoch):
                indices = self.next_indices()
                synchronize(self.device)
                t0 = time.perf_counter()
                values = self.last_step = self.train_step(indices)
                synchronize(self.device)
                dt = time.perf_counter() - t0
                self.stats.train_seconds += dt
                self.stats.images_seen += len(indices)
                if global_iter >= self.warmup_iters:
                    measured_images += len(indices)
                    measured_time += dt
                global_iter += 1
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                for callback in self.iteration_callbacks:
                    callback(epoch, it)
            self.scheduler.step()
            self.stats.epochs_run = epoch + 1
            self.stats.last_losses = {k: v / self.iters_per_epoch for k, v in sums.items()}
            if measured_time > 0:
                self.stats.throughput = measured_images / measured_time
            if self.checkpoint_path is not None:
                save_checkpoint(self.state_dict(epoch), self.checkpoint_path)
            for callback in self.epoch_callbacks:
                callback(epoch, self.stats)
        return self.stats
