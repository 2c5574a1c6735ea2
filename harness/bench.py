"""`vireid bench`: time full training steps of a method, phase by phase, on random images.

A step here is exactly what `Trainer.fit` runs per iteration: sample a batch of indices,
gather and augment the uint8 images on the device, network forward, every loss term (with
the MCM discriminator update), backward, optimiser update. Two passes are timed after the
warm-up steps (where torch.compile and cuDNN do their one-off work):

* a phased pass with a synchronising `PhaseTimer`, for the share of each phase;
* a plain pass without per-phase synchronisation, for the throughput (images/s).

FLOPs are counted once, untimed, with torch's FlopCounterMode over one forward + backward of
the method's training losses (convolutions, matmuls and attention only; element-wise work
is free in that count), and compared with the device's dense peak where it is known.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.config import TrialConfig
from harness.data.splits import MODALITY_INFRARED, MODALITY_VISIBLE, ImageSplit
from harness.errors import HarnessError
from harness.training import (PhaseTimer, Trainer, TrialFailure, autocast_context, resolve_device, seed_everything,
                              synchronize)

BENCH_NUM_CLASSES = 395  # SYSU-MM01 training identities
BENCH_NUM_CAMERAS = 6
SYSU_TRAIN_VISIBLE, SYSU_TRAIN_INFRARED = 22_258, 11_909  # SYSU-MM01 training images
# One SYSU-MM01 all-search evaluation pass: 3,803 infrared queries + a multi-shot gallery trial
# (96 test identities x 4 visible cameras x 10 images).
SYSU_EVAL_IMAGES = 3_803 + 96 * 4 * 10
_VISIBLE_CAMERAS = np.array([0, 1, 3, 4])  # SYSU-MM01 (0-based): cam3 and cam6 are infrared
_INFRARED_CAMERAS = np.array([2, 5])

# Dense (no sparsity) tensor-core peaks in TFLOP/s from NVIDIA's data sheets:
# (name fragment, bf16/fp16, tf32, fp32). The first fragment found in the device name wins.
PEAK_TFLOPS: tuple[tuple[str, float, float, float], ...] = (
    ("H100 PCIe", 756.0, 378.0, 51.0),
    ("H100 NVL", 835.0, 418.0, 60.0),
    ("H200", 989.0, 494.0, 67.0),
    ("H100", 989.0, 494.0, 67.0),  # SXM
    ("A100", 312.0, 156.0, 19.5),
    ("L40S", 362.0, 183.0, 91.6),
    ("L4", 121.0, 60.0, 30.3),
    ("A10", 125.0, 62.5, 31.2),
)


def device_peak_tflops(name: str, precision: str) -> float | None:
    """Dense peak TFLOP/s of a known GPU for "bf16" | "tf32" | "fp32"; None when unknown."""
    column = {"bf16": 1, "tf32": 2, "fp32": 3}[precision]
    for entry in PEAK_TFLOPS:
        if entry[0].lower() in name.lower():
            return float(entry[column])
    return None


def compute_precision(amp: str) -> str:
    """Which peak the step is measured against: bf16 (also fp16), tf32 where torch allows it, else fp32."""
    if amp != "none":
        return "bf16"
    tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 else "fp32"


def parse_size(size: str) -> tuple[int, int]:
    """"288x144" -> (288, 144)."""
    parts = str(size).lower().split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise HarnessError(f"bench --size {size!r}: expected HEIGHTxWIDTH in pixels, e.g. 288x144") from None
    if height < 1 or width < 1:
        raise HarnessError(f"bench --size {size!r}: height and width must be positive")
    return height, width


def batch_layout(batch: int, images_per_modality: int) -> tuple[int, int]:
    """(P identities, K images per modality) with 2*P*K == batch and P >= 2 where possible.

    K is `images_per_modality`, lowered until it divides the batch into at least two identities
    (WRT and the center terms need more than one identity per batch).
    """
    if batch < 4 or batch % 2:
        raise HarnessError(f"bench --batch {batch}: expected an even batch of at least 4 (2 identities x "
                           "1 visible + 1 infrared image)")
    for k in range(max(1, images_per_modality), 0, -1):
        if batch % (2 * k) == 0 and batch // (2 * k) >= 2:
            return batch // (2 * k), k
    raise AssertionError("unreachable: k = 1 always fits an even batch >= 4")


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
        raise HarnessError(
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
    from methods import create_method

    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.seed)
    t = cfg.train
    if train_size is None:
        num_classes = BENCH_NUM_CLASSES
        num_identities = min(BENCH_NUM_CLASSES, max(2 * t.num_identities, 8))
        train, images = synthetic_train_set(num_identities, t.images_per_modality, height, width, seed=cfg.seed)
    else:
        num_classes = train_size[0]
        train, images = sized_train_set(*train_size, height, width, seed=cfg.seed, device=device)
    method = create_method(cfg, num_classes, BENCH_NUM_CAMERAS).to(device)
    method.train()
    if before_trainer is not None:
        before_trainer(method, device)
    trainer = Trainer(method, t, train, images, device=device, seed=cfg.seed, timer=timer or PhaseTimer(device),
                      compile_backend=compile_backend)
    return StepSetup(cfg=cfg, method=method, trainer=trainer, device=device, height=height, width=width,
                     batch=trainer.sampler.batch_size)


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

    from harness.trial import device_name

    t = cfg.train
    return dict(method=cfg.method, backbone=cfg.model.backbone, height=height, width=width, batch=batch,
                device=str(device), device_name=device_name(device), torch_version=torch.__version__,
                timm_version=timm.__version__, amp=t.amp, channels_last=t.channels_last, compile=t.compile,
                fused_optimizer=t.fused_optimizer)


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
        raise HarnessError(f"bench: expected --steps >= 1 and --warmup >= 0; got steps={steps}, warmup={warmup}")
    flops: dict[str, int] = {}

    def count_flops(method: nn.Module, device: torch.device) -> None:
        batch = 2 * cfg.train.num_identities * cfg.train.images_per_modality
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        images = torch.randn(batch, 3, height, width, generator=generator).to(device)
        modality = torch.arange(batch).ge(batch // 2).long().to(device)
        ids = torch.arange(batch) % cfg.train.num_identities
        cams = torch.where(modality.cpu() == 0, 0, 2)
        with autocast_context(device, cfg.train.amp):
            flops["step"] = training_step_flops(method, images, modality, ids.to(device), cams.to(device))

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


@dataclass
class EpochBenchmark(BenchSettings):
    """One timed training epoch over a dataset-sized random train set, and what it implies."""

    num_identities: int
    num_visible: int
    num_infrared: int
    images_on_device: bool
    iterations: int
    warmup_steps: int
    warmup_s: float
    """Untimed warm-up steps (torch.compile and cuDNN autotuning happen here, once per run)."""
    epoch_s: float
    """Wall time of `Trainer.fit` for one epoch: every step, its synchronisation and the bookkeeping."""
    train_images_per_s: float
    eval_images: int
    eval_s: float
    """Test-feature extraction of `eval_images` images (inference mode, the trial's autocast)."""
    estimate_epochs: int
    estimate_train_h: float
    estimate_total_h: float
    """warm-up + estimate_epochs x epoch + one final evaluation, in hours."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_epoch(cfg: TrialConfig, height: int, width: int, *, num_identities: int = BENCH_NUM_CLASSES,
                  num_visible: int = SYSU_TRAIN_VISIBLE, num_infrared: int = SYSU_TRAIN_INFRARED,
                  warmup: int = 3, estimate_epochs: int = 200, eval_images: int = SYSU_EVAL_IMAGES,
                  compile_backend: str = "inductor") -> EpochBenchmark:
    """Time one full epoch as a trial trains it (`Trainer.fit`), plus one evaluation's feature extraction.

    An epoch is max(visible, infrared) // batch iterations, as in every trial. The images are
    random: speed does not depend on their content.
    """
    from harness.trial import extract_features

    if warmup < 0 or estimate_epochs < 1 or eval_images < 0:
        raise HarnessError(f"bench --epoch: expected --warmup >= 0, --estimate-epochs >= 1 and --eval-images >= 0; "
                           f"got {warmup}, {estimate_epochs}, {eval_images}")
    cfg = cfg.with_overrides({"train.epochs": 1}, where="bench --epoch")
    t = cfg.train
    setup = build_step_setup(cfg, height, width, compile_backend=compile_backend,
                             train_size=(num_identities, num_visible, num_infrared))
    method, trainer, device = setup.method, setup.trainer, setup.device

    synchronize(device)
    start = time.perf_counter()
    for _ in range(warmup):
        trainer.train_step(trainer.next_indices())
    synchronize(device)
    warmup_s = time.perf_counter() - start

    start = time.perf_counter()
    try:
        trainer.fit()
    except TrialFailure as failure:
        raise HarnessError(
            f"bench --epoch: training diverged after {trainer.stats.images_seen // setup.batch} "
            f"steps, so the epoch cannot be timed ({failure}). Random images from a random init can make the MCM "
            f"adversary blow up at mcm.lr={cfg.mcm.lr:g}; time it with --set mcm.lr=0.01 (the from-scratch "
            "setting of benchmarks/ablation_synthetic.yaml; speed does not depend on it)") from None
    synchronize(device)
    epoch_s = time.perf_counter() - start

    # the evaluation pass is extrapolated from the extraction throughput over (at most) the train images
    eval_count = min(eval_images, len(trainer.images))
    eval_s = 0.0
    if eval_count:
        _, per_s = extract_features(method, trainer.images[:eval_count], trainer.modalities[:eval_count].cpu().numpy(),
                                    device=device, batch_size=t.eval_batch_size, amp=t.amp,
                                    channels_last=t.channels_last)
        eval_s = eval_images / per_s

    train_h = estimate_epochs * epoch_s / 3600
    return EpochBenchmark(
        **bench_settings(cfg, height, width, setup.batch, device), num_identities=num_identities,
        num_visible=num_visible, num_infrared=num_infrared, images_on_device=trainer.images_on_device,
        iterations=trainer.iters_per_epoch, warmup_steps=warmup, warmup_s=warmup_s, epoch_s=epoch_s,
        train_images_per_s=trainer.iters_per_epoch * setup.batch / epoch_s,
        eval_images=eval_images, eval_s=eval_s, estimate_epochs=estimate_epochs, estimate_train_h=train_h,
        estimate_total_h=train_h + (warmup_s + eval_s) / 3600)


def format_epoch_report(result: EpochBenchmark) -> str:
    """Plain-text summary of an EpochBenchmark."""
    r = result
    return "\n".join([
        f"vireid bench --epoch: {r.method} on {r.backbone}, {r.height}x{r.width}, batch {r.batch}",
        f"device: {r.device_name} [{r.device}]   torch {r.torch_version}   timm {r.timm_version}",
        f"settings: amp={r.amp} channels_last={r.channels_last} compile={r.compile} "
        f"fused_optimizer={r.fused_optimizer}",
        f"train set: {r.num_identities} identities, {r.num_visible:,} visible + {r.num_infrared:,} infrared images "
        f"(random uint8, {'in ' + r.device + ' memory' if r.images_on_device else 'in pinned host memory'})",
        "",
        f"warm-up          {r.warmup_steps} steps in {r.warmup_s:.2f} s (compilation and autotuning, once per run)",
        f"epoch            {r.iterations} iterations in {r.epoch_s:.2f} s   {r.train_images_per_s:.1f} images/s",
        f"evaluation       {r.eval_images:,} images extracted in {r.eval_s:.2f} s",
        f"{r.estimate_epochs} epochs       {r.estimate_train_h:.3f} h of training, {r.estimate_total_h:.3f} h with "
        "warm-up and one final evaluation",
    ])


def run_epoch_benchmark(*, method: str, backbone: str, size: str, batch: int, device: str = "auto",
                        warmup: int = 3, amp: str = "none", channels_last: bool = False, compile: bool = False,
                        overrides: dict[str, Any] | None = None, train_images: str | None = None,
                        train_identities: int = BENCH_NUM_CLASSES, estimate_epochs: int = 200,
                        eval_images: int = SYSU_EVAL_IMAGES, as_json: bool = False) -> str:
    """The `vireid bench --epoch` report (JSON with `as_json`)."""
    height, width = parse_size(size)
    num_visible, num_infrared = parse_image_counts(train_images)
    cfg = bench_config(method, backbone, batch, device=device, amp=amp, channels_last=channels_last,
                       compile=compile, overrides=overrides)
    result = measure_epoch(cfg, height, width, num_identities=train_identities, num_visible=num_visible,
                           num_infrared=num_infrared, warmup=warmup, estimate_epochs=estimate_epochs,
                           eval_images=eval_images)
    return json.dumps(result.to_dict(), indent=2) if as_json else format_epoch_report(result)


def parse_image_counts(counts: str | None) -> tuple[int, int]:
    """"22258,11909" -> (22258, 11909); None -> SYSU-MM01's training set."""
    if counts is None:
        return SYSU_TRAIN_VISIBLE, SYSU_TRAIN_INFRARED
    try:
        visible, infrared = (int(c) for c in str(counts).split(","))
    except ValueError:
        raise HarnessError(f"bench --train-images {counts!r}: expected VISIBLE,INFRARED image counts, "
                           "e.g. 22258,11909") from None
    return visible, infrared


def run_step_benchmark(*, method: str, backbone: str, size: str, batch: int, device: str = "auto", steps: int = 10,
                       warmup: int = 3, amp: str = "none", channels_last: bool = False, compile: bool = False,
                       overrides: dict[str, Any] | None = None, as_json: bool = False) -> str:
    """The `vireid bench` report: a phase table (or JSON with `as_json`) of full training steps."""
    height, width = parse_size(size)
    cfg = bench_config(method, backbone, batch, device=device, amp=amp, channels_last=channels_last,
                       compile=compile, overrides=overrides)
    result = measure_step(cfg, height, width, steps=steps, warmup=warmup)
    return json.dumps(result.to_dict(), indent=2) if as_json else format_report(result)
