"""`vireid import-checkpoint`: a checkpoint another VI-ReID code saved, as a harness saved model.

The file is read with `torch.load(weights_only=True)` and nothing else: tensors, plain containers
and numbers, plus numeric numpy arrays and scalars (the codes save their test metrics as numpy
values beside the weights; object arrays stay refused). The importer registered under `--from`
(`methods.importers`) renames the state dict; this module checks, for every importer alike, that
every source key is known, every tensor of the harness method is filled and every shape fits,
then writes weights and card with `saved_models.save_model`. The card names the source code, the
original file's SHA-256, the recipe and config the source implies and the published entries
`vireid eval` prints beside the imported model's rows.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import TrialConfig, set_dotted
from harness.errors import ConfigError, InputError
from harness.provenance import file_sha256
from harness.saved_models import (
    CARD_SUFFIX,
    EVALUATION_KEY_PREFIXES,
    WEIGHTS_SUFFIX,
    TrainedModel,
    save_model,
)
from methods.importers import CheckpointImporter, Converted, get_importer

SHOWN_KEYS = 8
"""Keys named in a refusal (then a count of the rest)."""


def _numpy_record_globals() -> list[Any]:
    """What numeric numpy arrays and scalars unpickle through, under numpy 1 and numpy 2 module names."""
    try:
        multiarray = importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy 1
        multiarray = importlib.import_module("numpy.core.multiarray")
    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        allowed += [(function, f"numpy.core.multiarray.{name}"), (function, f"numpy._core.multiarray.{name}")]
    # numeric dtypes only: an object array would hold arbitrary Python objects
    allowed += sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}, key=str)
    return allowed


def _shown(keys: list[str]) -> str:
    """Keys grouped by module (`a.b.{bias,weight}`), the first SHOWN_KEYS groups, then a count of the rest."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        module, _, name = key.rpartition(".")
        groups.setdefault(module, []).append(name)
    items = list(groups.items())
    parts = []
    for module, names in items[:SHOWN_KEYS]:
        leaf = names[0] if len(names) == 1 else "{" + ",".join(names) + "}"
        parts.append(f"{module}.{leaf}" if module else leaf)
    hidden = sum(len(names) for _, names in items[SHOWN_KEYS:])
    return ", ".join(parts) + (f" and {hidden} more" if hidden else "")


def _needs(path: Path, error: Exception) -> str:
    """What a refused file needs unpickled beyond weights: every global torch names, else the error's one."""
    try:
        with torch.serialization.safe_globals(_numpy_record_globals()):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, OSError):  # legacy (non-zip) files are not scanned
        names = []
    if not names:
        found = re.search(r"GLOBAL (\S+)|but got (<[^>]+>)", str(error))
        names = [found.group(1) or found.group(2)] if found else []
    return f" (it needs {', '.join(names)})" if names else ""


def read_checkpoint(path: Path) -> Any:
    """The unpickled checkpoint, read with weights_only=True; InputError for anything that needs more."""
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        with torch.serialization.safe_globals(_numpy_record_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # refused below if it matters
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path}: not a weights-only checkpoint{_needs(path, exc)}; torch.load(weights_only=True) "
                         "refuses it and the harness unpickles nothing else. Save the state dict (tensors only) "
                         "and import that") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: not a PyTorch checkpoint torch.load can read ({reason})") from None


