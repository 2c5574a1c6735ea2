"""A trained model kept on disk: its weights as safetensors plus a JSON card describing it.

`results/<sweep>/models/<trial key>.safetensors` holds the tensors of the method's state dict
(weights and buffers only: safetensors cannot hold code or pickled objects, and loading it never
unpickles); `<trial key>.json` holds what rebuilding the network needs (the trial's full config,
class and camera counts of its training set) and what identifies it (the records' trial key, the
sweep, the training dataset, library versions). Both are written atomically.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from harness.atomic import atomic_path, atomic_write_text
from harness.config import TrialConfig
from harness.config_schema import build_dataclass, ranged
from harness.errors import ConfigError, InputError
from harness.provenance import library_versions
from harness.weights import BACKBONE_FORMAT, SAFETENSORS_SUFFIX, SAVED_MODEL_FORMAT, check_fit, read_weights

MODELS_FOLDER = "models"
CARD_FORMAT = SAVED_MODEL_FORMAT
WEIGHTS_SUFFIX = SAFETENSORS_SUFFIX
CARD_SUFFIX = ".json"

# Keys of a saved config that evaluating the model may change: the data it is evaluated on, how
# the evaluation runs, and the hardware. Everything else describes the trained network.
EVALUATION_KEY_PREFIXES = ("data.", "evaluation.", "model.test_feature", "train.device", "train.eval_batch_size",
                           "train.amp", "train.channels_last", "train.threads")
"""Keys an evaluation may change: the weights fit either test feature (pooled or BNNeck)."""


MAX_CLASSES = 1_000_000
"""Most identities a saved classifier may have (a card asking for more is damaged, not a model)."""
MAX_CAMERAS = 1_000


@dataclass(frozen=True)
class CardFields:
    """What rebuilding a saved network reads from its card, typed and range-checked as a config is."""

    trial_key: str
    config: TrialConfig
    num_classes: int = ranged(minimum=1, maximum=MAX_CLASSES)
    num_cameras: int = ranged(minimum=1, maximum=MAX_CAMERAS)
    method: str | None = None
    """The config's method, repeated for readers of the card: must agree with it."""
    dataset: str | None = None
    """The dataset the config names (harness.data.registry.dataset_label): must agree with it."""


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
    return {name: value.detach().to("cpu").contiguous().clone() for name, value in state_tensors(method).items()}


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


def _read_card(card_path: Path) -> tuple[dict[str, Any], CardFields]:
    """The card and its checked fields, refused (InputError naming the card and key) unless complete, in range and
    consistent: checked before anything is built from them."""
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, a 5000-digit number
        raise InputError(f"{card_path}: unreadable model card ({str(exc).splitlines()[0] if str(exc) else exc!r})"
                         ) from None
    if not isinstance(card, dict):
        held = json.dumps(card)
        raise InputError(f"{card_path}: not a {CARD_FORMAT} model card (the file holds "
                         f"{held[:40] + ('...' if len(held) > 40 else '')}; expected a JSON object)")
    if "format" not in card:
        raise InputError(f"{card_path}: not a {CARD_FORMAT} model card (missing format)")
    if card["format"] != CARD_FORMAT:
        other = (" (the card of an exported backbone: a run starts from it with model.pretrained_file; "
                 "it is not a saved model)" if card["format"] == BACKBONE_FORMAT else "")
        raise InputError(f"{card_path}: format {card['format']!r} is not accepted; a saved model's card has "
                         f"format {CARD_FORMAT!r}{other}")
    names = [f.name for f in fields(CardFields)]
    missing = [f.name for f in fields(CardFields) if f.default is MISSING and f.name not in card]
    if missing:
        raise InputError(f"{card_path}: not a {CARD_FORMAT} model card (missing {', '.join(missing)})")
    try:
        checked: CardFields = build_dataclass(CardFields, {k: card[k] for k in names if k in card}, "")
    except ConfigError as exc:
        raise ConfigError(f"{card_path}: {exc}") from None
    from harness.data.registry import dataset_label

    named = {"method": checked.config.method, "dataset": dataset_label(checked.config.data)}
    for key, value in named.items():
        if getattr(checked, key) not in (None, value):
            raise ConfigError(f"{card_path}: the card contradicts itself: {key} {getattr(checked, key)!r}, but its "
                              f"config names {value!r} (the weights fit one network only; refused)")
    return card, checked


def read_model(path: str | Path) -> SavedModel:
    """The saved model named by its weights file, its card, or either without the suffix."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) else path
    weights, card_path = stem.with_name(stem.name + WEIGHTS_SUFFIX), stem.with_name(stem.name + CARD_SUFFIX)
    for needed in (weights, card_path):
        if not needed.is_file():
            raise InputError(f"{path}: no saved model here ({needed} is missing); expected "
                             f"results/<sweep>/{MODELS_FOLDER}/<trial key>{WEIGHTS_SUFFIX} and its {CARD_SUFFIX} card")
    card, checked = _read_card(card_path)
    return SavedModel(weights=weights, card=card, config=checked.config)


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


def state_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of `module.state_dict()` as they are (meta tensors included; extra state left out)."""
    return {name: value for name, value in module.state_dict().items() if isinstance(value, torch.Tensor)}


def load_method(saved: SavedModel, cfg: TrialConfig | None = None, *,
                device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild the saved network and load its weights (no pickle is read); in eval mode.

    The weights are compared with the network built on the meta device first (names, shapes and
    dtypes: nothing is cast), so a card that does not fit its weights allocates nothing.
    """
    from methods import create_method

    cfg = cfg or saved.config
    # the weights replace any initialisation: never load (or download) the pretrained weights the card names
    cfg = cfg.with_overrides({"model.pretrained": None, "model.pretrained_file": None}, where=str(saved.weights))
    weights = read_weights(saved.weights)
    if weights.metadata.get("trial_key", saved.key) != saved.key:
        raise InputError(f"{saved.weights}: the weights are those of trial {weights.metadata['trial_key']!r}, its "
                         f"card names trial {saved.key!r}: card and weights belong to different models")
    with torch.device("meta"):
        skeleton = create_method(cfg, saved.num_classes, saved.num_cameras)
    check_fit(weights, state_tensors(skeleton), network="the network of its card")
    method = create_method(cfg, saved.num_classes, saved.num_cameras)
    method.load_state_dict(weights.tensors, strict=False)  # every tensor checked above; no optimiser extra state
    return method.to(device).eval()
