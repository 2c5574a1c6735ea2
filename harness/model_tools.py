"""What can be done with a saved model: evaluate it on any dataset, extract features of a folder,
export its backbone as the pretrained weights of another run.

`evaluate_saved_model` is cross-dataset evaluation: the network is rebuilt from its card, the
dataset, protocols and evaluation options come from the card's config with `--set` overrides
(data.*, evaluation.*, device), and the records it writes are a trial's records (the same columns,
so `vireid table` tabulates them) plus which model was evaluated on which data.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.atomic import atomic_path, atomic_write_text
from harness.config import TrialConfig
from harness.data.cache_root import cache_root
from harness.data.images import decode_images
from harness.data.registry import load_dataset
from harness.data.splits import MODALITY_INFRARED, MODALITY_VISIBLE, DatasetBundle
from harness.errors import InputError
from harness.progress import TaskProgress
from harness.provenance import keyed_config
from harness.saved_models import CARD_SUFFIX, SavedModel, evaluation_config, load_method, read_model
from harness.weights import BACKBONE_FORMAT, SAVED_MODEL_FORMAT, weights_format

MODALITIES = {"visible": MODALITY_VISIBLE, "infrared": MODALITY_INFRARED}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def evaluation_key(saved: SavedModel, cfg: TrialConfig) -> str:
    """Records' key of one evaluation: the model and everything the evaluation used."""
    blob = json.dumps({"model": saved.key, "config": keyed_config(cfg)}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def prepare_saved_model(model: str | Path, overrides: dict[str, Any] | None = None
                        ) -> tuple[SavedModel, TrialConfig, torch.nn.Module, torch.device, DatasetBundle]:
    """Card, evaluation config, network with its weights, device and the dataset to evaluate on."""
    from harness.training import prepare_run

    saved = read_model(model)
    cfg = evaluation_config(saved, overrides)
    device = prepare_run(cfg)
    method = load_method(saved, cfg, device=device)  # weights checked before the dataset is read
    bundle = load_dataset(cfg.data, seed=cfg.seed)
    return saved, cfg, method, device, bundle


def evaluate_saved_model(model: str | Path, *, overrides: dict[str, Any] | None = None,
                         folder: str | Path, quiet: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """Evaluate a saved model on every test protocol of the configured dataset; store the records.

    Returns (records' key, records). The records go to `folder`'s record store, replacing an
    earlier evaluation with the same key.
    """
    from harness.provenance import environment_fields
    from harness.results import ResultStore
    from harness.trial import evaluate_protocols, peak_memory_mb, protocol_records

    started = time.time()
    saved, cfg, method, device, bundle = prepare_saved_model(model, overrides)
    key = evaluation_key(saved, cfg)
    results, infer_speed = evaluate_protocols(method, bundle.protocols, cfg, device,
                                              cache_root(cfg.data) / "images", quiet=quiet)
    common = {
        "kind": "evaluation", "model_key": saved.key,
        "model_sweep": saved.card.get("sweep"), "trained_on": saved.card.get("dataset"),
        "rerank": cfg.evaluation.rerank.enabled,
        **environment_fields(device),
        "num_params": sum(p.numel() for p in method.parameters()), "num_classes": saved.num_classes,
        "infer_img_per_s": infer_speed, "peak_memory_mb": peak_memory_mb(device),
        "wall_seconds": time.time() - started,
    }
    records = protocol_records(cfg, common, bundle.protocols, results, key=key)
    ResultStore(folder).put_trial(key, records)
    return key, records


# --------------------------------------------------------------------------- feature extraction


def image_files(folder: str | Path) -> list[Path]:
    """Every image under `folder` (recursively, hidden files skipped), in sorted path order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; expected a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise InputError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under this folder")
    return files


def extract_paths(method: torch.nn.Module, paths: Sequence[str | Path], modality: int, cfg: TrialConfig,
                  device: torch.device, *, quiet: bool = False) -> torch.Tensor:
    """Test features of image files (decoded batch by batch, so memory stays bounded)."""
    from harness.trial import extract_features

    batch = cfg.train.eval_batch_size
    out = []
    with TaskProgress("extracting features", len(paths), unit="img", quiet=quiet) as progress:
        for start in range(0, len(paths), batch):
            chunk = [os.fspath(p) for p in paths[start:start + batch]]
            images = torch.from_numpy(decode_images(chunk, cfg.data.height, cfg.data.width,
                                                    resample=cfg.data.test_resize))
            feats, _ = extract_features(method, images, np.full(len(chunk), modality), device=device,
                                        batch_size=batch, amp=cfg.train.amp, channels_last=cfg.train.channels_last,
                                        flip=cfg.evaluation.flip, similarity=method.test_similarity)
            out.append(feats.cpu())
            progress.advance(len(chunk))
    return torch.cat(out)


def extract_folder(model: str | Path, folder: str | Path, *, modality: str, out: str | Path,
                   overrides: dict[str, Any] | None = None, quiet: bool = False) -> Path:
    """Write `out` (.npz): `features` float32 (N, D), `paths` (N,) of every image under `folder` and
    `similarity`, how the method's features are compared ("cosine" or "dot", ReIDMethod.test_similarity).

    Paths are stored relative to `folder` as fixed-width unicode (readable with
    `np.load(out, allow_pickle=False)`).
    """
    from harness.training import prepare_run

    if modality not in MODALITIES:
        raise InputError(f"--modality: {modality!r} is not one of {', '.join(MODALITIES)}")
    out = Path(out)
    if out.suffix != ".npz":
        raise InputError(f"--out {out}: expected a file name ending in .npz")
    files = image_files(folder)
    saved = read_model(model)
    cfg = evaluation_config(saved, overrides)
    device = prepare_run(cfg)
    method = load_method(saved, cfg, device=device)
    features = extract_paths(method, files, MODALITIES[modality], cfg, device, quiet=quiet)
    names = np.array([str(p.relative_to(Path(folder))) for p in files])
    with atomic_path(out) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, features=features.numpy().astype(np.float32), paths=names,
                 similarity=np.array(method.test_similarity))
    return out


# --------------------------------------------------------------------------- backbone export

def _refuse_overwriting_a_model(saved: SavedModel, targets: Sequence[Path]) -> None:
    """InputError when writing `targets` would replace the input model or any saved model (weights or card)."""
    inputs = (saved.weights, saved.weights.with_suffix(CARD_SUFFIX))
    for target in targets:
        same = any(target.resolve() == source.resolve() or (target.exists() and os.path.samefile(target, source))
                   for source in inputs)
        if same:
            raise InputError(f"{target}: this is the model being exported ({saved.weights}); "
                             "write the backbone to another file")
        card = target.with_suffix(CARD_SUFFIX)
        if weights_format(target) == SAVED_MODEL_FORMAT or _card_format(card) == SAVED_MODEL_FORMAT:
            raise InputError(f"{target}: a saved model is here ({card} is its card); exporting onto it would "
                             "replace its weights and card: choose another file name")


def _card_format(card: Path) -> object:
    """The `format` a JSON card names, None when the file is missing or is no card."""
    try:
        value = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return value.get("format") if isinstance(value, dict) else None


def export_backbone(model: str | Path, out: str | Path, *, stem: str = "visible") -> Path:
    """Write a saved model's backbone as plain timm weights (safetensors) and a JSON card beside it.

    The file is what `model.pretrained_file` loads, so a backbone pre-trained here starts other
    runs as ImageNet weights would (both modality stems start from the exported `stem`). The card
    says where the weights come from: source model, its config and dataset, versions, SHA-256.
    Neither file may replace the input model or another saved model (InputError, nothing written).
    """
    from safetensors.torch import save_file

    from harness.provenance import file_sha256, library_versions
    from methods.backbones import TwoStreamBackbone, timm_state_dict

    out = Path(out)
    if out.suffix != ".safetensors":
        raise InputError(f"{out}: expected a file name ending in .safetensors")
    if stem not in MODALITIES:
        raise InputError(f"--stem: {stem!r} is not one of {', '.join(MODALITIES)}")
    saved = read_model(model)
    _refuse_overwriting_a_model(saved, (out, out.with_suffix(CARD_SUFFIX)))
    backbones = [m for m in load_method(saved).modules() if isinstance(m, TwoStreamBackbone)]
    if len(backbones) != 1:
        raise InputError(f"{saved.weights}: expected one two-stream timm backbone in method "
                         f"{saved.card.get('method')!r}, found {len(backbones)}")
    backbone = backbones[0]
    tensors = timm_state_dict(backbone, MODALITIES[stem])
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as temporary:  # one metadata entry: safetensors writes several in random order
        save_file(tensors, str(temporary), metadata={"format": BACKBONE_FORMAT})
    card = {"format": BACKBONE_FORMAT, "backbone": backbone.model_name, "stem": stem,
            "sha256": file_sha256(out), "source_model": saved.key, "source_sweep": saved.card.get("sweep"),
            "trained_on": saved.card.get("dataset"), "source_config": saved.card.get("config"),
            "versions": library_versions()}
    atomic_write_text(out.with_suffix(CARD_SUFFIX), json.dumps(card, indent=1, sort_keys=True, default=str) + "\n")
    return out
