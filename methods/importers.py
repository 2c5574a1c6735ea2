"""Checkpoint importers: how the network another code base saved becomes a registered method's weights.

`vireid import-checkpoint --from NAME FILE OUT` reads FILE with `torch.load(weights_only=True)`,
takes the state dict under the importer's `state_key`, renames it with the importer's converter
and saves it as a harness model (`harness.checkpoint_import`). An importer is registered with
`@register_importer(...)` on its converter, next to the method it fills or in one module per
source code base (`methods/agw_code_checkpoints.py`); every module of `methods/` is imported on
first use, so a new importer is one registration.

A converter returns `Converted`: the tensors under the harness method's state-dict names and the
source keys it does not know. Whether every source key is known, every harness tensor is filled
(apart from the `initialised` ones, which the source never saves) and every shape fits is
checked once, for every importer, by the harness. `KeyRules` writes a converter as rename and
drop rules over regular expressions.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.errors import ConfigError
from methods.registry import _load_builtin


@dataclass
class Converted:
    """A converter's result: harness name -> tensor, harness name -> source name, unknown source keys."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    """Source keys the source code saves but its forward never reads (kept out on purpose)."""


Converter = Callable[[Mapping[str, torch.Tensor]], Converted]


@dataclass(frozen=True)
class KeyRules:
    """A converter as rules: `rename` (source regex, harness template), first full match wins; `drop` regexes."""

    rename: tuple[tuple[str, str], ...]
    drop: tuple[str, ...] = ()

    def __call__(self, state: Mapping[str, torch.Tensor]) -> Converted:
        renames = [(re.compile(pattern), template) for pattern, template in self.rename]
        drops = [re.compile(pattern) for pattern in self.drop]
        out = Converted()
        for key, value in state.items():
            if any(d.fullmatch(key) for d in drops):
                out.dropped.append(key)
                continue
            for pattern, template in renames:
                match = pattern.fullmatch(key)
                if match:
                    target = match.expand(template)
                    if target in out.tensors:
                        raise ConfigError(f"importer rules map {out.sources[target]!r} and {key!r} both to {target!r}")
                    out.tensors[target], out.sources[target] = value, key
                    break
            else:
                out.unknown.append(key)
        return out


@dataclass(frozen=True)
class CheckpointImporter:
    """What a source code base's checkpoint is and which harness model it becomes."""

    name: str
    """The `--from` value."""
    method: str
    """The registered method whose network the weights fill."""
    source: str
    """The code base and network class that saved the checkpoint (written on the card)."""
    convert: Converter
    recipe: str | None = None
    """Named recipe (harness/recipes) the card's config starts from."""
    config: Mapping[str, Any] = field(default_factory=dict)
    """Dotted config keys the source code's network and test pipeline imply, over the recipe."""
    dataset_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """`--dataset` -> dotted keys over `config`, where the source builds or trains another network per dataset."""
    state_key: str | None = "net"
    """Key of the checkpoint dict holding the state dict (None: the file is the state dict)."""
    classifier: str = "net.neck.classifier.weight"
    """Harness tensor whose first dimension is the number of training identities."""
    initialised: Mapping[str, str] = field(default_factory=dict)
    """Harness tensors the source never saves, by name prefix, with why their seeded initial value is right."""
    optional: tuple[str, ...] = ("num_batches_tracked",)
    """Name endings of harness tensors an older save may lack: kept at their initialisation."""
    published: Mapping[str, str] = field(default_factory=dict)
    """Test protocol -> "paper.setting" of harness/published_results.yaml, shown beside its evaluation."""
    notes: tuple[str, ...] = ()
    """Facts about the source's network recorded on the card (what the config keys reproduce)."""


    def config_for(self, dataset: str) -> dict[str, Any]:
        """The dotted keys the source implies for a checkpoint trained on `dataset`."""
        return {**self.config, **self.dataset_config.get(dataset, {})}


_IMPORTERS: dict[str, CheckpointImporter] = {}


def register_importer(name: str, *, method: str, source: str, **options: Any) -> Callable[[Converter], Converter]:
    """Register the decorated converter as importer `name` (options: the `CheckpointImporter` fields)."""

    def register(convert: Converter) -> Converter:
        if name in _IMPORTERS:
            raise ValueError(f"checkpoint importer {name!r} is registered twice")
        _IMPORTERS[name] = CheckpointImporter(name=name, method=method, source=source, convert=convert, **options)
        return convert

    return register


def list_importers() -> list[CheckpointImporter]:
    _load_builtin()
    return list(_IMPORTERS.values())


def get_importer(name: str) -> CheckpointImporter:
    _load_builtin()
    if name not in _IMPORTERS:
        close = difflib.get_close_matches(name, list(_IMPORTERS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"--from {name!r}: no such checkpoint importer.{hint} Registered: {', '.join(_IMPORTERS)}")
    return _IMPORTERS[name]
