"""`vireid bench`: per-phase timing, FLOPs and achieved TFLOP/s of full training steps."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.bench.peaks import compute_precision, device_peak_tflops
from harness.bench.setup import BenchSettings, bench_config, bench_settings, build_step_setup, parse_size
from harness.config import TrialConfig
from harness.errors import ConfigError
from harness.training import PhaseTimer, autocast_context, resolve_device, synchronize, train_augmentation
from methods.base import ReIDMethod


def training_step_flops(method: nn.Module, images: torch.Tensor, modality: torch.Tensor, pids: torch.Tensor,
                        cams: torch.Tensor) -> int:
    """FLOPs of one forward + backward of `method.training_losses` (FlopCounterMode's count).

    Runs a real step's worth of autograd (and the MCM discriminator update); gradients are
    cleared afterwards.
    """
    with FlopCounterMode(display=False) as counter:
        losses = method.training_losses(images, modality, pids, cams)
        sum(losses.values()).backward()
    method.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


@dataclass
class StepBenchmark(BenchSettings):
    identities_per_batch: int
    images_per_modality: int
    steps: int
    warmup: int
    phase_ms: dict[str, float] = field(default_factory=dict)
    """Mean exclusive ms per step of each phase; "other" is the step time outside every phase."""
    phased_step_ms: float = 0.0
    step_ms: float = 0.0
    """Mean step time of the plain pass (no per-phase synchronisation)."""
    images_per_s: float = 0.0
    flops_per_image: int = 0
    achieved_tflops: float = 0.0
    precision: str = "fp32"
    peak_tflops: float | None = None
    peak_fraction: float | None = None
    peak_memory_mb: float = 0.0
    memory_kind: str = ""

    def phase_percent(self) -> dict[str, float]:
        return {k: 100.0 * v / self.phased_step_ms for k, v in self.phase_ms.items()} if self.phased_step_ms else {}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "phase_percent": self.phase_percent()}


def measure_step(cfg: TrialConfig, height: int, width: int, *, steps: int, warmup: int,
                 compile_backend: str = "inductor") -> StepBenchmark:
    """Count FLOPs once, warm up, then time a phased pass and a plain pass of `steps` steps each."""
    from harness.trial import peak_memory_mb

    if steps < 1 or warmup < 0:
        raise ConfigError(f"bench: expected --steps >= 1 and --warmup >= 0; got steps={steps}, warmup={warmup}")
    flops: dict[str, int] = {}

    def count_flops(method: ReIDMethod, device: torch.device) -> None:
        """FLOPs of a batch as the trainer makes it (random images through the method's `training_batch`)."""
        batch = 2 * cfg.train.num_identities * cfg.train.images_per_modality
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        images = torch.randint(0, 256, (batch, 3, height, width), generator=generator, dtype=torch.uint8)
        modality = torch.arange(batch).ge(batch // 2).long()
        ids = torch.arange(batch) % cfg.train.num_identities
        cams = torch.where(modality == 0, 0, 2)
        augmentation = torch.Generator(device=device).manual_seed(cfg.seed)
        step_batch = method.training_batch(images.to(device), modality.to(device), ids.to(device), cams.to(device),
                                           augment=train_augmentation(cfg.train, augmentation), generator=augmentation)
        with autocast_context(device, cfg.train.amp):
            flops["step"] = training_step_flops(method, *step_batch)

    timer = PhaseTimer(resolve_device(cfg.train.device))
    setup = build_step_setup(cfg, height, width, timer=timer, compile_backend=compile_backend,
                             before_trainer=count_flops)
    device = setup.device
    for _ in range(warmup):
        setup.step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def mean_step_ms() -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            setup.step()
        synchronize(device)
        return 1000.0 * (time.perf_counter() - start) / steps

    timer.enabled = True
    timer.reset()
    phased_ms = mean_step_ms()
    timer.enabled = False
    phase_ms = {k: 1000.0 * v / steps for k, v in timer.seconds.items()}
    phase_ms["other"] = max(0.0, phased_ms - sum(phase_ms.values()))
    step_ms = mean_step_ms()  # without per-phase synchronisation: the images/s figure

    t = cfg.train
    images_per_s = setup.batch / (step_ms / 1000.0)
    flops_per_image = flops["step"] // setup.batch
    achieved = flops["step"] / (step_ms / 1000.0) / 1e12
    settings = bench_settings(cfg, height, width, setup.batch, device)
    name = settings["device_name"]
    precision = compute_precision(t.amp)
    peak = device_peak_tflops(name, precision) if device.type == "cuda" else None
    return StepBenchmark(
        **settings, identities_per_batch=t.num_identities, images_per_modality=t.images_per_modality, steps=steps,
        warmup=warmup, phase_ms=phase_ms, phased_step_ms=phased_ms, step_ms=step_ms, images_per_s=images_per_s,
        flops_per_image=flops_per_image, achieved_tflops=achieved, precision=precision, peak_tflops=peak,
        peak_fraction=achieved / peak if peak else None, peak_memory_mb=peak_memory_mb(device),
        memory_kind="allocated by torch" if device.type == "cuda" else "process peak RSS")


def format_report(result: StepBenchmark) -> str:
    """Plain-text table of a StepBenchmark."""
    r = result
    lines = [
        f"vireid bench: {r.method} on {r.backbone}, {r.height}x{r.width}, batch {r.batch} "
        f"({r.identities_per_batch} identities x {r.images_per_modality} visible + {r.images_per_modality} infrared)",
        f"device: {r.device_name} [{r.device}]   torch {r.torch_version}   timm {r.timm_version}",
        f"settings: amp={r.amp} channels_last={r.channels_last} compile={r.compile} "
        f"fused_optimizer={r.fused_optimizer}   {r.steps} timed steps per pass after {r.warmup} warm-up steps",
        "",
        f"{'phase':<14}{'mean ms':>10}{'% step':>9}",
    ]
    percent = r.phase_percent()
    for phase, ms in r.phase_ms.items():
        lines.append(f"{phase:<14}{ms:>10.2f}{percent[phase]:>9.1f}")
    lines.append(f"{'step (phased)':<14}{r.phased_step_ms:>10.2f}{sum(percent.values()):>9.1f}")
    lines += [
        "",
        f"step (plain)     {r.step_ms:.2f} ms   {r.images_per_s:.2f} images/s",
        f"FLOPs/image      {r.flops_per_image:,} ({r.flops_per_image / 1e9:.3f} GFLOP, forward + backward of the "
        "training losses)",
        f"achieved         {r.achieved_tflops:.4f} TFLOP/s",
    ]
    if r.peak_tflops is not None:
        lines.append(f"peak fraction    {100 * r.peak_fraction:.2f} % of {r.peak_tflops:g} TFLOP/s dense {r.precision}")
    elif r.device.startswith("cuda"):
        lines.append(f"peak fraction    n/a (no peak known for {r.device_name})")
    lines.append(f"peak memory      {r.peak_memory_mb:.1f} MiB ({r.memory_kind})")
    return "\n".join(lines)


def run_step_benchmark(*, method: str, backbone: str, size: str, batch: int, device: str = "auto", steps: int = 10,
                       warmup: int = 3, amp: str = "none", channels_last: bool = False, compile: bool = False,
                       overrides: dict[str, Any] | None = None, as_json: bool = False) -> str:
    """The `vireid bench` report: a phase table (or JSON with `as_json`) of full training steps."""
    height, width = parse_size(size)
    cfg = bench_config(method, backbone, batch, device=device, amp=amp, channels_last=channels_last,
                       compile=compile, overrides=overrides)
    result = measure_step(cfg, height, width, steps=steps, warmup=warmup)
    return json.dumps(result.to_dict(), indent=2) if as_json else format_report(result)
