"""Dataset registry: each dataset module registers ONE description of itself, next to its code.

A description is a `Dataset` subclass decorated with `@register_dataset`: its name, title and
aliases, the sensors (camera number, modality, synthetic scene) that are the only statement of
its camera facts, the DataConfig keys it reads, its split description, and the four things every
dataset does: load a root into a DatasetBundle, check a tree (collecting every problem), name the
protocol and trial that `vireid data split` prints, and write a synthetic tree in its layout.
`vireid data check`, `data split`, `data synth`, the config's name validation and the built-in
synthetic dataset all iterate this registry. Adding a dataset is one module plus its name in
BUILTIN_DATASET_MODULES (see ARCHITECTURE.md).
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

from harness.data.cache_root import cache_root
from harness.data.splits import DatasetBundle, EvalProtocol, Sensor, validation_protocol
from harness.errors import ConfigError, InputError, check_int

if TYPE_CHECKING:
    from harness.config import DataConfig
    from harness.data.report import CheckReport
    from harness.data.synthetic.spec import SynthSpec

BUILTIN_DATASET_MODULES = ("harness.data.sysu", "harness.data.regdb", "harness.data.llcm")
SYNTHETIC = "synthetic"
"""data.dataset value of the generated dataset (written in the layout data.synthetic.layout)."""

SPLIT_OPTIONS = ("mode", "shots", "trial", "direction")
"""Options of `vireid data split`; each dataset lists those it takes in `split_options`."""


def split_draw_index(trial: object) -> int:
    """The `trial` split option of datasets whose trials are gallery draws: None -> 0, else >= 0."""
    if trial is None:
        return 0
    return check_int(trial, "trial (a gallery draw index)", minimum=0)


class Dataset(ABC):
    """The description of one dataset; subclasses set the class attributes and the four methods."""

    name: ClassVar[str]
    """data.dataset / data.synthetic.layout value and CLI name."""
    title: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    sensors: ClassVar[tuple[Sensor, ...]]
    """Every (camera, modality) that records images, in the synthetic generator's camera order."""
    synthetic_code: ClassVar[int]
    """Distinct per dataset: part of every synthetic seed of its layout."""
    config_keys: ClassVar[dict[str, str]]
    """DataConfig keys the loader reads -> what they mean for this dataset."""
    split_options: ClassVar[dict[str, str]]
    """`vireid data split` options it takes (a subset of SPLIT_OPTIONS) -> meaning and default."""
    splits: ClassVar[str]
    """The training split and the test protocols, in one paragraph."""
    validation_metric: ClassVar[str]
    """Metric rule of the validation protocol carved from its training identities."""

    @property
    def cameras(self) -> tuple[int, ...]:
        """On-disk camera numbers, ascending."""
        return tuple(sorted({sensor.number for sensor in self.sensors}))

    def infrared_cameras(self) -> frozenset[int]:
        return frozenset(sensor.number for sensor in self.sensors if sensor.infrared)

    def shared_scene_cameras(self) -> dict[int, tuple[int, ...]]:
        """Infrared camera -> the visible cameras recording its scene (SYSU: cam3 -> cam2, one room).

        A query from such an infrared camera would be matched against near-identical views, so the
        SYSU rule ranks it without these gallery cameras.
        """
        return {ir.number: tuple(sorted(v.number for v in self.sensors if not v.infrared and v.scene == ir.scene))
                for ir in self.sensors if ir.infrared
                and any(not v.infrared and v.scene == ir.scene for v in self.sensors)}

    @abstractmethod
    def load(self, root: Path, cfg: DataConfig) -> DatasetBundle:
        """The training split and test protocols of the tree at `root` (InputError on a bad tree)."""

    @abstractmethod
    def check(self, report: CheckReport) -> None:
        """Add counts per split and every problem of the tree at `report.root` (never raises for the tree)."""

    @abstractmethod
    def split_protocol(self, root: Path, options: dict[str, object]) -> tuple[EvalProtocol, int, int]:
        """(protocol, trial index within it, trial number to show) for `vireid data split`;
        `options` holds the given `split_options` (None when not given)."""

    @abstractmethod
    def write_synthetic(self, out: Path, spec: SynthSpec) -> Path:
        """Write a generated tree in this dataset's layout into the new or empty folder `out`."""


DATASETS: dict[str, Dataset] = {}
_ALIASES: dict[str, str] = {}
_D = TypeVar("_D", bound=type[Dataset])


