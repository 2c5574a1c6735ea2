"""Method registry: `@register_method` next to a method's builder, `create_method` to build one.

A builder returns a `methods.base.ReIDMethod` (the contract: training_losses, test_features,
param_groups, optional compile_network, phase_timer). It receives only the config sections it
declares in `configs` (each passed as `<section>_cfg`, e.g. `model_cfg=cfg.model`), the label
space (`num_classes`, `num_cameras`) and the registration's switches. Every module in the
`methods` package is imported on first use, so adding a method is one file in `methods/` whose
builder carries `@register_method(...)`.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from harness.config import TrialConfig
    from methods.base import ReIDMethod

Builder = Callable[..., "ReIDMethod"]
NetworkCheck = Callable[["TrialConfig"], None]
CONFIG_SECTIONS = ("data", "model", "loss", "mcm", "deen", "train", "evaluation")


@dataclass(frozen=True)
class MethodInfo:
    name: str
    builder: Builder
    description: str
    switches: dict[str, Any] = field(default_factory=dict)
    configs: tuple[str, ...] = ()
    """The TrialConfig sections the builder receives."""
    check: NetworkCheck | None = None
    """Raises ConfigError when the method's network cannot be built from a config (backbone, input size);
    harness.preflight runs it for every grid point before anything trains. None: nothing to check."""


@dataclass(frozen=True)
class Composer:
    """Parses `base+tok+tok` names of a method family into switches for its builder."""

    base: str
    parse: Callable[[list[str]], dict[str, Any]]
    builder: Builder
    tokens_help: str
    configs: tuple[str, ...] = ()
    check: NetworkCheck | None = None


_METHODS: dict[str, MethodInfo] = {}
_COMPOSERS: dict[str, Composer] = {}
_LOADED = False


def _load_builtin() -> None:
    """Import every module of the `methods` package once (each registers its methods), on first use."""
    global _LOADED
    if _LOADED:
        return
    package = __name__.rpartition(".")[0]  # the folder this module is in, found without importing it
    for module in pkgutil.iter_modules([str(Path(__file__).resolve().parent)]):
        importlib.import_module(f"{package}.{module.name}")
    _LOADED = True


def _check_sections(name: str, configs: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [c for c in configs if c not in CONFIG_SECTIONS]
    if unknown:
        raise ValueError(f"method {name!r}: unknown config section(s) {unknown}; known: {', '.join(CONFIG_SECTIONS)}")
    return tuple(configs)


def register_method(name: str, *, description: str, configs: tuple[str, ...] = (), builder: Builder | None = None,
                    check: NetworkCheck | None = None, **switches: Any) -> Any:
    """Register `name`; as a decorator on the builder, or directly with `builder=`.

    `configs` names the TrialConfig sections the builder receives; `switches` are passed to it
    as keyword arguments (and listed by `vireid methods`); `check(cfg)` is the method's network
    check run before anything trains (MethodInfo.check).
    """
    def register(function: Builder) -> Builder:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        _METHODS[name] = MethodInfo(name=name, builder=function, description=description, switches=dict(switches),
                                    configs=_check_sections(name, configs), check=check)
        return function

    if builder is not None:
        return register(builder)
    return register


def register_composer(base: str, *, parse: Callable[[list[str]], dict[str, Any]], builder: Builder,
                      tokens_help: str, configs: tuple[str, ...] = (), check: NetworkCheck | None = None) -> None:
    """Accept `base+tok+tok` method names: `parse(tokens)` gives the builder's switches."""
    _COMPOSERS[base] = Composer(base=base, parse=parse, builder=builder, tokens_help=tokens_help,
                                configs=_check_sections(base, configs), check=check)


def list_methods() -> list[MethodInfo]:
    _load_builtin()
    return list(_METHODS.values())


def list_composers() -> list[Composer]:
    """The method families that accept `base+tok+tok` names."""
    _load_builtin()
    return list(_COMPOSERS.values())


def resolve_method(name: str) -> MethodInfo:
    """A registered preset, or a `family+switch+switch` combination of a registered family."""
    _load_builtin()
    if name in _METHODS:
        return _METHODS[name]
    base, *tokens = name.split("+")
    if base in _COMPOSERS:
        composer = _COMPOSERS[base]
        switches = composer.parse(tokens)  # raises ConfigError on an unknown token
        return MethodInfo(name=name, builder=composer.builder, description="custom combination", switches=switches,
                          configs=composer.configs, check=composer.check)
    close = difflib.get_close_matches(name, list(_METHODS), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    combos = "; ".join(f"{c.base}+<{c.tokens_help}>" for c in _COMPOSERS.values())
    raise ConfigError(
        f"method: unknown method {name!r}.{hint} Registered methods: {', '.join(_METHODS)}"
        + (f"; combinations: {combos}" if combos else "")
    )


def create_method(cfg: TrialConfig, num_classes: int, num_cameras: int) -> ReIDMethod:
    """Build `cfg.method` from the config sections its builder declares."""
    info = resolve_method(cfg.method)
    sections = {f"{section}_cfg": getattr(cfg, section) for section in info.configs}
    return info.builder(**sections, num_classes=num_classes, num_cameras=num_cameras, **info.switches)
