"""A trained model kept on disk: its weights as safetensors plus a JSON card describing it.

`results/<sweep>/models/<trial key>.safetensors` holds the tensors of the method's state dict
(weights and buffers only: safetensors cannot hold code or pickled objects, and loading it never
unpickles); `<trial key>.json` holds what rebuilding the network needs (the trial's full config,
class and camera counts of its training set) and what identifies it (the records' trial key, the
sweep, the training dataset, library versions). Both are written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.atomic import atomic_path, atomic_write_text
from harness.config import TrialConfig
from harness.errors import ConfigError, InputError
from harness.provenance import library_versions

MODELS_FOLDER = "models"
CARD_FORMAT = "vireid-model/1"
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"

# Keys of a saved config that evaluating the model may change: the data it is evaluated on, how
# the evaluation runs, and the hardware. Everything else describes the trained network.
EVALUATION_KEY_PREFIXES = ("data.", "evaluation.", "model.test_feature", "train.device", "train.eval_batch_size",
                           "train.amp", "train.channels_last", "train.threads")
"""Keys an evaluation may change: the weights fit either test feature (pooled or BNNeck)."""


@dataclass
class TrainedModel:
    """A trial's final network and what rebuilding it needs (handed from the trial to the runner)."""

    method: torch.nn.Module
    config: TrialConfig
    num_classes: int
    num_cameras: int
    dataset: str


@dataclass(frozen=True)
class SavedModel:
    """A model card read from disk (the weights stay on disk until `load_method`)."""

    weights: Path
    card: dict[str, Any]
    config: TrialConfig

    @property
    def key(self) -> str:
        return str(self.card["trial_key"])

    @property
    def num_classes(self) -> int:
        return int(self.card["num_classes"])

    @property
    def num_cameras(self) -> int:
        return int(self.card["num_cameras"])


def model_files(folder: str | Path, key: str) -> tuple[Path, Path]:
    """(weights, card) paths of trial `key` in a models folder."""
    folder = Path(folder)
    return folder / f"{key}{WEIGHTS_SUFFIX}", folder / f"{key}{CARD_SUFFIX}"


def weight_tensors(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of `method.state_dict()` on the CPU, unshared (optimiser extra state left out)."""
    return {name: value.detach().to("cpu").contiguous().clone()
            for name, value in method.state_dict().items() if isinstance(value, torch.Tensor)}


def save_model(folder: str | Path, key: str, trained: TrainedModel, *, info: dict[str, Any] | None = None,
               name: str | None = None) -> Path:
    """Write the weights and the card of one trained model (files named `name`, default `key`); returns the weights."""
    import safetensors
    from safetensors.torch import save_file

    weights, card_path = model_files(folder, name or key)
    with atomic_path(weights) as temporary:
        save_file(weight_tensors(trained.method), str(temporary), metadata={"format": CARD_FORMAT, "trial_key": key})
    card = {"format": CARD_FORMAT, "trial_key": key, "method": trained.config.method, "weights": weights.name,
            "num_classes": int(trained.num_classes), "num_cameras": int(trained.num_cameras),
            "dataset": trained.dataset, "config": trained.config.to_dict(),
            "versions": {**library_versions(), "safetensors": safetensors.__version__}, **(info or {})}
    atomic_write_text(card_path, json.dumps(card, indent=1, sort_keys=True, default=str) + "\n")
    return weights


def read_model(path: str | Path) -> SavedModel:
    """The saved model named by its weights file, its card, or either without the suffix."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) else path
    weights, card_path = stem.with_name(stem.name + WEIGHTS_SUFFIX), stem.with_name(stem.name + CARD_SUFFIX)
    for needed in (weights, card_path):
        if not needed.is_file():
            raise InputError(f"{path}: no saved model here ({needed} is missing); expected "
                             f"results/<sweep>/{MODELS_FOLDER}/<trial key>{WEIGHTS_SUFFIX} and its {CARD_SUFFIX} card")
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{card_path}: unreadable model card ({exc})") from None
    missing = [k for k in ("format", "trial_key", "num_classes", "num_cameras", "config") if k not in card]
    if not isinstance(card, dict) or missing or card.get("format") != CARD_FORMAT:
        raise InputError(f"{card_path}: not a {CARD_FORMAT} model card (missing {', '.join(missing) or 'format'})")
    config = TrialConfig.from_dict(card["config"], where=f"{card_path}: config")
    return SavedModel(weights=weights, card=card, config=config)


def evaluation_config(saved: SavedModel, overrides: dict[str, Any] | None) -> TrialConfig:
    """The saved config with evaluation-side overrides (data, evaluation, device) applied.

    Keys that describe the trained network (method, model, loss, ...) are refused: the weights
    only fit the network they were trained as.
    """
    overrides = dict(overrides or {})
    fixed = sorted(k for k in overrides if not k.startswith(EVALUATION_KEY_PREFIXES))
    if fixed:
        raise ConfigError(f"--set {', '.join(fixed)}: a saved model's network and training keys cannot change; "
                          f"evaluation accepts data.*, evaluation.*, model.test_feature and train.device / "
                          f"eval_batch_size / amp / channels_last / threads")
    return saved.config.with_overrides(overrides, where="--set")


def load_method(saved: SavedModel, cfg: TrialConfig | None = None, *,
                device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild the saved network and load its weights (no pickle is read); in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from methods import create_method

    cfg = cfg or saved.config
    # the weights replace any initialisation: never load (or download) the pretrained weights the card names
    cfg = cfg.with_overrides({"model.pretrained": None, "model.pretrained_file": None}, where=str(saved.weights))
    method = create_method(cfg, saved.num_classes, saved.num_cameras)
    try:
        tensors = load_file(str(saved.weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{saved.weights}: unreadable safetensors file ({exc})") from None
    expected = set(weight_tensors(method))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise InputError(f"{saved.weights}: weights do not fit the network of its card "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    try:  # strict on the tensors (checked above); optimiser extra state is not kept
        method.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise InputError(f"{saved.weights}: weights do not fit the network of its card ({exc})") from None
    return method.to(device).eval()
