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
from contextlib import AbstractContextManager, nullcontext
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


def autocast_context(device: torch.device, amp: str) -> AbstractContextManager[Any]:
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

_NO_SECTION = nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so host clocks measure it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


class PhaseTimer:
    """Wall-clock seconds per named phase of the training step, for `vireid bench`.

    Disabled (the default), `timer("forward")` returns one shared no-op context, so instrumented
    code costs a call per phase. Enabled, each section synchronises the device on entry and on
    exit: asynchronous CUDA work is then charged to the phase that queued it (and the step runs
    slower than without the timer). Nested sections are exclusive: a parent's time excludes its
    children's, so the phases of a step add up to the time spent inside sections.
    """

    def __init__(self, device: torch.device | None = None, *, enabled: bool = False,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = device or torch.device("cpu")
        self.enabled = enabled
        self.clock = clock
        self.seconds: dict[str, float] = {}
        """Exclusive seconds per phase, summed over every section since the last reset."""
        self.calls: dict[str, int] = {}
        self._open: list[list[Any]] = []  # [phase, start, seconds spent in child sections]

    def __call__(self, phase: str) -> AbstractContextManager[Any]:
        return _TimedSection(self, phase) if self.enabled else _NO_SECTION

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def _enter(self, phase: str) -> None:
        synchronize(self.device)
        self._open.append([phase, self.clock(), 0.0])

    def _exit(self) -> None:
        synchronize(self.device)
        phase, start, children = self._open.pop()
        elapsed = self.clock() - start
        self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed - children
        self.calls[phase] = self.calls.get(phase, 0) + 1
        if self._open:
            self._open[-1][2] += elapsed


class _TimedSection:
    __slots__ = ("timer", "phase")

    def __init__(self, timer: PhaseTimer, phase: str) -> None:
        self.timer, self.phase = timer, phase

    def __enter__(self) -> None:
        self.timer._enter(self.phase)

    def __exit__(self, *exc_info: Any) -> None:
        self.timer._exit()


def fused_sgd_supported(device: torch.device) -> bool:
    """Whether torch has fused SGD kernels for this device type (CUDA; CPU since torch 2.4)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return device.type == "cuda"
    return device.type in _get_fused_kernels_supported_devices()


def sgd_implementation(device: torch.device, fused: bool) -> dict[str, bool]:
    """SGD keyword for the requested update: fused where supported, else the multi-tensor (foreach) path.

    Both compute the same update as the per-parameter loop; they only launch fewer kernels.
    """
    if not fused:
        return {}
    return {"fused": True} if fused_sgd_supported(device) else {"foreach": True}


def fits_on_device(nbytes: int, device: torch.device, fraction: float = 0.25) -> bool:
    """Whether a tensor of `nbytes` may live on the device: at most `fraction` of its free memory."""
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


class Trainer:
    """Owns the optimisers, the sampler and the augmentation stream of one trial.

    The uint8 train images stay on the device when they take at most a quarter of its free
    memory; otherwise they stay in pinned host memory and each batch is gathered on the host
    and copied asynchronously. `timer` (disabled by default) receives per-phase times of each
    step; the method gets it as its `phase_timer` when it has one. `compile_backend` is the
    torch.compile backend used when `cfg.compile` is set.
    """

    def __init__(self, method: nn.Module, cfg: TrainConfig, train: ImageSplit, images: torch.Tensor, *,
                 device: torch.device, seed: int, checkpoint_path: Path | None = None,
                 on_epoch: EpochCallback | None = None, on_iter: Callable[[int, int], None] | None = None,
                 warmup_iters: int = 3, timer: PhaseTimer | None = None,
                 compile_backend: str = "inductor") -> None:
        self.method, self.cfg, self.device = method, cfg, device
        self.timer = timer or PhaseTimer(device)
        if hasattr(method, "phase_timer"):
            method.phase_timer = self.timer
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
        n_vis = int((train.modalities == 0).sum())
        n_ir = int((train.modalities == 1).sum())
        self.iters_per_epoch = cfg.iters_per_epoch or max(1, max(n_vis, n_ir) // self.sampler.batch_size)
        kwargs: dict[str, Any] = dict(momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay,
                                      **sgd_implementation(device, cfg.fused_optimizer))
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
        if cfg.channels_last:
            method.to(memory_format=torch.channels_last)
        if cfg.compile:
            compile_network = getattr(method, "compile_network", None)
            if compile_network is None:
                raise HarnessError(f"train.compile=true: method {type(method).__name__} has no compile_network(); "
                                   "set train.compile to false")
            compile_network(backend=compile_backend)

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

    def train_step(self, indices: torch.Tensor) -> dict[str, float]:
        cfg, timer = self.cfg, self.timer
        with timer("data"):
            on_device = indices.to(self.device, non_blocking=True)
            x = train_augment(self._gather(indices, on_device), self.generator, pad=cfg.pad, flip=cfg.flip,
                              erasing_p=cfg.erasing_p, erasing_area=tuple(cfg.erasing_area),
                              grayscale_p=cfg.grayscale_p)
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            modality, pids, cams = self.modalities[on_device], self.pids[on_device], self.cams[on_device]
        with autocast_context(self.device, cfg.amp):
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

    def fit(self) -> TrainStats:
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
                values = self.train_step(indices)
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
