"""The optimiser and learning-rate schedule of a trial: SGD with the AGW warm-up + step schedule."""

from __future__ import annotations

from typing import Any

import torch

from harness.config import TrainConfig


def lr_factor(epoch: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_epochs`, then x gamma at each milestone."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / cfg.warmup_epochs
    return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


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


def build_optimizer(param_groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device
                    ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD over the method's parameter groups and its per-epoch schedule (`lr_factor`)."""
    for group in param_groups:
        group["initial_lr"] = group["lr"]
    optimizer = torch.optim.SGD(param_groups, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay, **sgd_implementation(device, cfg.fused_optimizer))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, cfg))
    return optimizer, scheduler
