"""Training curves: one row per epoch, kept with the trial and written as TensorBoard event files.

A row holds `epoch` (1-based) and
- `loss/<term>`: the mean of each weighted loss term over the epoch's steps (`loss/total` their
  sum), plus `loss/<name>` for the values a method monitors without training on them
  (`method.monitored`, e.g. MCLNet's modality discriminator loss);
- `lr/<group>`: the learning rate each parameter group trained the epoch with (and of any
  optimiser a module owns, e.g. `lr/mcm`);
- `train_img_per_s`: training images per second of the epoch's steps;
- `val/<metric>` (percent) when the trial holds out validation identities.

`CurveRecorder` attaches to a Trainer's iteration and epoch callbacks. Its rows survive a resumed
trial: they are written (atomically) beside the checkpoint after each epoch and read back with it,
and its `on_rows` hook sees them after each epoch (the runner writes TensorBoard events live).

`write_tensorboard` writes a trial's folder: the rows, and when the trial is over its final test
metrics (`test/<protocol>/rank1|mAP|mINP`, `test_scalars`) and an HParams summary (the swept keys
and the final metrics), so TensorBoard's HParams view compares the trials of a sweep.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from harness.atomic import atomic_write_bytes, atomic_write_text

TENSORBOARD_FOLDER = "tensorboard"


def learning_rates(method: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """`lr/<group name>` of the trainer's optimiser and of every optimiser a sub-module owns."""
    rates = {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
    for name, module in method.named_modules():
        own = getattr(module, "optimizer", None)
        if name and isinstance(own, torch.optim.Optimizer) and own is not optimizer:
            for i, g in enumerate(own.param_groups):
                rates[f"lr/{name}" + (f".{i}" if len(own.param_groups) > 1 else "")] = float(g["lr"])
    return rates


def curves_resume_file(checkpoint: Path) -> Path:
    """Where a trial's rows wait beside its checkpoint until the trial is stored."""
    return checkpoint.with_name(checkpoint.name + ".curves.json")


def read_curves_file(path: Path) -> list[dict[str, float]]:
    """The rows waiting in a resume file; none when it is missing or unreadable (a torn write)."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "epoch" in r for r in rows):
        return []
    return rows


class CurveRecorder:
    """Collects the per-epoch rows of one trial (see the module docstring)."""

    def __init__(self, trainer: Any, *, validate: Callable[[], dict[str, float]] | None = None,
                 resume_file: Path | None = None,
                 on_rows: Callable[[list[dict[str, float]]], None] | None = None) -> None:
        self.trainer, self.validate, self.resume_file, self.on_rows = trainer, validate, resume_file, on_rows
        self.rows: list[dict[str, float]] = []
        self._epoch_lrs: dict[str, float] = {}
        self._monitored: dict[str, torch.Tensor] = {}
        self._steps = 0
        self._seen = (0, 0.0)  # images seen and seconds trained when the epoch started

    def attach(self) -> CurveRecorder:
        """Register on the trainer; call after `maybe_resume` so resumed rows are kept."""
        self.trainer.iteration_callbacks.append(self._on_iteration)
        self.trainer.epoch_callbacks.insert(0, self._on_epoch)  # before callbacks that may stop the trial
        start = self.trainer.start_epoch
        if start and self.resume_file is not None and self.resume_file.is_file():
            self.rows = [r for r in read_curves_file(self.resume_file) if r["epoch"] <= start]
        stats = self.trainer.stats
        self._seen = (stats.images_seen, stats.train_seconds)
        return self

    def _on_iteration(self, epoch: int, step: int) -> None:
        if step == 0:
            self._epoch_lrs = learning_rates(self.trainer.method, self.trainer.optimizer)
        for name, value in getattr(self.trainer.method, "monitored", {}).items():
            total = self._monitored.get(name)
            self._monitored[name] = value.detach().float() if total is None else total + value.detach().float()
        self._steps += 1

    def _on_epoch(self, epoch: int, stats: Any) -> None:
        images, seconds = stats.images_seen - self._seen[0], stats.train_seconds - self._seen[1]
        self._seen = (stats.images_seen, stats.train_seconds)
        row: dict[str, float] = {"epoch": epoch + 1}
        row.update({f"loss/{k}": float(v) for k, v in stats.last_losses.items()})
        row.update({f"loss/{k}": float(v) / max(self._steps, 1) for k, v in self._monitored.items()})
        row.update(self._epoch_lrs)
        row["train_img_per_s"] = images / seconds if seconds > 0 else float("nan")
        if self.validate is not None:
            row.update({f"val/{k}": float(v) for k, v in self.validate().items() if not k.endswith("_std")})
        self.rows.append(row)
        self._monitored, self._steps = {}, 0
        if self.resume_file is not None:
            atomic_write_text(self.resume_file, json.dumps(self.rows))
        if self.on_rows is not None:
            self.on_rows(list(self.rows))


TEST_METRICS = ("rank1", "mAP", "mINP")
"""The final metrics of each test protocol written to TensorBoard as `test/<protocol>/<metric>`."""


def test_scalars(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """`test/<protocol>/<metric>` of a trial's ok records (the validation protocol's are the curves' `val/*`)."""
    out = {}
    for record in records:
        protocol = record.get("protocol")
        if record.get("status") != "ok" or not protocol or protocol == "val":
            continue
        for name in TEST_METRICS:
            value = record.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"test/{protocol}/{name}"] = float(value)
    return out


def hparam_value(value: Any) -> bool | int | float | str:
    """A value as TensorBoard's HParams plugin takes it (lists and mappings as JSON text)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def write_tensorboard(folder: str | Path, rows: Sequence[dict[str, float]], *, final: dict[str, float] | None = None,
                      hparams: dict[str, Any] | None = None) -> Path:
    """Write `rows` (and, for a finished trial, the `final` scalars at the last epoch and an HParams
    session of `hparams` against the final metrics) as one TensorBoard event file in `folder`,
    replacing an earlier one.

    The file is produced by torch's SummaryWriter in a private temporary folder, then copied in
    atomically, so a reader never sees a partial event file; called after every epoch, it lets
    TensorBoard follow a running trial.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="vireid-tensorboard-") as scratch:
        writer = SummaryWriter(log_dir=scratch)
        for row in rows:
            step = int(row["epoch"])
            for tag, value in row.items():
                if tag != "epoch":
                    writer.add_scalar(tag, value, global_step=step)
        last = int(rows[-1]["epoch"]) if rows else 0
        for tag, value in (final or {}).items():
            writer.add_scalar(tag, value, global_step=last)
        if hparams is not None:
            metrics = {k: v for k, v in (rows[-1] if rows else {}).items() if k.startswith("val/")}
            metrics.update(final or {})
            for summary in hparams_summaries({k: hparam_value(v) for k, v in hparams.items()}, metrics):
                writer.file_writer.add_summary(summary, last)
        writer.close()
        (event_file,) = Path(scratch).glob("events.out.tfevents.*")
        # named by the time in microseconds, fixed width: each rewrite sorts after the last, as
        # TensorBoard expects of a run's newer event files
        target = folder / f"events.out.tfevents.{time.time_ns() // 1000:017d}.{socket.gethostname()}.vireid"
        atomic_write_bytes(target, event_file.read_bytes())
        for stale in folder.glob("events.out.tfevents.*"):
            if stale != target:
                stale.unlink(missing_ok=True)
    return target