def source_state(checkpoint: Any, importer: CheckpointImporter, path: Path) -> dict[str, torch.Tensor]:
    """The state dict the importer's source saved (under `state_key`), DataParallel's `module.` removed."""
    state = checkpoint
    if importer.state_key is not None:
        if not isinstance(checkpoint, Mapping) or importer.state_key not in checkpoint:
            found = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise InputError(f"{path}: expected a dict with the state dict under {importer.state_key!r} (what "
                             f"{importer.source} saves); found {found}")
        state = checkpoint[importer.state_key]
    if not isinstance(state, Mapping) or not state:
        raise InputError(f"{path}: {importer.state_key or 'the file'} is not a state dict (a mapping of names to "
                         "tensors)")
    not_tensors = sorted(str(k) for k, v in state.items() if not (isinstance(k, str) and torch.is_tensor(v)))
    if not_tensors:
        raise InputError(f"{path}: state dict entries that are not named tensors: {_shown(not_tensors)}")
    if all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def checkpoint_record(checkpoint: Any) -> dict[str, float]:
    """The source's own test metrics saved beside the weights (percent), and the epoch."""
    if not isinstance(checkpoint, Mapping):
        return {}
    out: dict[str, float] = {}
    try:
        if "epoch" in checkpoint:
            out["epoch"] = int(checkpoint["epoch"])
        if "cmc" in checkpoint:
            cmc = np.asarray(checkpoint["cmc"], dtype=float).reshape(-1)
            out.update({f"rank{r}": round(100 * float(cmc[r - 1]), 4) for r in (1, 5, 10, 20) if len(cmc) >= r})
        for name in ("mAP", "mINP"):
            if name in checkpoint:
                out[name] = round(100 * float(np.asarray(checkpoint[name], dtype=float).reshape(-1)[0]), 4)
    except (TypeError, ValueError, IndexError):
        return {}
    return out


def _config(importer: CheckpointImporter, dataset: str, overrides: Mapping[str, Any]) -> TrialConfig:
    from harness.recipes import apply_recipe

    fixed = sorted(k for k in overrides if not k.startswith(EVALUATION_KEY_PREFIXES))
    if fixed:
        raise ConfigError(f"--set {', '.join(fixed)}: the network and training keys of an imported checkpoint are "
                          "those its source implies; --set accepts data.*, evaluation.*, model.test_feature and "
                          "train.device / eval_batch_size / amp / channels_last / threads")
    where = f"importer {importer.name}"
    tree = TrialConfig.from_dict(apply_recipe(importer.recipe, {}, where=where)).to_dict()
    for dotted, value in {**importer.config_for(dataset), "method": importer.method, "data.dataset": dataset}.items():
        set_dotted(tree, dotted, value, where=where)
    return TrialConfig.from_dict(tree, where=where).with_overrides(dict(overrides), where="--set")


def _output_paths(out: Path) -> tuple[Path, str]:
    stem = out.with_suffix("") if out.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) else out
    if stem.suffix:
        raise InputError(f"{out}: expected OUT.safetensors (or a name without suffix); the card goes beside it")
    for existing in (stem.with_name(stem.name + WEIGHTS_SUFFIX), stem.with_name(stem.name + CARD_SUFFIX)):
        if existing.exists():
            raise InputError(f"{existing}: exists; choose another OUT or remove the saved model first")
    return stem.parent, stem.name


def _initialised(importer: CheckpointImporter, key: str) -> str | None:
    for prefix, reason in importer.initialised.items():
        if key == prefix or key.startswith(prefix if prefix.endswith(".") else prefix + "."):
            return reason
    return None


def check_mapping(path: Path, importer: CheckpointImporter, converted: Converted, expected: Mapping[str, torch.Tensor],
                  initialised: Mapping[str, str]) -> None:
    """InputError naming the keys unless the converted tensors fill `expected` exactly, shapes and kinds alike.

    Tensors of `initialised` (the source never saves them) and those ending in `importer.optional`
    may be absent; nothing may land on an initialised tensor or outside the network.
    """
    optional = {k for k in expected if k.endswith(importer.optional)}
    missing = sorted(k for k in expected if k not in converted.tensors and k not in initialised and k not in optional)
    unexpected = sorted(converted.sources[k] for k in converted.tensors if k not in expected or k in initialised)
    wrong = sorted(f"{converted.sources[k]} {tuple(v.shape)} {v.dtype} (expected {tuple(expected[k].shape)} "
                   f"{expected[k].dtype})" for k, v in converted.tensors.items()
                   if k in expected and (v.shape != expected[k].shape
                                         or v.dtype.is_floating_point != expected[k].dtype.is_floating_point))
    if missing or unexpected or wrong:
        problems = [f"missing (harness names) {_shown(missing)}" if missing else "",
                    f"keys without a place in the {importer.method} network {_shown(unexpected)}" if unexpected else "",
                    f"shapes or kinds that do not fit {_shown(wrong)}" if wrong else ""]
        raise InputError(f"{path}: the state dict does not map completely onto {importer.method} "
                         f"({'; '.join(p for p in problems if p)}); expected a checkpoint of {importer.source}")


