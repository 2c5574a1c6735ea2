"""What identifies a result: the key of its configuration, the library versions and the hardware
that computed it.

Same config + seed + library versions + hardware gives the same numbers; another CPU gives other
digits (its kernels choose other instructions and summation orders), so records and saved models
carry all three.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.config import TrialConfig


def config_key(cfg: TrialConfig) -> str:
    """Stable id of a trial's full configuration (identical configs share results and checkpoints).

    A `model.pretrained_file` enters by its content (SHA-256) as well as its path: other weights
    under the same name are another trial, never a finished one to skip or a checkpoint to resume.
    A key added later that holds its default is left out (harness.config_schema.added_key).
    """
    data = keyed_config(cfg)
    weights = cfg.model.pretrained_file
    if weights is not None and os.path.isfile(weights):
        data["model"]["pretrained_file_sha256"] = file_sha256(weights)
    blob = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def keyed_config(cfg: TrialConfig) -> dict[str, Any]:
    """The configuration as keys hash it: every key but the added keys at their default."""
    return cfg.key_dict()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """The versions a result depends on (imported here, so reading a record needs no torch)."""
    import numpy as np
    import timm
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__}


def _cpu_model() -> tuple[str, str]:
    """(model name, vendor) of the CPU from /proc/cpuinfo; platform's answer elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            text = handle.read(1 << 16)
    except OSError:
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    model = fields.get("model name") or platform.processor() or platform.machine()
    return model, fields.get("vendor_id", "")


def _nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version (Linux), or None where it cannot be read."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as handle:
            line = handle.readline()
    except OSError:
        return None
    words = line.split()
    return next((w for w in words if w[:1].isdigit() and "." in w), None)


def hardware_fingerprint(device: str | object = "cpu") -> dict[str, str | int | None]:
    """What a result's digits depend on besides the code and the library versions.

    CPU: model and vendor, ATen's kernel dispatch (`get_cpu_capability`), the intra-op threads and the
    numerics mode (`harness.numerics`); on CUDA also the GPU, its compute capability and the CUDA,
    cuDNN and driver versions. Two records with equal fingerprints (and versions) repeat digit for digit.
    """
    import torch

    from harness.numerics import active_numerics_mode

    model, vendor = _cpu_model()
    out: dict[str, str | int | None] = {
        "cpu": model, "cpu_vendor": vendor, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "numerics": active_numerics_mode(),
    }
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   cudnn=str(torch.backends.cudnn.version()), driver=_nvidia_driver())
    return out


def hardware_label(fingerprint: dict) -> str:
    """A fingerprint in one line, for captions and the record's `device` field."""
    threads = fingerprint.get("threads")
    cpu = (f"{fingerprint.get('cpu')}, {fingerprint.get('cpu_capability')}, "
           f"{threads} thread{'' if threads == 1 else 's'}")
    if fingerprint.get("numerics") not in (None, "native"):
        cpu += f", {fingerprint['numerics']} numerics"
    if fingerprint.get("gpu"):
        return (f"{fingerprint['gpu']} (CUDA {fingerprint.get('cuda')}, cuDNN {fingerprint.get('cudnn')}, "
                f"driver {fingerprint.get('driver') or '?'}; host {cpu})")
    return f"cpu ({cpu})"


def device_label(device: str | object = "cpu") -> str:
    """The device a result was computed on, in one line (the record's `device` field)."""
    return hardware_label(hardware_fingerprint(device))


def environment_fields(device: str | object = "cpu") -> dict[str, str]:
    """The record fields that say what computed a result: `device` (one line), `hardware` (the
    fingerprint, JSON) and `versions` (JSON). Tables warn when the rows of one table differ in them."""
    fingerprint = hardware_fingerprint(device)
    return {"device": hardware_label(fingerprint), "hardware": json.dumps(fingerprint, sort_keys=True),
            "versions": json.dumps(library_versions())}


FINGERPRINT_KEYS = ("cpu", "cpu_vendor", "cpu_capability", "threads", "numerics", "gpu", "cuda", "cudnn")
"""The fingerprint entries two results must share to repeat digit for digit in the native mode."""


def repeats_exactly(reference: dict | None, fresh: dict) -> bool:
    """Whether a result made on `reference`'s hardware is expected digit for digit on `fresh`'s (same
    code, config and library versions): the same fingerprint, or the portable numerics mode on both
    sides on the CPU (its kernels are chosen by no CPU). An unknown fingerprint promises nothing."""
    if not reference:
        return False
    if reference.get("numerics") == fresh.get("numerics") == "portable" and not (
            reference.get("gpu") or fresh.get("gpu")):
        return True
    return all(reference.get(k) == fresh.get(k) for k in FINGERPRINT_KEYS)
