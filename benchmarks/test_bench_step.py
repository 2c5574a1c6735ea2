"""Full training steps: the six presets, accelerated variants of one step, and the augmentation path.

One step = sampling, gather + batched augmentation, network forward, every loss term (with the
MCM discriminator update), backward and the SGD update, as `Trainer.fit` runs it. Each timed
call ends with a device synchronisation, so CUDA timings hold the whole step.

    .venv/bin/python -m pytest benchmarks/test_bench_step.py --benchmark-only -q -p no:cacheprovider

Environment: VIREID_BENCH_DEVICE (auto), VIREID_BENCH_BACKBONE (resnet18 on CPU, resnet50 on
CUDA), VIREID_BENCH_SIZE (128x64 on CPU, 288x144 on CUDA), VIREID_BENCH_BATCH (32 on CPU, 64 on
CUDA), VIREID_BENCH_ROUNDS (5), VIREID_BENCH_COMPILE=0 to leave out the torch.compile variants
(inductor compiles C++ kernels for minutes on a small CPU).
"""

from __future__ import annotations

import os

import pytest
import torch
from torchvision.transforms import v2

from harness.bench import bench_config, build_step_setup, parse_size
from harness.data.augment import IMAGENET_MEAN, IMAGENET_STD, train_augment
from harness.training import resolve_device, synchronize

DEVICE = resolve_device(os.environ.get("VIREID_BENCH_DEVICE", "auto"))
ON_CUDA = DEVICE.type == "cuda"
BACKBONE = os.environ.get("VIREID_BENCH_BACKBONE", "resnet50" if ON_CUDA else "resnet18")
HEIGHT, WIDTH = parse_size(os.environ.get("VIREID_BENCH_SIZE", "288x144" if ON_CUDA else "128x64"))
BATCH = int(os.environ.get("VIREID_BENCH_BATCH", "64" if ON_CUDA else "32"))
ROUNDS = int(os.environ.get("VIREID_BENCH_ROUNDS", "5"))
WARMUP_ROUNDS = 2  # the first step compiles (torch.compile) and picks kernels
WITH_COMPILE = os.environ.get("VIREID_BENCH_COMPILE", "1") != "0"

PRESETS = ["agw", "agw+mcm", "agw+mcm+center", "agw+mcm+ica", "mclnet", "mclnet-no-mcm"]
_compile = pytest.mark.skipif(not WITH_COMPILE, reason="VIREID_BENCH_COMPILE=0")
VARIANTS = [
    pytest.param({}, id="fp32-eager"),
    pytest.param({"amp": "bf16"}, id="bf16-autocast"),
    pytest.param({"channels_last": True}, id="channels-last"),
    pytest.param({"fused_optimizer": True}, id="fused-sgd"),
    pytest.param({"compile": True}, id="compile", marks=_compile),
    pytest.param({"amp": "bf16", "channels_last": True, "compile": True, "fused_optimizer": True}, id="all",
                 marks=_compile),
]
AUGMENT_BATCH = 64
PAD, ERASING_P, ERASING_AREA = 10, 0.5, (0.02, 0.4)


def describe(benchmark, images: int, **info: object) -> None:
    benchmark.extra_info.update(device=str(DEVICE), size=f"{HEIGHT}x{WIDTH}", batch=images, **info)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = round(images / benchmark.stats.stats.mean, 1)


def time_steps(benchmark, method: str, train: dict[str, object]) -> None:
    cfg = bench_config(method, BACKBONE, BATCH, device=str(DEVICE),
                       overrides={f"train.{k}": v for k, v in train.items()})
    setup = build_step_setup(cfg, HEIGHT, WIDTH)

    def step() -> None:
        setup.step()
        synchronize(DEVICE)

    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    describe(benchmark, setup.batch, method=method, backbone=BACKBONE, **train)


@pytest.mark.benchmark(group="train step: presets")
@pytest.mark.parametrize("method", PRESETS)
def test_preset_step(benchmark, method):
    time_steps(benchmark, method, {})


@pytest.mark.benchmark(group="train step: acceleration (mclnet)")
@pytest.mark.parametrize("train", VARIANTS)
def test_accelerated_step(benchmark, train):
    time_steps(benchmark, "mclnet", train)


def per_image_pipeline() -> v2.Compose:
    """torchvision's transforms v2 doing the same ops, one image (one parameter draw) per call."""
    return v2.Compose([
        v2.Pad(PAD),
        v2.RandomCrop((HEIGHT, WIDTH)),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        v2.RandomErasing(p=ERASING_P, scale=ERASING_AREA, value="random"),
    ])


@pytest.mark.benchmark(group="data: augmentation of a 64-image batch")
@pytest.mark.parametrize("implementation", ["batched", "per-image-v2-loop"])
def test_augmentation(benchmark, implementation):
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    images = torch.randint(0, 256, (AUGMENT_BATCH, 3, HEIGHT, WIDTH), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(DEVICE)
    if implementation == "batched":
        def augment() -> torch.Tensor:
            return train_augment(images, generator, pad=PAD, flip=True, erasing_p=ERASING_P, erasing_area=ERASING_AREA)
    else:
        pipeline = per_image_pipeline()

        def augment() -> torch.Tensor:
            return torch.stack([pipeline(image) for image in images])

    def run() -> None:
        out = augment()
        assert out.shape == (AUGMENT_BATCH, 3, HEIGHT, WIDTH) and out.dtype == torch.float32
        synchronize(DEVICE)

    benchmark.pedantic(run, rounds=max(ROUNDS, 10), warmup_rounds=2, iterations=1)
    describe(benchmark, AUGMENT_BATCH, implementation=implementation)
