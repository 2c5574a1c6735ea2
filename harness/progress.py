"""Progress on the console: sweeps (trials done / failed / pruned, best so far), the epochs and
steps of the running trial (loss, lr, images/s, ETA), and counted tasks such as feature extraction.

On a terminal it is a live rich display. When stderr is not a terminal (a log file, a batch job)
or rich is missing, it is plain timestamped lines at a bounded rate (`PlainLines`): every trial
event, and at most one step line per interval, so a log shows where the sweep is.
"""

from __future__ import annotations

import logging
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
    from rich.table import Column
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
    """Sweep-level progress plus the running trial's epoch and step (see the module docstring).

    Estimates come from what this process has seen: the sweep's ETA from the trials it finished
    (trials an earlier run finished are counted as done, never as speed), before the first one from
    the running trial's step time; a trial's ETA from the steps since its first one (building data
    and caching images are not steps). While a sweep shows, the harness's INFO log lines (building
    synthetic data, caching images) are shown as what the trial is doing.
    """

    def __init__(self, total: int, title: str, *, quiet: bool = False, console: Any = None,
                 plain: bool | None = None, lines: PlainLines | None = None, clock: Any = time.monotonic) -> None:
        self.total, self.title, self.quiet, self.clock = total, title, quiet, clock
        self.counts = {"ok": 0, "failed": 0, "pruned": 0, "skipped": 0}
        self.earlier_failures = 0
        self.best: float | None = None
        self.started = clock()
        self.epoch_task: Any = None
        self.step_task: Any = None
        self.label = ""
        self.epochs = 0
        self._steps: dict[str, Any] = {}  # the running trial's step clock: first, done, per_epoch
        self._speed: tuple[float, int, float] | None = None  # (clock, images, seconds) of the previous step
        self._log_handler: logging.Handler | None = None
        self._log_level = logging.NOTSET
        if plain is None:
            plain = Progress is None or not (console.is_terminal if console is not None else stderr_is_terminal())
        self.progress = None
        self.lines = (lines or PlainLines(interval=STEP_LINE_INTERVAL, clock=clock)) if plain and not quiet else None
        if not plain:
            self.progress = Progress(TextColumn("{task.description}", table_column=Column(ratio=1, overflow="fold")),
                                     BarColumn(bar_width=12), MofNCompleteColumn(), TimeElapsedColumn(),
                                     TextColumn("{task.fields[eta]}", table_column=Column(no_wrap=True, min_width=12)),
                                     console=console or Console(stderr=True), disable=quiet, transient=False,
                                     expand=True)
            self.sweep_task = self.progress.add_task(self._summary(), total=total, eta=self._eta_text())

    # ----------------------------------------------------------------- estimates

    @property
    def finished_here(self) -> int:
        return self.counts["ok"] + self.counts["failed"] + self.counts["pruned"]

    def _trial_step_seconds(self) -> float | None:
        s = self._steps
        if not s or s["done"] - s["first_done"] < 1:
            return None
        return (s["last"] - s["first"]) / (s["done"] - s["first_done"])

    def trial_eta(self) -> float | None:
        """Seconds left in the running trial's training, from its step time (None before two steps)."""
        step = self._trial_step_seconds()
        if step is None or not self.epochs:
            return None
        return step * max(0, self.epochs * self._steps["per_epoch"] - self._steps["done"])

    def sweep_eta(self) -> float | None:
        """Seconds left in the sweep: the time per trial finished in this process, else the running
        trial's step time over every step left (None when neither is known)."""
        remaining = self.total - sum(self.counts.values())
        if remaining <= 0:
            return 0.0
        if self.finished_here:
            return (self.clock() - self.started) / self.finished_here * remaining
        left = self.trial_eta()
        if left is None:
            return None
        return left + (remaining - 1) * self._trial_step_seconds() * self.epochs * self._steps["per_epoch"]

    def _eta_text(self, seconds: float | None = None, *, sweep: bool = True) -> str:
        value = self.sweep_eta() if sweep else seconds
        return f"ETA {format_duration(value)}" if value is not None else "ETA ?"

    def _summary(self) -> str:
        c = self.counts
        best = f", best Rank-1 {self.best:.1f}" if self.best is not None else ""
        earlier = f" ({self.earlier_failures} of them failed)" if self.earlier_failures else ""
        done = f", {c['skipped']} done by earlier runs{earlier}" if c["skipped"] else ""
        return f"{self.title}: {c['ok']} ok, {c['failed']} failed, {c['pruned']} pruned{done}{best}"

    def _plain(self, text: str, *, force: bool = True) -> None:
        if self.lines is not None:
            done = sum(self.counts.values())
            self.lines.emit(f"[{done}/{self.total}] {text}", force=force)

    # ----------------------------------------------------------------- the display

    def __enter__(self) -> SweepProgress:
        if self.progress is not None:
            self.progress.__enter__()
        if not self.quiet:  # the harness's INFO lines say what a trial is doing before its first step
            logger = logging.getLogger(LOGGER)
            self._log_handler, self._log_level = _NoteHandler(self), logger.level
            logger.addHandler(self._log_handler)
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._log_handler is not None:
            logger = logging.getLogger(LOGGER)
            logger.removeHandler(self._log_handler)
            logger.setLevel(self._log_level)
            self._log_handler = None
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def note(self, text: str) -> None:
        """What the running trial does now (a phase without steps: building data, caching images)."""
        if self.progress is not None and self.step_task is not None:
            self.progress.update(self.step_task, description=f"    {text}", total=None, completed=0)
        elif self.progress is not None:
            self.progress.console.log(text)
        else:
            self._plain(f"{self.label}: {text}" if self.label else text)

    def _refresh_sweep(self, advance: int = 0) -> None:
        if self.progress is not None:
            self.progress.update(self.sweep_task, advance=advance, description=self._summary(), eta=self._eta_text())

    def _advance(self) -> None:
        if self.progress is not None:
            self._refresh_sweep(advance=1)
        else:
            remaining = self.total - sum(self.counts.values())
            self._plain(self._summary() + (f"; {self._eta_text()}" if remaining else ""))

    def trial_skipped(self, status: str) -> None:
        """A trial an earlier run finished (`status`: what it stored) is not run again; it counts as
        done, never as speed (the ETA comes from trials run here)."""
        self.counts["skipped"] += 1
        if status == "failed":
            self.earlier_failures += 1
        if self.progress is not None:
            self.progress.update(self.sweep_task, completed=sum(self.counts.values()), description=self._summary(),
                                 eta=self._eta_text())
        else:
            self._plain(self._summary(), force=False)

    def trial_started(self, label: str, *, epochs: int) -> None:
        self.label, self.epochs = label, epochs
        self._steps, self._speed = {}, None
        if self.progress is None:
            self._plain(f"started {label}")
            return
        for task in (self.epoch_task, self.step_task):
            if task is not None:
                self.progress.remove_task(task)
        self.epoch_task = self.progress.add_task(f"  {label}: epoch", total=epochs, eta="")
        self.step_task = self.progress.add_task("    preparing data", total=None, eta="")

    def iteration(self, epoch: int, step: int, fields: dict[str, Any] | None = None) -> None:
        """After each training step: `fields` may hold steps (per epoch), loss, lr, images, seconds;
        with `phase: evaluating`, `step + 1` of `steps` test images are through the network."""
        fields = dict(fields or {})
        if fields.get("phase") == "evaluating":
            self._evaluating(step + 1, fields.get("steps"))
            return
        now = self.clock()
        if "images" in fields and "seconds" in fields:
            if self._speed is not None and fields["seconds"] > self._speed[2]:
                fields["img_per_s"] = (fields["images"] - self._speed[1]) / (fields["seconds"] - self._speed[2])
            self._speed = (now, fields["images"], fields["seconds"])
        steps = fields.get("steps")
        if steps:
            done = epoch * steps + step + 1
            if not self._steps:
                self._steps = {"first": now, "first_done": done, "per_epoch": steps}
            self._steps.update(last=now, done=done, per_epoch=steps)
        text = _step_text(fields)
        if self.progress is not None and self.step_task is not None:
            self.progress.update(self.step_task, completed=step + 1, total=steps,
                                 description=f"    epoch {epoch + 1}/{self.epochs} step" + (f" {text}" if text else ""))
            if self.epoch_task is not None:
                self.progress.update(self.epoch_task, eta=self._eta_text(self.trial_eta(), sweep=False))
            self._refresh_sweep()
        elif self.lines is not None:
            left = self.trial_eta()
            eta = f" ETA {format_duration(left)}" if left is not None else ""
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


LOGGER = "harness"
"""The logger whose INFO lines a sweep's display shows (data building, image caching)."""


class _NoteHandler(logging.Handler):
    """Routes the harness's log lines to a sweep display's `note`."""

    def __init__(self, owner: SweepProgress) -> None:
        super().__init__(level=logging.INFO)
        self.owner = owner

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.owner.note(record.getMessage())
        except Exception:  # noqa: BLE001  (a display that breaks must not fail the trial it shows)
            self.handleError(record)


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
