"""Method registry: `@register_method` next to a method's definition, `create_method` to build one.

A method is an `nn.Module` with `forward(images, modality) -> dict` (at least `pool`, `bn`) and
`training_losses(images, modality, pids, cams) -> dict[str, Tensor]` (weighted loss terms),
plus `param_groups(train_cfg) -> list[dict]` for the optimiser. Adding a method is one file in
`methods/` that registers a builder, plus its import in `methods/__init__.py`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from harness.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from harness.config import TrialConfig

Builder = Callable[..., "nn.Module"]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    builder: Builder
    description: str
    switches: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Composer:
    """Parses `base+tok+tok` names of a method family into switches for its builder."""

    base: str
    parse: Callable[[list[str]], dict[str, Any]]
    builder: Builder
    tokens_help: str


_METHODS: dict[str, MethodInfo] = {}
_COMPOSERS: dict[str, Composer] = {}
BUILTIN_METHOD_MODULES = ("methods.mclnet",)


def _load_builtin() -> None:
    """Import the built-in method files (they register themselves) on first use, not at import."""
    import importlib

    for module in BUILTIN_METHOD_MODULES:
        importlib.import_module(module)


def register_method(name: str, *, builder: Builder, description: str, **switches: Any) -> MethodInfo:
    if name in _METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    info = MethodInfo(name=name, builder=builder, description=description, switches=dict(switches))
    _METHODS[name] = info
    return info


def register_composer(base: str, *, parse: Callable[[list[str]], dict[str, Any]], builder: Builder,
                      tokens_help: str) -> None:
    _COMPOSERS[base] = Composer(base=base, parse=parse, builder=builder, tokens_help=tokens_help)


def list_methods() -> list[MethodInfo]:
    _load_builtin()
    return list(_METHODS.values())


def resolve_method(name: str) -> MethodInfo:
    """A registered preset, or a `family+switch+switch` combination of a registered family."""
    _load_builtin()
    if name in _METHODS:
        return _METHODS[name]
    base, *tokens = name.split("+")
    if base in _COMPOSERS:
        composer = _COMPOSERS[base]
        switches = composer.parse(tokens)  # raises ConfigError on an unknown token
        return MethodInfo(name=name, builder=composer.builder, description="custom combination", switches=switches)
    close = difflib.get_close_matches(name, list(_METHODS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    combos = "; ".join(f"{c.base}+<{c.tokens_help}>" for c in _COMPOSERS.values())
    raise ConfigError(
        f"method: unknown method {name!r}.{hint} Registered methods: {', '.join(_METHODS)}"
        + (f"; combinations: {combos}" if combos else "")
    )


def create_method(cfg: "TrialConfig", num_classes: int, num_cameras: int) -> "nn.Module":
    info = resolve_method(cfg.method)
    return info.builder(cfg, num_classes=num_classes, num_cameras=num_cameras, **info.switches)
