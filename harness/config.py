"""Trial configuration: plain nested dataclasses, validated on construction from dicts.

A trial is fully described by one `TrialConfig`; sweeps vary it by dotted paths
(`loss.ica.sigma`, `train.lr`). There is no global mutable config: every function receives
the config it needs.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from harness.errors import HarnessError


@dataclass
class SyntheticConfig:
    """Size and layout of the built-in procedural dataset (written once into a cache folder)."""

    layout: Literal["sysu", "regdb", "llcm"] = "sysu"
    """Which real dataset's layout (and so protocols) the synthetic tree is written in."""
    num_identities: int = 60
    images_per_camera: int = 4
    height: int = 128
    width: int = 64
    seed: int = 0


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    """synthetic (generated, in the layout data.synthetic.layout) | sysu | regdb | llcm."""
    root: str | None = None
    """Dataset root folder; ignored for synthetic (its cache folder is used)."""
    height: int = 288
    width: int = 144
    trial: int = 1
    """RegDB split 1..10 (each split trains its own model)."""
    modes: list[str] = field(default_factory=lambda: ["all", "indoor"])
    """SYSU-style search modes to evaluate."""
    shots: list[int] = field(default_factory=lambda: [1])
    """Gallery shots per (identity, camera): 1 = single-shot, 10 = multi-shot."""
    gallery_trials: int = 10
    val_identities: int = 0
    """Training identities held out as a validation protocol (0 = none)."""
    cache_dir: str | None = None
    """Where decoded images and synthetic trees are cached (default ~/.cache/vireid)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    pretrained_file: str | None = None
    """Local weights file (.pth / .safetensors); the harness never downloads."""
    non_local: bool = True
    non_local_ratio: float = 0.5
    """Inner channels of a non-local block as a fraction of its input channels."""
    last_stride_one: bool = True
    gem_p: float = 3.0
    test_feature: Literal["bn", "pool"] = "bn"
    """Which feature is used at test time: BNNeck output or L2-normalised pooled feature."""


@dataclass
class MarginalCenterConfig:
    weight: float = 0.0005
    sigma: float = 8.0
    rho: float = 4500.0


@dataclass
class LossConfig:
    ce_weight: float = 1.0
    label_smoothing: float = 0.0
    wrt_weight: float = 1.0
    mcm_weight: float = 1.0
    center_weight: float = 0.0005
    ica: MarginalCenterConfig = field(default_factory=MarginalCenterConfig)
    cca: MarginalCenterConfig = field(default_factory=MarginalCenterConfig)
    variant: Literal["paper", "authors-code"] = "paper"
    """Marginal center semantics: the paper's (learnable centers, per-sample hinge) or the public code's."""


@dataclass
class MCMConfig:
    hidden: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0005
    batchnorm_out: bool = False
    """BatchNorm1d(2) after the classifier, as in the public code."""


@dataclass
class TrainConfig:
    epochs: int = 80
    iters_per_epoch: int | None = None
    """None: one pass over the visible training images per epoch."""
    num_identities: int = 8
    """P: identities per batch."""
    images_per_modality: int = 4
    """K: visible and K infrared images per identity per batch."""
    lr: float = 0.01
    head_lr: float = 0.1
    center_lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0005
    warmup_epochs: int = 10
    milestones: list[int] = field(default_factory=lambda: [20, 50])
    gamma: float = 0.1
    pad: int = 10
    flip: bool = True
    erasing_p: float = 0.5
    grayscale_p: float = 0.0
    """Probability of showing a training image without colour (0 = off, as in AGW/MCLNet)."""
    erasing_area: list[float] = field(default_factory=lambda: [0.02, 0.4])
    amp: Literal["none", "bf16", "fp16"] = "none"
    channels_last: bool = False
    compile: bool = False
    fused_optimizer: bool = False
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    threads: int | None = None
    """torch intra-op threads on CPU (None: torch's default)."""
    eval_batch_size: int = 128


@dataclass
class TrialConfig:
    method: str = "mclnet"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mcm: MCMConfig = field(default_factory=MCMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, where: str = "config") -> "TrialConfig":
        return build_dataclass(cls, data or {}, where)

    def with_overrides(self, overrides: dict[str, Any], *, where: str = "override") -> "TrialConfig":
        merged = self.to_dict()
        for dotted, value in overrides.items():
            set_dotted(merged, dotted, value, where=where)
        return TrialConfig.from_dict(merged, where=where)


# --------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise HarnessError(f"{where}: expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        return build_dataclass(tp, value, where)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(option, value, where)
            except HarnessError as exc:
                errors.append(exc)
        raise HarnessError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise HarnessError(f"{where}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise HarnessError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            raise HarnessError(f"{where}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise HarnessError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise HarnessError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HarnessError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise HarnessError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def build_dataclass(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise HarnessError(f"{path}: unknown key{hint}; accepted keys: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def field_paths(cls: type = TrialConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf path of a config class (for messages and search-space validation)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out += field_paths(hints[f.name], path + ".")
        else:
            out.append(path)
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, *, where: str = "override") -> None:
    node = tree
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            close = difflib.get_close_matches(dotted, field_paths(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise HarnessError(f"{where}: unknown config key {dotted!r}{hint}")
        if i == len(parts) - 1:
            node[part] = copy.deepcopy(value)
        else:
            node = node[part]


def get_dotted(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` from the command line; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise HarnessError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=2")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise HarnessError(f"override {text!r}: value is not valid YAML ({exc})") from None
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise HarnessError(f"{path}: malformed YAML{at}: {problem}") from None
