"""THE reader of weights files, and the one check that a file's tensors fit a network.

Every weights file the harness reads goes through `read_weights`: a saved model's weights (`vireid
eval / extract / show / export-backbone`) and `model.pretrained_file` (the pre-run check and the
backbone's initialisation). Nothing read can run code: safetensors holds no code, and torch files
load with `weights_only=True` (through timm's reader, which also unwraps training checkpoints:
`state_dict_ema` / `model_ema` first, then `state_dict` / `model`, and DataParallel's `module.`
prefix). The safetensors metadata the harness writes says which kind of file it is: a saved model
(the whole re-ID network) or an exported backbone (what `model.pretrained_file` takes); anything
else is a plain state dict.

`check_fit` compares a file's tensors with a network's state dict: every name present (or in the
caller's listed exceptions), none left over (but the ignored ones), each of the network's shape
and dtype. Weights are never cast: floats stored as integers are refused, not rounded into place.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.errors import InputError

SAVED_MODEL_FORMAT = "vireid-model/1"
"""safetensors metadata `format` (and card `format`) of a saved model: results/<sweep>/models/<key>.safetensors."""
BACKBONE_FORMAT = "vireid-backbone/1"
"""safetensors metadata `format` (and card `format`) of a backbone written by `vireid export-backbone`."""
SAFETENSORS_SUFFIX = ".safetensors"

_KINDS = {SAVED_MODEL_FORMAT: "a saved model (the whole re-ID network a run keeps)",
          BACKBONE_FORMAT: "an exported backbone (written by `vireid export-backbone`)"}
PLAIN_STATE_DICT = "a plain state dict"

_SHOWN = 5  # names listed per kind of mismatch


@dataclass(frozen=True)
class WeightsFile:
    """The tensors of one weights file, on the CPU, and the metadata it was written with."""

    path: Path
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def format(self) -> str | None:
        return self.metadata.get("format")

    @property
    def kind(self) -> str:
        """What the file is, in words: a saved model, an exported backbone or a plain state dict."""
        return _KINDS.get(self.format or "", PLAIN_STATE_DICT)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def weights_format(path: str | os.PathLike[str]) -> str | None:
    """The `format` a safetensors file's metadata names (its header only is read); None for any other file."""
    from safetensors import SafetensorError, safe_open

    if not str(path).endswith(SAFETENSORS_SUFFIX) or not os.path.isfile(path):
        return None
    try:
        with safe_open(os.fspath(path), "pt") as handle:
            return (handle.metadata() or {}).get("format")
    except (SafetensorError, OSError):
        return None


def read_weights(path: str | os.PathLike[str]) -> WeightsFile:
    """The tensors of a .safetensors file or a torch state dict, or InputError naming the file and why."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no weights file here")
    unreadable = f"{path}: unreadable weights file (expected a .safetensors file or a torch state dict"
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            with safe_open(os.fspath(path), "pt", device="cpu") as handle:
                metadata = dict(handle.metadata() or {})
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 -- no __iter__
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{unreadable}; {_first_line(exc)})") from None
        return WeightsFile(path, tensors, metadata)
    from timm.models import load_state_dict

    try:
        state = load_state_dict(os.fspath(path), weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch.load raises many types for damaged or foreign files
        raise InputError(f"{unreadable} read with weights_only=True; {type(exc).__name__}: "
                         f"{_first_line(exc)})") from None
    if not isinstance(state, Mapping):
        raise InputError(f"{unreadable}; it holds a {type(state).__name__})")
    other = [(name, value) for name, value in state.items() if not isinstance(value, torch.Tensor)]
    if other:
        name, value = other[0]
        raise InputError(f"{unreadable}; entry {name!r} is a {type(value).__name__}, not a tensor)")
    return WeightsFile(path, {str(name): value for name, value in state.items()})


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return f"{names[:_SHOWN]}{more}"


def check_fit(weights: WeightsFile, expected: Mapping[str, torch.Tensor], *, network: str, hint: str = "",
              optional: Collection[str] = (), ignored: Collection[str] = ()) -> None:
    """Raise InputError unless `weights` holds every tensor of `expected` with its shape and dtype.

    `optional`: names of `expected` the file may lack (the network keeps its own value there);
    `ignored`: names the file may hold that the network has not (a classifier left out). `expected`
    may live on the meta device: only names, shapes and dtypes are compared. `hint` ends the message.
    """
    tensors = weights.tensors
    missing = sorted(k for k in expected if k not in tensors and k not in optional)
    unexpected = sorted(k for k in tensors if k not in expected and k not in ignored)
    where = f"{weights.path} is {weights.kind}; its tensors do not fit {network}"
    if missing or unexpected:
        needed = sum(1 for k in expected if k not in optional)
        raise InputError(f"{where}: missing {len(missing)} of the {needed} tensors it needs {_listed(missing)}, "
                         f"{len(unexpected)} unexpected {_listed(unexpected)}{hint}")
    common = sorted(k for k in expected if k in tensors)
    shapes = [f"{k} {tuple(tensors[k].shape)} for {tuple(expected[k].shape)}" for k in common
              if tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if shapes:
        raise InputError(f"{where}: {len(shapes)} tensor(s) of another shape: {_listed(shapes)}{hint}")
    dtypes = [f"{k} {tensors[k].dtype} for {expected[k].dtype}" for k in common
              if tensors[k].dtype != expected[k].dtype]
    if dtypes:
        raise InputError(f"{where}: {len(dtypes)} tensor(s) of another dtype, never cast: {_listed(dtypes)}{hint}")
