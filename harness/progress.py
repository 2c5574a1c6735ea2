"""Progress on the console: sweeps (trials done / failed / pruned, best so far), the epochs and
steps of the running trial (loss, lr, images/s, ETA), and counted tasks such as feature extraction.

On a terminal it is a live rich display. When stderr is not a terminal (a log file, a batch job)
or rich is missing, it is plain timestamped lines at a bounded rate (`PlainLines`): every trial
event, and at most one step line per interval, so a log shows where the sweep is.
"""

from __future__ import annotations

import sys
import time
from typing import Any

try:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
except ImportError:  # pragma: no cover - exercised only where rich is missing
    Progress = None

STEP_LINE_INTERVAL = 30.0
"""Seconds between two plain step lines of a running trial."""


def _step_text(fields: dict[str, Any]) -> str:
    parts = []
    if fields.get("loss") is not None:
        parts.append(f"loss {fields['loss']:.4g}")
    if fields.get("lr") is not None:
        parts.append(f"lr {fields['lr']:.3g}")
    if fields.get("img_per_s"):
        parts.append(f"{fields['img_per_s']:.1f} img/s")
    return " ".join(parts)


class SweepProgress:
    """Sweep-level progress plus the running trial's epoch and step (see the module docstring)."""

    def __init__(self, total: int, title: str, *, quiet: bool = False, console: Any = None,
                 plain: bool | None = None, lines: PlainLines | None = None) -> None:
        self.total, self.title, self.quiet = total, title, quiet
        self.counts = {"ok": 0, "failed": 0, "pruned": 0, "skipped": 0}
        self.earlier_failures = 0
        self.best: float | None = None
        self.started = time.time()
        self.epoch_task: Any = None
        self.step_task: Any = None
        self.label = ""
        self.epochs = 0
        self._trial_started = time.monotonic()
        self._speed: tuple[float, int, float] | None = None  # (clock, images, seconds) of the previous step
        if plain is None:
            plain = Progress is None or not (console.is_terminal if console is not None else stderr_is_terminal())
        self.progress = None
        self.lines = (lines or PlainLines(interval=STEP_LINE_INTERVAL)) if plain and not quiet else None
        if not plain:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(),
                                     console=console or Console(stderr=True), disable=quiet, transient=False)
            self.sweep_task = self.progress.add_task(self._summary(), total=total)

    def _summary(self) -> str:
        c = self.counts
        best = f" best Rank-1 {self.best:.1f}" if self.best is not None else ""
        earlier = f" ({self.earlier_failures} of them failed)" if self.earlier_failures else ""
        return (f"{self.title} trials: {c['ok']} ok, {c['failed']} failed, {c['pruned']} pruned, "
                f"{c['skipped']} done by earlier runs{earlier}{best}")

    def _plain(self, text: str, *, force: bool = True) -> None:
        if self.lines is not None:
            done = sum(self.counts.values())
            self.lines.emit(f"[{done}/{self.total}] {text}", force=force)

    def __enter__(self) -> SweepProgress:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _advance(self) -> None:
        if self.progress is not None:
            self.progress.update(self.sweep_task, advance=1, description=self._summary())
        else:
            self._plain(self._summary())

    def trial_skipped(self, status: str) -> None:
        """A trial an earlier run finished (`status`: what it stored) is not run again."""
        self.counts["skipped"] += 1
        if status == "failed":
            self.earlier_failures += 1
        self._advance()

    def trial_started(self, label: str, *, epochs: int) -> None:
        self.label, self.epochs = label, epochs
        self._trial_started, self._speed = time.monotonic(), None
        if self.progress is None:
            self._plain(f"started {label}")
            return
        for task in (self.epoch_task, self.step_task):
            if task is not None:
                self.progress.remove_task(task)
        self.epoch_task = self.progress.add_task(f"  {label}: epoch", total=epochs)
        self.step_task = self.progress.add_task("    step", total=None)

    def iteration(self, epoch: int, step: int, fields: dict[str, Any] | None = None) -> None:
        """After each training step: `fields` may hold steps (per epoch), loss, lr, images, seconds;
        with `phase: evaluating`, `step + 1` of `steps` test images are through the network."""
        fields = dict(fields or {})
        if fields.get("phase") == "evaluating":
            self._evaluating(step + 1, fields.get("steps"))
            return
        if "images" in fields and "seconds" in fields:
            if self._speed is not None and fields["seconds"] > self._speed[2]:
                fields["img_per_s"] = (fields["images"] - self._speed[1]) / (fields["seconds"] - self._speed[2])
            self._speed = (time.monotonic(), fields["images"], fields["seconds"])
        steps = fields.get("steps")
        text = _step_text(fields)
        if self.progress is not None and self.step_task is not None:
            self.progress.update(self.step_task, completed=step + 1, total=steps,
                                 description=f"    epoch {epoch + 1}/{self.epochs} step" + (f" {text}" if text else ""))
        elif self.lines is not None:
            done_steps = epoch * steps + step + 1 if steps else None
            eta = ""
            if done_steps and self.epochs:
                elapsed = time.monotonic() - self._trial_started
                eta = f" ETA {format_duration(elapsed / done_steps * (self.epochs * steps - done_steps))}"
            where = f"step {step + 1}/{steps}" if steps else f"step {step + 1}"
            self._plain(f"{self.label} epoch {epoch + 1}/{self.epochs} {where}" + (f" {text}" if text else "") + eta,
                        force=False)

    def _evaluating(self, done: int, total: int | None) -> None:
        if self.progress is not None and self.step_task is not None:
            self.progress.update(self.step_task, completed=done, total=total, description="    evaluating: images")
        elif self.lines is not None:
            self._plain(f"{self.label} evaluating {done}/{total} test images", force=False)

    def epoch(self, epoch: int, losses: dict[str, float]) -> None:
        loss = losses.get("total")
        text = f"  {self.label}: epoch" + (f" loss {loss:.3f}" if loss is not None else "")
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
    seconds = max(0, round(seconds))
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
        self._reported = -1  # the count of the last plain line
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

    def __enter__(self) -> TaskProgress:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)
        elif self.lines is not None and exc[0] is None and self._reported != self.done:
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
        elif self.lines is not None and self.lines.emit(self.status()):
            self._reported = self.done
