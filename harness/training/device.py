"""Where a trial runs: device resolution, synchronisation, autocast and memory placement."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from harness.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`train.device` -> a torch device ("auto": CUDA where available, else the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r}: CUDA is not available on this machine; use auto or cpu")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so host clocks measure it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


def autocast_context(device: torch.device, amp: str) -> AbstractContextManager[Any]:
    """The autocast region of `train.amp` ("none" | "bf16" | "fp16")."""
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def fits_on_device(nbytes: int, device: torch.device, fraction: float = 0.25) -> bool:
    """Whether a tensor of `nbytes` may live on the device: at most `fraction` of its free memory."""
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free