def register_dataset(cls: _D) -> _D:
    """Class decorator: register one instance of a Dataset description under its name and aliases."""
    instance = cls()
    names = (cls.name, *cls.aliases)
    for name in names:
        owner = _ALIASES.get(name.lower())
        if (owner is not None and owner != cls.name) or name == SYNTHETIC:
            raise ValueError(f"dataset name {name!r} of {cls.__name__} is taken")
    unknown = set(cls.split_options) - set(SPLIT_OPTIONS)
    if unknown:
        raise ValueError(f"{cls.__name__}.split_options: unknown {sorted(unknown)}; known: {SPLIT_OPTIONS}")
    DATASETS[cls.name] = instance
    for name in names:
        _ALIASES[name.lower()] = cls.name
    return cls


def _load_builtins() -> None:
    for module in BUILTIN_DATASET_MODULES:
        importlib.import_module(module)


def dataset_names() -> tuple[str, ...]:
    """Registered dataset names: the built-ins in BUILTIN_DATASET_MODULES order (whatever imported
    them first), then the others in registration order."""
    _load_builtins()
    rank = {module: index for index, module in enumerate(BUILTIN_DATASET_MODULES)}
    ordered = sorted(DATASETS.values(), key=lambda d: rank.get(type(d).__module__, len(rank)))
    return tuple(d.name for d in ordered)


def get_dataset(name: str, where: str = "dataset") -> Dataset:
    """The description registered under `name` or one of its aliases (case-insensitive)."""
    _load_builtins()
    canonical = _ALIASES.get(str(name).strip().lower())
    if canonical is None:
        raise ConfigError(f"{where}: unknown dataset {name!r}; accepted: {', '.join(dataset_names())}")
    return DATASETS[canonical]


def check_dataset_name(name: str, where: str, *, synthetic_allowed: bool) -> None:
    """ConfigError unless `name` is a registered dataset name (or "synthetic" where allowed)."""
    names = dataset_names()
    accepted = ((SYNTHETIC,) if synthetic_allowed else ()) + names
    if name not in accepted:
        raise ConfigError(f"{where}: unknown dataset {name!r}; accepted: {', '.join(accepted)}")


def _require_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise InputError(f"data.root: dataset {cfg.dataset!r} needs the folder of its copy "
                         f"(set data.root in the config or --set data.root=PATH)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise InputError(f"data.root: {root} is not a folder (dataset {cfg.dataset!r})")
    return root


def _synthetic_root(cfg: DataConfig, dataset: Dataset) -> Path:
    from harness.data.synthetic import SynthSpec, ensure_synthetic

    s = cfg.synthetic
    spec = SynthSpec(num_identities=s.num_identities, images_per_camera=s.images_per_camera,
                     height=s.height, width=s.width, seed=s.seed)
    return ensure_synthetic(dataset, spec, cache_root(cfg) / "synthetic")


def dataset_label(cfg: DataConfig) -> str:
    """The name the loaded dataset carries (records' `dataset`, a saved model's card): the registered
    name, or "synthetic" / "synthetic-<layout>" for the built-in dataset."""
    if cfg.dataset != SYNTHETIC:
        return get_dataset(cfg.dataset, "data.dataset").name
    layout = get_dataset(cfg.synthetic.layout, "data.synthetic.layout").name
    return SYNTHETIC if layout == "sysu" else f"{SYNTHETIC}-{layout}"


def load_dataset(cfg: DataConfig, *, seed: int = 0) -> DatasetBundle:
    """Load a dataset and, if asked, carve the validation protocol out of its training identities."""
    if cfg.dataset == SYNTHETIC:
        dataset = get_dataset(cfg.synthetic.layout, "data.synthetic.layout")
        bundle = dataset.load(_synthetic_root(cfg, dataset), cfg)
        bundle = dataclasses.replace(bundle, name=dataset_label(cfg))
    else:
        dataset = get_dataset(cfg.dataset, "data.dataset")
        bundle = dataset.load(_require_root(cfg), cfg)
    if cfg.val_identities > 0:
        if cfg.val_identities >= bundle.num_classes - 1:
            raise ConfigError(f"data.val_identities={cfg.val_identities}: must leave at least 2 of the "
                              f"{bundle.num_classes} training identities for training")
        train, val = validation_protocol(bundle.train, cfg.val_identities, seed,
                                         metric_protocol=dataset.validation_metric)
        bundle = dataclasses.replace(bundle, train=train, validation=val,
                                     num_classes=int(train.pids.max()) + 1)
    return bundle
