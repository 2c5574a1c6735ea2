"""Dataset registry: a name maps to a loader `(DataConfig, seed) -> DatasetBundle`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from harness.config import DataConfig
from harness.data.splits import DatasetBundle, validation_protocol
from harness.errors import HarnessError

Loader = Callable[[DataConfig], DatasetBundle]
DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        DATASETS[name] = fn
        return fn

    return deco


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("VIREID_CACHE", "~/.cache/vireid")).expanduser()


def _require_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise HarnessError(f"data.root: dataset {cfg.dataset!r} needs the folder of its copy "
                           f"(set data.root in the config or --set data.root=PATH)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise HarnessError(f"data.root: {root} is not a folder (dataset {cfg.dataset!r})")
    return root


@register_dataset("synthetic")
def _synthetic(cfg: DataConfig) -> DatasetBundle:
    from harness.data.synthetic import SynthSpec, ensure_synthetic

    s = cfg.synthetic
    spec = SynthSpec(num_identities=s.num_identities, images_per_camera=s.images_per_camera,
                     height=s.height, width=s.width, seed=s.seed)
    root = ensure_synthetic(s.layout, spec, cache_root(cfg) / "synthetic")
    real = dataclasses.replace(cfg, dataset=s.layout, root=str(root))
    bundle = DATASETS[s.layout](real)
    name = "synthetic" if s.layout == "sysu" else f"synthetic-{s.layout}"
    return dataclasses.replace(bundle, name=name)


@register_dataset("sysu")
def _sysu(cfg: DataConfig) -> DatasetBundle:
    from harness.data.sysu import load_sysu

    return load_sysu(_require_root(cfg), modes=tuple(cfg.modes), shots=tuple(cfg.shots), trials=cfg.gallery_trials)


@register_dataset("regdb")
def _regdb(cfg: DataConfig) -> DatasetBundle:
    from harness.data.regdb import load_regdb

    return load_regdb(_require_root(cfg), trial=cfg.trial)


@register_dataset("llcm")
def _llcm(cfg: DataConfig) -> DatasetBundle:
    from harness.data.llcm import load_llcm

    return load_llcm(_require_root(cfg), trials=cfg.gallery_trials)


def load_dataset(cfg: DataConfig, *, seed: int = 0) -> DatasetBundle:
    """Load a dataset and, if asked, carve the validation protocol out of its training identities."""
    if cfg.dataset not in DATASETS:
        raise HarnessError(f"data.dataset: unknown dataset {cfg.dataset!r}; accepted: {', '.join(DATASETS)}")
    bundle = DATASETS[cfg.dataset](cfg)
    if cfg.val_identities > 0:
        if cfg.val_identities >= bundle.num_classes - 1:
            raise HarnessError(f"data.val_identities={cfg.val_identities}: must leave at least 2 of the "
                               f"{bundle.num_classes} training identities for training")
        train, val = validation_protocol(bundle.train, cfg.val_identities, seed)
        bundle = dataclasses.replace(bundle, train=train, validation=val,
                                     num_classes=int(train.pids.max()) + 1)
    return bundle
