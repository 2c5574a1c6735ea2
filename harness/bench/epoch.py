"""`vireid bench --epoch`: one whole training epoch of a dataset-sized train set, and what it implies."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

from harness.bench.setup import (
    BenchSettings,
    bench_config,
    bench_settings,
    build_step_setup,
    parse_image_counts,
    parse_size,
)
from harness.bench.trainsets import BENCH_NUM_CLASSES, SYSU_EVAL_IMAGES, SYSU_TRAIN_INFRARED, SYSU_TRAIN_VISIBLE
from harness.config import TrialConfig
from harness.errors import ConfigError, TrialFailure
from harness.training import synchronize


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
                  warmup: int = 3, estimate_epochs: int | None = None, eval_images: int = SYSU_EVAL_IMAGES,
                  compile_backend: str = "inductor") -> EpochBenchmark:
    """Time one full epoch as a trial trains it (`Trainer.fit`), plus one evaluation's feature extraction.

    An epoch has as many iterations as a trial's (`harness.training.steps_per_epoch`). The images are
    random: speed does not depend on their content. `estimate_epochs` defaults to the epochs of the
    authors' recipe (harness/recipes/mclnet-authors.yaml).
    """
    from harness.recipes import load_recipe
    from harness.trial import extract_features

    if estimate_epochs is None:
        estimate_epochs = int(load_recipe("mclnet-authors").config["train"]["epochs"])

    if warmup < 0 or estimate_epochs < 1 or eval_images < 0:
        raise ConfigError(f"bench --epoch: expected --warmup >= 0, --estimate-epochs >= 1 and --eval-images >= 0; "
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
        raise TrialFailure(
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
                                    channels_last=t.channels_last, flip=cfg.evaluation.flip,
                                    similarity=method.test_similarity)
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
