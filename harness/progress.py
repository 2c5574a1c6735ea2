"""Live sweep progress: trials done / running / failed / pruned, best so far, elapsed and ETA.

Rendered with rich when it is installed; otherwise (e.g. a GPU machine with a preinstalled stack
and no network) one plain line per trial event goes to stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any

try:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
except ImportError:  # pragma: no cover - exercised only where rich is missing
    Progress = None


class SweepProgress:
    def __init__(self, total: int, title: str, *, quiet: bool = False, console: Any = None) -> None:
        self.total, self.title, self.quiet = total, title, quiet
        self.counts = {"ok": 0, "failed": 0, "pruned": 0, "skipped": 0}
        self.best: float | None = None
        self.started = time.time()
        self.epoch_task: Any = None
        self.epoch_label = ""
        self.progress = None
        if Progress is not None:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=console or Console(stderr=True), disable=quiet, transient=False)
            self.sweep_task = self.progress.add_task(self._summary(), total=total)

    def _summary(self) -> str:
        c = self.counts
        best = f" best Rank-1 {self.best:.1f}" if self.best is not None else ""
        return (f"{self.title} trials: {c['ok']} ok, {c['failed']} failed, {c['pruned']} pruned, "
                f"{c['skipped']} resumed{best}")

    def _plain(self, text: str) -> None:
        if self.progress is None and not self.quiet:
            done = sum(self.counts.values())
            elapsed = time.time() - self.started
            print(f"[{done}/{self.total} {elapsed:.0f}s] {text}", file=sys.stderr, flush=True)

    def __enter__(self) -> "SweepProgress":
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.update(self.sweep_task, advance=1, description=self._summary())
        else:
            self._plain(self._summary())

    def trial_skipped(self, status: str) -> None:
        self.counts["skipped"] += 1
        self._advance()

    def trial_started(self, label: str, *, epochs: int) -> None:
        self.epoch_label = f"  {label}: epoch"
        if self.progress is None:
            self._plain(f"started {label}")
            return
        if self.epoch_task is not None:
            self.progress.remove_task(self.epoch_task)
        self.epoch_task = self.progress.add_task(self.epoch_label, total=epochs)

    def iteration(self, epoch: int, it: int) -> None:
        """Per-iteration hook (the display updates per epoch)."""

    def epoch(self, epoch: int, losses: dict[str, float]) -> None:
        loss = losses.get("total")
        text = self.epoch_label + (f" loss {loss:.3f}" if loss is not None else "")
        if self.progress is not None and self.epoch_task is not None:
            self.progress.update(self.epoch_task, completed=epoch + 1, description=text)

    def trial_finished(self, status: str, *, score: float | None = None, failure: str | None = None) -> None:
        self.counts[status if status in self.counts else "failed"] += 1
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        if failure and not self.quiet:
            print(f"trial failed: {failure}", file=sys.stderr, flush=True)
        self._advance()
