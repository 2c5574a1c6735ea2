"""Typed, range-checked configuration dataclasses built from plain mappings (YAML, overrides).

A numeric field declares its valid range next to its default:
`epochs: int = ranged(80, minimum=1)`, `erasing_p: float = ranged(0.5, minimum=0, maximum=1)`,
`lr: float = ranged(0.01, above=0)` (strict bound), list fields with `factory=` and optionally
`length=` / `min_length=` / `ascending=True` (each element is range-checked); a string field whose
values are a registry's names uses `registered(default, names=...)`. A key added after results
were recorded is declared with `added_key(default, ...)` (bounds as `ranged`; `factory=` for a
whole section): at its default it stays out of a configuration's key (`key_data`, what
`harness.provenance.config_key` hashes) and a stored configuration without it reads as holding it
(`fill_added_keys`), so the results, checkpoints and table rows recorded before it keep their
identity; set to anything else it enters the key. `build_dataclass` checks a
mapping against the annotations (ints accepted for floats, unknown keys refused with the closest
name) and the ranges, with a ConfigError naming the dotted key, the value and what is accepted;
`RangeChecked` applies the range checks to a dataclass built directly in Python.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import itertools
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from harness.errors import ConfigError, check_int


@dataclass(frozen=True)
class Range:
    """The valid values of one numeric key (of each element, for list keys)."""

    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    """Strict lower bound (value > above)."""
    below: float | None = None
    """Strict upper bound (value < below)."""
    length: int | None = None
    min_length: int | None = None
    ascending: bool = False
    """List keys: elements in non-decreasing order."""

    def describe(self) -> str:
        parts = []
        if self.minimum is not None:
            parts.append(f">= {self.minimum}")
        if self.above is not None:
            parts.append(f"> {self.above}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum}")
        if self.below is not None:
            parts.append(f"< {self.below}")
        return " and ".join(parts)

    def check_number(self, value: Any, where: str) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        inside = ((self.minimum is None or value >= self.minimum) and (self.maximum is None or value <= self.maximum)
                  and (self.above is None or value > self.above) and (self.below is None or value < self.below))
        if not inside:
            raise ConfigError(f"{where}: expected a value {self.describe()}, got {value!r}")

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, (list, tuple)):
            self.check_number(value, where)
            return
        if self.length is not None and len(value) != self.length:
            raise ConfigError(f"{where}: expected a list of {self.length} values, got {value!r}")
        if self.min_length is not None and len(value) < self.min_length:
            raise ConfigError(f"{where}: expected a list of at least {self.min_length} value(s), got {value!r}")
        for i, item in enumerate(value):
            self.check_number(item, f"{where}[{i}]")
        if self.ascending and any(a > b for a, b in itertools.pairwise(value)):
            raise ConfigError(f"{where}: expected values in ascending order, got {value!r}")


def ranged(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **bounds: Any) -> Any:
    """A dataclass field whose valid range is declared next to its default (see the module docstring)."""
    return field(default=default, default_factory=factory, metadata={"range": Range(**bounds)})


def registered(default: str, *, names: Callable[[], Sequence[str]]) -> Any:
    """A string field whose accepted values are the names of a registry (`names()`), checked like a range."""
    return field(default=default, metadata={"names": names})


def path_field(default: str | None = None) -> Any:
    """A file or folder path field: a relative value read from a file (a sweep spec, a trial config)
    means relative to that file's folder (see `path_keys` and harness.config.resolve_file_paths)."""
    return field(default=default, metadata={"path": True})


def path_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of every `path_field` of a config dataclass and its nested sections."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += path_keys(hints[f.name], f"{prefix}{f.name}.")
        elif f.metadata.get("path"):
            out.append(f"{prefix}{f.name}")
    return out


def added_key(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **bounds: Any) -> Any:
    """A key added after results were recorded, its default being the behaviour from before it existed.

    Declared like `ranged` (bounds; `factory=` for a list or a whole section). At its default the key
    stays out of configuration keys (`key_data`), and a stored configuration without it reads as
    holding it (`fill_added_keys`): finished trials, checkpoints and table rows recorded before the
    key existed keep their identity.
    """
    metadata: dict[str, Any] = {"added": True}
    if bounds or not (dataclasses.is_dataclass(factory) and isinstance(factory, type)):
        metadata["range"] = Range(**bounds)
    return field(default=default, default_factory=factory, metadata=metadata)


def _default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def key_data(config: Any) -> dict[str, Any]:
    """What identifies a config dataclass: `dataclasses.asdict`, less the `added_key` fields at their default."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("added") and value == _default_of(f):
            continue
        out[f.name] = key_data(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


@functools.cache
def added_keys(cls: type) -> tuple[tuple[str, Any], ...]:
    """(dotted path, default as plain data) of every `added_key` field of a config dataclass, nested
    sections included (an added section is one entry, its default a mapping)."""
    found: list[tuple[str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("added"):
            default = _default_of(f)
            found.append((f.name, dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default))
        elif dataclasses.is_dataclass(hints[f.name]):
            found += [(f"{f.name}.{path}", default) for path, default in added_keys(hints[f.name])]
    return tuple(found)


def fill_added_keys(cls: type, tree: dict[str, Any]) -> dict[str, Any]:
    """`tree` with every added key it lacks set to its default (a configuration stored before the key existed)."""
    out = copy.deepcopy(tree)
    for dotted, default in added_keys(cls):
        *sections, name = dotted.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {}) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(name, copy.deepcopy(default))
    return out


def check_fields(cls: type, values: dict[str, Any], where: str) -> None:
    """Range-check the values of `cls`'s fields (those declared with `ranged`; every float must be finite)."""
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        path = f"{where}.{f.name}" if where else f.name
        rule = f.metadata.get("range")
        accepted = f.metadata.get("names")
        if rule is not None:
            rule.check(value, path)
        elif accepted is not None and value not in accepted():
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, accepted()))}, got {value!r}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")


class RangeChecked:
    """Checks the ranges of a config dataclass built directly in Python (from_dict checks with full paths)."""

    def __post_init__(self) -> None:
        check_fields(type(self), {f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                     type(self).__name__)


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
            keys = sorted(f.name for f in dataclasses.fields(tp))
            raise ConfigError(f"{where}: expected a mapping of {keys}, got {value!r}")
        return build_dataclass(tp, value, where)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(option, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        return check_int(value, where)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def build_dataclass(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key{hint}; accepted keys: {', '.join(names)}")
        kwargs[key] = _coerce(hints[key], value, path)
    check_fields(cls, kwargs, where)
    return cls(**kwargs)
