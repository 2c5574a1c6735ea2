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


def stderr_is_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class PlainLines:
    """Timestamped progress lines for logs and batch jobs, at most one per `interval` seconds.

    `emit(text)` prints when the interval has passed since the last line (or `force=True`, for
    events that must be seen: a trial starting or ending, a task finishing).
    """

    def __init__(self, *, interval: float = 30.0, stream: Any = None,
                 clock: Any = time.monotonic, wallclock: Any = time.time) -> None:
        self.interval, self.stream, self.clock, self.wallclock = interval, stream, clock, wallclock
        self._last: float | None = None

    def emit(self, text: str, *, force: bool = False) -> bool:
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.wallclock()))
        print(f"{stamp} {text}", file=self.stream or sys.stderr, flush=True)
        return True


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class TaskProgress:
    """Progress of one counted task (images through a network, iterations of an epoch).

    A rich bar when stderr is a terminal; otherwise `PlainLines` with the count, rate, ETA and
    the latest `fields` (e.g. loss, lr). `advance(n, **fields)` counts `n` more units done.
    """

    def __init__(self, description: str, total: int, *, unit: str = "it", quiet: bool = False,
                 plain: bool | None = None, lines: PlainLines | None = None, clock: Any = time.monotonic) -> None:
        self.description, self.total, self.unit, self.quiet = description, total, unit, quiet
        self.clock = clock
        self.done = 0
        self.fields: dict[str, Any] = {}
        self.started = clock()
        plain = (not stderr_is_terminal() or Progress is None) if plain is None else plain
        self.lines = (lines or PlainLines(clock=clock)) if plain and not quiet else None
        self.progress = None
        if not plain and not quiet:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[extra]}"), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=True)
            self.task = self.progress.add_task(description, total=total, extra="")

    def __enter__(self) -> "TaskProgress":
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
        elif self.lines is not None and exc[0] is None:
            self.lines.emit(self.status(), force=True)

    def status(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
        extra = "".join(f" {k} {v:.4g}" if isinstance(v, float) else f" {k} {v}" for k, v in self.fields.items())
        return (f"{self.description} {self.done}/{self.total} {self.unit}{extra} "
                f"{rate:.1f} {self.unit}/s ETA {eta}")

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        if self.progress is not None:
            extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items())
            self.progress.update(self.task, advance=n, extra=extra)
        elif self.lines is not None:
            self.lines.emit(self.status())
