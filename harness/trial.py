"""One trial: config -> trained final model -> one record per evaluation protocol."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.config import TrialConfig
from harness.curves import CurveRecorder, curves_resume_file
from harness.data.augment import normalize
from harness.data.cache_root import cache_root
from harness.data.images import load_images
from harness.data.registry import load_dataset
from harness.data.splits import DatasetBundle, EvalProtocol
from harness.errors import ConfigError, TrialFailure
from harness.evaluation import evaluate_trials
from harness.progress import TaskProgress
from harness.provenance import config_key, environment_fields
from harness.results.records import TrialRecord
from harness.saved_models import TrainedModel
from harness.training import TrainData, autocast_context, build_components, prepare_run
from methods.base import ReIDMethod

RANKS = (1, 5, 10, 20)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def flip_average(features: torch.Tensor, mirrored: torch.Tensor, similarity: str = "cosine") -> torch.Tensor:
    """Test-time flip averaging as the CAJ code's testa.py: both features L2-normalised, averaged, normalised.

    The ranking normalises every feature again, so the returned unit vectors rank exactly as the
    code's; the average is taken after the first normalisation, so neither view dominates by norm.
    For a method whose features are compared by their plain dot product (`similarity="dot"`, parts
    the method normalised itself) the two features are averaged as they are, with no normalisation
    (DEEN's test.py adds its two views' normalised parts: the same ranking).
    """
    if similarity == "dot":
        return (features + mirrored) / 2
    return F.normalize((F.normalize(features, dim=1) + F.normalize(mirrored, dim=1)) / 2, dim=1)


@torch.inference_mode()
def extract_features(method: torch.nn.Module, images: torch.Tensor, modalities: np.ndarray, *,
                     device: torch.device, batch_size: int, amp: str, channels_last: bool, flip: bool = False,
                     similarity: str = "cosine",
                     on_batch: Callable[[int], None] | None = None) -> tuple[torch.Tensor, float]:
    """Test features of uint8 images, in batches; returns (features float32, images/s).

    `flip` (`evaluation.flip`): each image's feature is averaged with its horizontal mirror's
    (`flip_average`, as the method's `similarity` compares features), which costs a second forward
    pass. `on_batch(n)` is told after each batch how many images it held (progress displays).
    """
    method.eval()
    mods = torch.as_tensor(modalities, dtype=torch.long)
    out = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batch_modality = mods[start:start + batch_size].to(device)
        with autocast_context(device, amp):
            f = method.test_features(x, batch_modality)
            mirrored = method.test_features(x.flip(-1), batch_modality) if flip else None
        out.append(f.float() if mirrored is None else flip_average(f.float(), mirrored.float(), similarity))
        if on_batch is not None:
            on_batch(len(x))
    feats = torch.cat(out) if out else torch.empty(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return feats, len(images) / max(time.perf_counter() - t0, 1e-9)


def summarise(result: dict[str, Any]) -> dict[str, float]:
    """Flat metric columns (percent) from evaluate_trials' output."""
    cmc_mean, cmc_std = np.asarray(result["cmc_mean"]), np.asarray(result["cmc_std"])
    row: dict[str, float] = {}
    for r in RANKS:
        if r <= len(cmc_mean):
            row[f"rank{r}"] = 100 * float(cmc_mean[r - 1])
            row[f"rank{r}_std"] = 100 * float(cmc_std[r - 1])
    for m in ("mAP", "mINP"):
        row[m] = 100 * float(result[f"{m}_mean"])
        row[f"{m}_std"] = 100 * float(result[f"{m}_std"])
    return row


def evaluate_protocols(method: ReIDMethod, protocols: dict[str, EvalProtocol], cfg: TrialConfig,
                       device: torch.device, image_cache: Path | None, *, quiet: bool = True,
                       on_progress: Callable[[int, int], None] | None = None
                       ) -> tuple[dict[str, dict[str, Any]], float]:
    """Extract each distinct image once (queries shared by protocols), then score every protocol.

    Features are flip-averaged when `cfg.evaluation.flip` is set; distances are re-ranked when
    `cfg.evaluation.rerank` is enabled. `quiet=False` shows the
    extraction's progress (standalone evaluation); a sweep passes `on_progress(done, total)`
    instead, for its own display.
    """
    paths: dict[str, int] = {}
    mods: list[int] = []
    for p in protocols.values():
        for split in (p.query, p.gallery):
            for path, m in zip(split.paths, split.modalities.tolist()):
                if path not in paths:
                    paths[path] = len(paths)
                    mods.append(m)
    images = load_images(list(paths), cfg.data.height, cfg.data.width, cache_dir=image_cache,
                         resample=cfg.data.test_resize)
    with TaskProgress("extracting test features", len(images), unit="img", quiet=quiet) as progress:

        def advance(n: int) -> None:
            progress.advance(n)
            if on_progress is not None:
                on_progress(progress.done, len(images))

        feats, speed = extract_features(method, images, np.asarray(mods), device=device,
                                        batch_size=cfg.train.eval_batch_size, amp=cfg.train.amp,
                                        channels_last=cfg.train.channels_last, flip=cfg.evaluation.flip,
                                        similarity=method.test_similarity,
                                        on_batch=advance)
    results = {}
    for name, p in protocols.items():
        qi = torch.as_tensor([paths[x] for x in p.query.paths])
        gi = torch.as_tensor([paths[x] for x in p.gallery.paths])
        # rank_metrics' sysu rule uses SYSU camera numbers (1-based); splits store 0-based cameras.
        res = evaluate_trials(feats[qi], feats[gi], p.query.pids, p.gallery.pids, p.query.cams + 1,
                              p.gallery.cams + 1, p.trial_masks, protocol=p.metric_protocol,
                              query_masks=p.query_masks, rerank=cfg.evaluation.rerank,
                              similarity=method.test_similarity)
        results[name] = res
    return results, speed


@dataclass
class TrialResult:
    key: str
    status: str  # "ok" | "failed"
    records: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    checkpoint: Path | None = None
    """The trial's last checkpoint; the runner deletes it once the records are stored."""
    trained: TrainedModel | None = None
    """The final network of an ok trial; the runner saves it (harness.saved_models) or drops it."""
    curves: list[dict[str, float]] | None = None
    """One row per trained epoch (harness.curves); the runner stores them with the records."""


def step_fields(trainer: Any) -> dict[str, Any]:
    """What a progress display shows after a step: steps per epoch, loss, first group's lr, and the
    images and seconds trained so far (their differences give images/s)."""
    return {"steps": trainer.iters_per_epoch, "loss": trainer.last_step.get("total"),
            "lr": trainer.optimizer.param_groups[0]["lr"], "images": trainer.stats.images_seen,
            "seconds": trainer.stats.train_seconds}


def protocol_records(cfg: TrialConfig, common: dict[str, Any], protocols: dict[str, EvalProtocol],
                     results: dict[str, dict[str, Any]], *, key: str | None = None) -> list[dict[str, Any]]:
    """One ok record (TrialRecord) per evaluated protocol: `common` fields plus the protocol's metrics."""
    records = []
    for name, res in results.items():
        p = protocols[name]
        records.append(TrialRecord.ok(cfg, protocol=name, key=key, fields={
            **common, "metric_protocol": p.metric_protocol,
            "gallery_trials": int(p.trial_masks.shape[0]), **summarise(res),
            "cmc": json.dumps([float(x) for x in np.asarray(res["cmc_mean"])]),
            "per_trial": json.dumps([{"rank1": float(t["cmc"][0]), "mAP": float(t["mAP"]), "mINP": float(t["mINP"])}
                                     for t in res["trials"]]),
        }).as_dict())
    return records


def run_trial(cfg: TrialConfig, *, workdir: Path | None = None,
              on_epoch: Callable[[int, dict[str, float], Callable[[], dict[str, float]]], None] | None = None,
              on_iter: Callable[[int, int, dict[str, Any]], None] | None = None,
              extra: dict[str, Any] | None = None, test_protocols: bool = True,
              on_curves: Callable[[list[dict[str, float]]], None] | None = None) -> TrialResult:
    """Train `cfg` to its final epoch and evaluate that model on every test protocol.

    `test_protocols=False` (a search trial) evaluates the validation protocol instead and never
    touches the test images: the records are one record of protocol `val` (held-out training
    identities), so nothing of the test set can select a configuration.

    `on_iter(epoch, step, fields)` follows each training step (`step_fields`) and each batch of
    the final evaluation (`fields["phase"] == "evaluating"`), for progress displays.
    `on_epoch(epoch, losses, validate)` may call `validate()` for validation metrics (computed on
    held-out training identities only) and may raise to stop the trial. `on_curves(rows)` gets
    the training curves so far after each epoch (harness.curves; live TensorBoard). A checkpoint
    in `workdir` is resumed from. The result carries the per-epoch training curves and, when
    successful, the final network (`trained`) for the runner to keep.
    """
    key = config_key(cfg)
    started = time.time()
    device = prepare_run(cfg)
    bundle: DatasetBundle = load_dataset(cfg.data, seed=cfg.seed)
    image_cache = cache_root(cfg.data) / "images"
    train_images = load_images(list(bundle.train.paths), cfg.data.height, cfg.data.width, cache_dir=image_cache,
                               resample=cfg.data.train_resize)

    def reset_peak_memory(method: torch.nn.Module, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    ckpt = workdir / f"{key}.ckpt" if workdir else None
    if ckpt:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
    parts = build_components(cfg, TrainData(bundle.train, train_images, bundle.num_classes, bundle.num_cameras),
                             device, checkpoint_path=ckpt, before_trainer=reset_peak_memory)
    method, trainer = parts.method, parts.trainer
    if on_iter:
        trainer.iteration_callbacks.append(lambda epoch, step: on_iter(epoch, step, step_fields(trainer)))
    n_params = sum(p.numel() for p in method.parameters())

    validated: dict[int, tuple[dict[str, Any], float]] = {}

    def validation_result() -> tuple[dict[str, Any], float]:
        """evaluate_trials' result on the validation protocol for the current model and the images/s of
        its extraction, computed once per epoch."""
        if bundle.validation is None:
            raise TrialFailure("validation requested but data.val_identities is 0")
        epoch = trainer.stats.epochs_run
        if epoch not in validated:
            res, speed = evaluate_protocols(method, {"val": bundle.validation}, cfg, device, image_cache)
            method.train()
            validated.clear()
            validated[epoch] = (res["val"], speed)
        return validated[epoch]

    def validate() -> dict[str, float]:
        """Validation metrics of the current model, computed once per epoch (curves and pruning share them)."""
        return summarise(validation_result()[0])

    if on_epoch:
        trainer.epoch_callbacks.append(lambda epoch, stats: on_epoch(epoch, stats.last_losses, validate))
    base = {
        **environment_fields(device),
        "num_params": n_params, "num_train_images": len(bundle.train.paths), "num_classes": bundle.num_classes,
        **(extra or {}),
    }
    curves = CurveRecorder(trainer, validate=validate if bundle.validation is not None else None,
                           resume_file=curves_resume_file(ckpt) if ckpt else None, on_rows=on_curves)
    if not test_protocols and bundle.validation is None:
        raise ConfigError("a search trial is scored on held-out training identities and never on the test "
                          "protocols: set data.val_identities > 0")
    protocols = bundle.protocols if test_protocols else {"val": bundle.validation}
    try:
        trainer.maybe_resume()
        curves.attach()
        stats = trainer.fit()
        if test_protocols:
            results, infer_speed = evaluate_protocols(
                method, protocols, cfg, device, image_cache,
                on_progress=(lambda done, total: on_iter(stats.epochs_run, done - 1, {"phase": "evaluating",
                                                                                    "steps": total}))
                if on_iter else None)
        else:  # the last epoch's validation, shared with the curves and the pruner
            result, infer_speed = validation_result()
            results = {"val": result}
        val = validate() if bundle.validation is not None else {}
    except TrialFailure as exc:
        return TrialResult(key=key, status="failed", failure=str(exc), checkpoint=ckpt, curves=curves.rows, records=[
            TrialRecord.failed(cfg, str(exc), fields={**base, "wall_seconds": time.time() - started}).as_dict()])
    common = {
        **base, "epochs": stats.epochs_run,
        "train_img_per_s": stats.throughput, "infer_img_per_s": infer_speed,
        "peak_memory_mb": peak_memory_mb(device), "wall_seconds": time.time() - started,
        "final_losses": json.dumps(stats.last_losses),
        **{f"val_{k}": v for k, v in val.items()},
    }
    return TrialResult(key=key, status="ok", records=protocol_records(cfg, common, protocols, results),
                       checkpoint=ckpt, curves=curves.rows,
                       trained=TrainedModel(method, cfg, bundle.num_classes, bundle.num_cameras, bundle.name))
