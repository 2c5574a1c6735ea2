"""Checks of a trial config that need the method and backbone registries, run before anything trains.

`harness.config` checks each key's type and range; what it cannot know without building things
(is the method registered, does the backbone exist, can it take this input size, does the weights
file read as weights that cover every tensor of the backbone) is checked here for every grid point,
once per distinct combination. The network check is the method's own (`check` of its
registration), each caching its distinct combinations.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from harness.config import TrialConfig
from harness.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from methods.registry import MethodInfo


@functools.lru_cache(maxsize=256)
def _check_pretrained(backbone: str, pretrained: str) -> None:
    from methods._timm_models import resolve_pretrained_tag

    resolve_pretrained_tag(backbone, pretrained)  # names only: nothing is downloaded here


@functools.lru_cache(maxsize=64)
def _check_pretrained_file(backbone: str, path: str, size: int, modified_ns: int) -> None:
    from methods._timm_models import check_pretrained_file

    check_pretrained_file(backbone, path)  # size and time key the cache: a rewritten file is read again


@functools.lru_cache(maxsize=256)
def _check_method(name: str) -> MethodInfo:
    from methods.registry import resolve_method

    return resolve_method(name)


def check_buildable(cfg: TrialConfig, where: str = "config") -> None:
    """Raise ConfigError (naming `where` and the key) when `cfg`'s method or network cannot be built."""
    try:
        info = _check_method(cfg.method)
        m = cfg.model
        if m.pretrained_file is not None and not os.path.isfile(m.pretrained_file):
            relative = ("" if os.path.isabs(m.pretrained_file)
                        else f" (a relative path is read from the current folder, {os.getcwd()})")
            raise ConfigError(f"model.pretrained_file: {m.pretrained_file} is not a file{relative}")
        if m.pretrained is not None:
            if m.pretrained_file is not None:
                raise ConfigError(f"model.pretrained={m.pretrained!r} and model.pretrained_file="
                                  f"{m.pretrained_file!r}: set one of them (the file is the offline route)")
            _check_pretrained(m.backbone, m.pretrained)
        if info.check is not None:
            info.check(cfg)  # the method's network at this input size (methods.registry.MethodInfo.check)
        if m.pretrained_file is not None:
            stat = os.stat(m.pretrained_file)
            _check_pretrained_file(m.backbone, os.path.abspath(m.pretrained_file), stat.st_size, stat.st_mtime_ns)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_all_buildable(configs: Iterable[TrialConfig], where: str = "config") -> None:
    for cfg in configs:
        check_buildable(cfg, where)
