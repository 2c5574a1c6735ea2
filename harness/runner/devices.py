"""Which GPU each worker process sees: CUDA_VISIBLE_DEVICES, set in the child's environment
before torch starts, so every worker's `cuda:0` is its own device."""

from __future__ import annotations

import os
import re

from harness.errors import ConfigError, check_int

GPU_ID = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z-]+)$")


def parse_gpus(text: str | None) -> list[str] | None:
    """`--gpus 0,1,2,3` -> ['0', '1', '2', '3']; '' or 'none' -> [] (CPU workers); None -> None (default)."""
    if text is None:
        return None
    text = str(text).strip()
    if text.lower() in ("", "none", "cpu"):
        return []
    ids = [part.strip() for part in text.split(",")]
    bad = [i for i in ids if not GPU_ID.match(i)]
    if bad or len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus: {text!r} is not a comma-separated list of distinct GPU indices or UUIDs "
                          "(e.g. 0,1,2,3), or 'none' for CPU workers")
    return ids


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES where set, else every device torch counts."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and not g.strip().startswith("-")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def worker_devices(gpus: list[str], *, workers: int | None, trials_per_gpu: int | None,
                   default_workers: int = 1) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each worker: GPUs round-robin, K workers per GPU; '' means CPU.

    Without GPUs every worker is a CPU worker (`default_workers` of them unless `workers` says).
    """
    per_gpu = check_int(trials_per_gpu if trials_per_gpu is not None else 1, "--trials-per-gpu", minimum=1)
    if workers is not None:
        check_int(workers, "--workers", minimum=1)
    if not gpus:
        if trials_per_gpu is not None:
            raise ConfigError("--trials-per-gpu: no GPU is visible (or --gpus none); use --workers for CPU workers")
        return [""] * (workers if workers is not None else default_workers)
    capacity = len(gpus) * per_gpu
    count = workers if workers is not None else capacity
    if count > capacity:
        raise ConfigError(f"--workers: {count} workers do not fit {len(gpus)} GPU(s) x {per_gpu} trial(s) per GPU; "
                          "raise --trials-per-gpu or lower --workers")
    return [gpus[i % len(gpus)] for i in range(count)]
