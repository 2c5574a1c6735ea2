"""Input checks and the compute precision of the functional losses (methods.losses).

Each check names the loss and the argument, and raises harness.errors.InputError: bad tensors
are the caller's input, found before any arithmetic.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch
from torch import Tensor

from harness.errors import InputError


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast would silently run the distance matmuls in half precision again."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know cannot be autocasting either
        return contextlib.nullcontext()


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def check_matrix(loss_name: str, field: str, value: Tensor, dims: str) -> None:
    """`value` must be a 2-D floating tensor; `dims` names its axes in the message."""
    if not isinstance(value, Tensor) or value.dim() != 2 or not value.is_floating_point():
        raise InputError(f"{loss_name}: {field} must be a 2-D floating tensor ({dims}); got {describe(value)}")


def check_features(loss_name: str, features: Tensor) -> None:
    check_matrix(loss_name, "features", features, "N, D")
    if features.shape[0] == 0:
        raise InputError(f"{loss_name}: features is an empty batch (shape {tuple(features.shape)})")


def check_labels(loss_name: str, labels: Tensor, values: Tensor, field: str = "labels") -> None:
    """`labels` must hold one integer per row of `values`, on the device of `values`."""
    batch_size = values.shape[0]
    if (
        not isinstance(labels, Tensor)
        or labels.dim() != 1
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
    ):
        raise InputError(
            f"{loss_name}: {field} must be a 1-D integer tensor (N,); got {describe(labels)}"
        )
    if labels.shape[0] != batch_size:
        raise InputError(
            f"{loss_name}: {field} has {labels.shape[0]} entries but the batch has {batch_size} samples"
        )
    if labels.device != values.device:
        raise InputError(
            f"{loss_name}: {field} are on {labels.device} but the batch is on {values.device}"
        )


def check_centers(loss_name: str, features: Tensor, labels: Tensor, centers: Tensor) -> None:
    check_matrix(loss_name, "centers", centers, "num_classes, D")
    if centers.shape[0] == 0:
        raise InputError(f"{loss_name}: centers has no rows (shape {tuple(centers.shape)})")
    if centers.shape[1] != features.shape[1]:
        raise InputError(
            f"{loss_name}: centers have dimension {centers.shape[1]} but features have "
            f"dimension {features.shape[1]}"
        )
    if centers.device != features.device:
        raise InputError(
            f"{loss_name}: centers are on {centers.device} but features are on {features.device}"
        )
    check_label_range(loss_name, labels, centers.shape[0])


def check_label_range(loss_name: str, labels: Tensor, num_classes: int, field: str = "labels") -> None:
    """Range check of CPU labels only.

    Reading the range of accelerator labels back would cost a host sync in every call of every
    loss; there the labels come from the trainer's tables, whose class counts are derived from the
    same labels, and an out-of-range index still fails in the indexing kernel.
    """
    if labels.device.type != "cpu":
        return
    low, high = torch.aminmax(labels)
    low, high = int(low), int(high)
    if low < 0 or high >= num_classes:
        raise InputError(
            f"{loss_name}: {field} must lie in [0, {num_classes}) to index {num_classes} classes; "
            f"got values from {low} to {high}"
        )


def describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"shape {tuple(value.shape)}, dtype {value.dtype}"
    return f"a {type(value).__name__}"


def check_margin(loss_name: str, field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InputError(f"{loss_name}: {field} must be a finite number; got {value!r}")
    return float(value)


def check_logits(loss_name: str, logits: Tensor) -> None:
    check_matrix(loss_name, "logits", logits, "N, num_modalities")
    if logits.shape[0] == 0 or logits.shape[1] < 2:
        raise InputError(
            f"{loss_name}: logits need at least one sample and two modalities; got shape "
            f"{tuple(logits.shape)}"
        )