def import_checkpoint(source: str, path: str | Path, out: str | Path, *, dataset: str,
                      overrides: Mapping[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Write `out` (.safetensors + .json card) from the checkpoint `path` saved by the `source` code.

    Returns the weights path and the card's `imported` block. Refused (InputError, nothing
    written) when the file needs more than weights_only unpickling or its keys or shapes do not
    map completely onto the method's network.
    """
    from harness.data.registry import get_dataset
    from methods import create_method

    importer = get_importer(source)
    path = Path(path)
    folder, name = _output_paths(Path(out))
    cfg = _config(importer, dataset, dict(overrides or {}))
    layout = cfg.data.synthetic.layout if cfg.data.dataset == "synthetic" else cfg.data.dataset
    num_cameras = len(get_dataset(layout, where="--dataset").cameras)
    checkpoint = read_checkpoint(path)
    state = source_state(checkpoint, importer, path)
    converted = importer.convert(state)
    if converted.unknown:
        raise InputError(f"{path}: keys that {importer.source} does not save (or this importer does not know): "
                         f"{_shown(sorted(converted.unknown))}; is it a checkpoint of --from {importer.name}?")
    classifier = converted.tensors.get(importer.classifier)
    num_classes = int(classifier.shape[0]) if classifier is not None and classifier.dim() == 2 else 1

    # the pretrained weights the card names are the source's initialisation, never needed here
    build_cfg = cfg.with_overrides({"model.pretrained": None, "model.pretrained_file": None}, where=str(path))
    with torch.device("meta"):  # names, shapes and dtypes only: the checks cost no weights
        expected = {k: v for k, v in create_method(build_cfg, num_classes, num_cameras).state_dict().items()
                    if isinstance(v, torch.Tensor)}
    initialised = {k: reason for k in expected if (reason := _initialised(importer, k)) is not None}
    check_mapping(path, importer, converted, expected, initialised)
    with torch.random.fork_rng(devices=[]):  # seeded initial values of `initialised`; the caller's RNG untouched
        torch.manual_seed(cfg.seed)
        method = create_method(build_cfg, num_classes, num_cameras)
    with torch.no_grad():
        method.load_state_dict({k: v.to(expected[k].dtype) for k, v in converted.tensors.items()}, strict=False)
    sha256 = file_sha256(path)
    imported = {
        "from": importer.name, "source": importer.source, "file": os.path.basename(path), "sha256": sha256,
        "bytes": path.stat().st_size, "state_key": importer.state_key, "recipe": importer.recipe,
        "config": importer.config_for(dataset), "notes": list(importer.notes),
        "tensors": len(converted.tensors), "dropped": len(converted.dropped),
        "initialised": {prefix: reason for prefix, reason in importer.initialised.items()
                        if any(_initialised(importer, k) == reason for k in initialised)},
        "initialised_tensors": sorted(initialised),
        "optional_absent": sorted(k for k in expected if k not in converted.tensors and k not in initialised),
        "checkpoint_record": checkpoint_record(checkpoint), "published": dict(importer.published),
    }
    key = f"{importer.name}-{sha256[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    weights = save_model(folder, key, TrainedModel(method.eval(), cfg, num_classes, num_cameras, cfg.data.dataset),
                         info={"imported": imported}, name=name)
    return weights, imported
