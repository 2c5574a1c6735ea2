"""Numerics modes: which CPU kernels torch's libraries choose, fixed before torch starts.

`native` (the default): ATen, oneMKL and oneDNN each dispatch for the CPU they run on. Fastest, and
the digits depend on the CPU: another model (an AMD EPYC against an Intel Xeon, both AVX-512) trains
the same trial to other numbers, because the kernels use other instructions, cache blockings and
summation orders.

`portable`: the kernels a CPU cannot change. ATen's vectorised kernels at AVX2
(`ATEN_CPU_CAPABILITY=avx2`: every x86-64 CPU CI may use has it), oneMKL's conditional numerical
reproducibility on its COMPATIBLE branch (`MKL_CBWR=COMPATIBLE,STRICT`: SSE2 code, fixed cache
sizes and reductions, the same on Intel and AMD, which no other branch promises) and oneDNN off
(`torch.backends.mkldnn`), so convolutions run as ATen's im2col + oneMKL GEMM. Same config, seed,
versions and thread count give the same digits on any such CPU, at about twice the CPU time
(README, "Numbers and hardware").

The mode is a property of the process: the environment variables are read once, when ATen and
oneMKL first dispatch. `vireid --numerics portable ...` (or `VIREID_NUMERICS=portable`) sets them
before anything imports torch, worker processes inherit them, and every record names the mode that
was in force (`harness.provenance.hardware_fingerprint`), checked rather than assumed.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import MutableMapping

from harness.errors import ConfigError

NUMERICS_ENV = "VIREID_NUMERICS"
MODES = ("native", "portable")
PORTABLE_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE,STRICT"}
"""The library settings of the portable mode (oneDNN is switched off through torch, not the environment)."""

_MKL_CBWR_ALL = -1           # mkl_cbwr_get(MKL_CBWR_ALL): the branch and its flags
_MKL_CBWR_COMPATIBLE = 3
_MKL_CBWR_STRICT = 0x10000


def requested_mode(environ: MutableMapping[str, str] | None = None) -> str:
    """The mode `VIREID_NUMERICS` asks for (native where unset); a ConfigError names a wrong value."""
    value = (environ if environ is not None else os.environ).get(NUMERICS_ENV, "native").strip() or "native"
    if value not in MODES:
        raise ConfigError(f"{NUMERICS_ENV}={value!r}: expected one of {', '.join(MODES)}")
    return value


def apply_numerics(mode: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Set `mode` for this process and the processes it starts; call before torch is imported.

    Refused (ConfigError) where torch is already imported and the mode would change: its kernels
    are chosen and a record would name a mode that is not in force.
    """
    environ = environ if environ is not None else os.environ
    if mode not in MODES:
        raise ConfigError(f"--numerics {mode!r}: expected one of {', '.join(MODES)}")
    wanted = dict(PORTABLE_ENVIRONMENT) if mode == "portable" else {}
    conflicting = {k: environ[k] for k in PORTABLE_ENVIRONMENT if k in environ and environ[k] != wanted.get(k)}
    if mode == "portable" and conflicting:
        raise ConfigError("--numerics portable sets " + ", ".join(f"{k}={v}" for k, v in wanted.items())
                          + "; the environment already sets " + ", ".join(f"{k}={v}" for k, v in conflicting.items())
                          + ": unset them, or run without --numerics portable")
    if "torch" in sys.modules and environ is os.environ and mode != active_numerics_mode():
        raise ConfigError(f"numerics mode {mode!r} must be chosen before torch is imported "
                          f"(this process runs {active_numerics_mode()!r}); set {NUMERICS_ENV}={mode} "
                          "in the environment that starts Python")
    environ[NUMERICS_ENV] = mode
    environ.update(wanted)
    if "torch" in sys.modules:
        configure_torch()


def configure_torch() -> None:
    """The torch-side switch of the mode in force (oneDNN off in portable mode); idempotent."""
    import torch

    if requested_mode() == "portable":
        torch.backends.mkldnn.enabled = False


def _mkl_branch() -> int | None:
    """oneMKL's CNR setting as the library reports it (None where torch carries no oneMKL)."""
    import torch

    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return int(get(_MKL_CBWR_ALL))


def active_numerics_mode() -> str:
    """The mode in force in this process, read back from the libraries: `native`, `portable`, or a
    description of a mixed setting (e.g. `custom: ATen AVX2`)."""
    import torch

    configure_torch()
    capability = torch.backends.cpu.get_cpu_capability()
    branch = _mkl_branch()
    mkl_compatible = branch is not None and branch & ~_MKL_CBWR_STRICT == _MKL_CBWR_COMPATIBLE
    onednn_off = not torch.backends.mkldnn.enabled
    if capability == "AVX2" and (mkl_compatible or branch is None) and onednn_off:
        return "portable"
    parts = [f"ATen {capability}" if "ATEN_CPU_CAPABILITY" in os.environ else "",
             f"oneMKL CNR branch {branch}" if branch not in (None, 1, 2) or "MKL_CBWR" in os.environ else "",
             "oneDNN off" if onednn_off else "",
             f"oneDNN ISA {os.environ['ONEDNN_MAX_CPU_ISA']}" if "ONEDNN_MAX_CPU_ISA" in os.environ else ""]
    parts = [p for p in parts if p]
    return "native" if not parts else "custom: " + ", ".join(parts)
