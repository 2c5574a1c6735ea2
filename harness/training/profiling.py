"""PhaseTimer: wall-clock seconds per named phase of the training step (`vireid bench`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from harness.training.device import synchronize

_NO_SECTION = nullcontext()


class PhaseTimer:
    """Wall-clock seconds per named phase of the training step, for `vireid bench`.

    Disabled (the default), `timer("forward")` returns one shared no-op context, so instrumented
    code costs a call per phase. Enabled, each section synchronises the device on entry and on
    exit: asynchronous CUDA work is then charged to the phase that queued it (and the step runs
    slower than without the timer). Nested sections are exclusive: a parent's time excludes its
    children's, so the phases of a step add up to the time spent inside sections.
    """

    def __init__(self, device: torch.device | None = None, *, enabled: bool = False,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.device = device or torch.device("cpu")
        self.enabled = enabled
        self.clock = clock
        self.seconds: dict[str, float] = {}
        """Exclusive seconds per phase, summed over every section since the last reset."""
        self.calls: dict[str, int] = {}
        self._open: list[list[Any]] = []  # [phase, start, seconds spent in child sections]

    def __call__(self, phase: str) -> AbstractContextManager[Any]:
        return _TimedSection(self, phase) if self.enabled else _NO_SECTION

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def _enter(self, phase: str) -> None:
        synchronize(self.device)
        self._open.append([phase, self.clock(), 0.0])

    def _exit(self) -> None:
        synchronize(self.device)
        phase, start, children = self._open.pop()
        elapsed = self.clock() - start
        self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed - children
        self.calls[phase] = self.calls.get(phase, 0) + 1
        if self._open:
            self._open[-1][2] += elapsed


class _TimedSection:
    __slots__ = ("phase", "timer")

    def __init__(self, timer: PhaseTimer, phase: str) -> None:
        self.timer, self.phase = timer, phase

    def __enter__(self) -> None:
        self.timer._enter(self.phase)

    def __exit__(self, *exc_info: Any) -> None:
        self.timer._exit()
