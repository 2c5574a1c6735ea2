"""The sweep-backend contract and its registry.

A backend is one module that defines a `Backend` subclass and registers it with
`@register_backend`; its module name goes into `BUILTIN_BACKEND_MODULES`. The registry is what
the CLI's `--backend` choices, the spec's `backend:` check and the refusal of options a backend
does not take are derived from.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from harness.errors import ConfigError

if TYPE_CHECKING:
    from harness.sweep import SweepSpec

BUILTIN_BACKEND_MODULES = ("harness.runner.local", "harness.runner.optuna_backend", "harness.runner.ray_backend")

OPTION_FLAGS = {"search": "a search: block", "workers": "--workers", "address": "--address", "storage": "--storage",
                "gpus": "--gpus", "trials_per_gpu": "--trials-per-gpu", "gpus_per_trial": "--gpus-per-trial",
                "retry_failed": "--retry-failed", "stale_after": "--stale-after"}
"""Every backend-specific option, with the flag (or spec part) that sets it."""


@dataclass
class SweepRequest:
    """Everything a backend needs to run (or resume) one sweep; options left None were not asked for."""

    spec: SweepSpec
    folder: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    trial_fn: Callable[..., Any] | str | None = None
    """Replaces harness.trial.run_trial (a callable, or 'package.module:function' for worker processes)."""
    quiet: bool = False
    workers: int | None = None
    address: str | None = None
    storage: str | None = None
    gpus: str | None = None
    trials_per_gpu: int | None = None
    gpus_per_trial: float | None = None
    retry_failed: bool = False
    stale_after: int | None = None

    def asked(self) -> list[str]:
        """The backend-specific options this request sets (a search counts as one)."""
        names = [n for n in OPTION_FLAGS if n != "search" and getattr(self, n) not in (None, False)]
        return (["search"] if self.spec.search is not None else []) + names


class Backend(ABC):
    """Runs a sweep's trials somewhere; every backend writes the same record store and resumes."""

    name: ClassVar[str]
    supports: ClassVar[frozenset[str]] = frozenset()
    """Options of OPTION_FLAGS this backend honours; any other one set is refused before anything runs."""
    description: ClassVar[str] = ""

    def check(self, request: SweepRequest) -> None:  # noqa: B027  (optional: a backend without options has nothing to check)
        """Refuse (InputError, exit 2) an option value or trial function this backend cannot run with.

        `run_sweep` calls it before the results folder is created, so a refused sweep leaves no
        folder, store or checkpoint behind; `run` may assume it passed.
        """

    @abstractmethod
    def run(self, request: SweepRequest) -> None:
        """Run every planned trial not finished yet; records go to `request.folder`'s store."""


_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend available under `cls.name`."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__}: a backend needs a class attribute 'name'")
    unknown = set(cls.supports) - set(OPTION_FLAGS)
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown supported option(s) {sorted(unknown)}; known: {list(OPTION_FLAGS)}")
    _BACKENDS[cls.name] = cls
    return cls


def _load_builtins() -> None:
    for module in BUILTIN_BACKEND_MODULES:
        importlib.import_module(module)


def backend_names() -> list[str]:
    """Registered names: the built-in backends in their declared order, then any others."""
    _load_builtins()
    order = {module: i for i, module in enumerate(BUILTIN_BACKEND_MODULES)}
    return sorted(_BACKENDS, key=lambda n: order.get(_BACKENDS[n].__module__, len(order)))


def get_backend(name: str) -> Backend:
    _load_builtins()
    if name not in _BACKENDS:
        raise ConfigError(f"--backend: {name!r} is not one of {', '.join(backend_names())}")
    return _BACKENDS[name]()


def accepting(option: str) -> list[str]:
    """Names of the backends that honour `option`."""
    _load_builtins()
    return [n for n in backend_names() if option in _BACKENDS[n].supports]


def check_request(backend: Backend, request: SweepRequest) -> None:
    """Refuse, before anything runs, an option the chosen backend would otherwise ignore."""
    for option in request.asked():
        if option not in backend.supports:
            others = accepting(option)
            raise ConfigError(f"{OPTION_FLAGS[option]}: the {backend.name} backend does not take it; "
                              f"use --backend {' or '.join(others) if others else '(none)'}")
