"""Dense tensor-core peaks of known GPUs, to state a step's achieved share of the device."""

from __future__ import annotations

import torch

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
