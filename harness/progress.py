"""Live sweep progress (rich): trials done / running / failed / pruned, best so far, ETA."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class SweepProgress:
    def __init__(self, total: int, title: str, *, quiet: bool = False, console: Console | None = None) -> None:
        self.total, self.title, self.quiet = total, title, quiet
        self.counts = {"ok": 0, "failed": 0, "pruned": 0, "skipped": 0}
        self.best: float | None = None
        self.started = time.time()
        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                 disable=quiet, transient=False)
        self.sweep_task = self.progress.add_task(self._summary(), total=total)
        self.epoch_task: Any = None

    def _summary(self) -> str:
        c = self.counts
        best = f" best Rank-1 {self.best:.1f}" if self.best is not None else ""
        return (f"[bold]{self.title}[/] trials: {c['ok']} ok, {c['failed']} failed, {c['pruned']} pruned, "
                f"{c['skipped']} resumed{best}")

    def __enter__(self) -> "SweepProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def trial_skipped(self, status: str) -> None:
        self.counts["skipped"] += 1
        self.progress.update(self.sweep_task, advance=1, description=self._summary())

    def trial_started(self, label: str, *, epochs: int) -> None:
        if self.epoch_task is not None:
            self.progress.remove_task(self.epoch_task)
        self.epoch_label = f"  {label}: epoch"
        self.epoch_task = self.progress.add_task(self.epoch_label, total=epochs)

    def iteration(self, epoch: int, it: int) -> None:
        pass

    def epoch(self, epoch: int, losses: dict[str, float]) -> None:
        if self.epoch_task is not None:
            loss = losses.get("total")
            text = self.epoch_label + (f" loss {loss:.3f}" if loss is not None else "")
            self.progress.update(self.epoch_task, completed=epoch + 1, description=text)

    def trial_finished(self, status: str, *, score: float | None = None, failure: str | None = None) -> None:
        self.counts[status if status in self.counts else "failed"] += 1
        if score is not None and (self.best is None or score > self.best):
            self.best = score
        if failure and not self.quiet:
            self.console.print(f"[red]trial failed:[/] {failure}")
        self.progress.update(self.sweep_task, advance=1, description=self._summary())
