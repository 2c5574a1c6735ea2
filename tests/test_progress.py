"""Console progress when stderr is not a terminal: timestamped plain lines at a bounded rate."""

import io
import re

from harness.progress import PlainLines, SweepProgress, TaskProgress

STAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} "


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_are_timestamped_and_rate_bounded():
    out, clock = io.StringIO(), Clock()
    lines = PlainLines(interval=10.0, stream=out, clock=clock)
    assert lines.emit("a")
    clock.now = 5.0
    assert not lines.emit("b")  # within the interval
    assert lines.emit("c", force=True)  # events always show
    clock.now = 14.0
    assert not lines.emit("d")  # 9 s after the forced line
    clock.now = 15.0
    assert lines.emit("e")
    text = out.getvalue().splitlines()
    assert [t[-1] for t in text] == ["a", "c", "e"]
    assert all(re.match(STAMP, t) for t in text)


def test_sweep_progress_in_a_log_shows_trials_and_bounded_step_lines():
    out, clock = io.StringIO(), Clock()
    progress = SweepProgress(total=2, title="demo", plain=True,
                             lines=PlainLines(interval=30.0, stream=out, clock=clock))
    with progress:
        progress.trial_started("agw seed=0", epochs=2)
        images = 0
        for epoch in range(2):
            for step in range(4):
                clock.now += 10.0
                images += 16
                progress.iteration(epoch, step, {"steps": 4, "loss": 3.25, "lr": 0.01, "images": images,
                                                 "seconds": images / 32})
            progress.epoch(epoch, {"total": 3.0})
        progress.trial_finished("ok", score=12.5)
    text = out.getvalue().splitlines()
    assert all(re.match(STAMP, t) for t in text)
    assert "started agw seed=0" in text[0]
    steps = [t for t in text if " step " in t]
    assert 2 <= len(steps) <= 3  # 80 s of steps at one line per 30 s, not 8 lines
    assert re.search(r"agw seed=0 epoch \d/2 step \d/4 loss 3\.25 lr 0\.01 32\.0 img/s ETA \d+:\d\d$", steps[-1])
    assert "1 ok, 0 failed" in text[-1] and "best Rank-1 12.5" in text[-1]


def test_console_that_is_not_a_terminal_selects_plain_lines():
    from rich.console import Console

    progress = SweepProgress(total=1, title="x", console=Console(file=io.StringIO(), force_terminal=False))
    assert progress.progress is None and progress.lines is not None
    assert SweepProgress(total=1, title="x", quiet=True, plain=True).lines is None


def test_task_progress_writes_a_final_line_with_the_count():
    out, clock = io.StringIO(), Clock()
    with TaskProgress("extracting", 5, unit="img", plain=True, clock=clock,
                      lines=PlainLines(interval=60.0, stream=out, clock=clock)) as progress:
        for _ in range(5):
            clock.now += 1.0
            progress.advance(1)
    text = out.getvalue().splitlines()
    assert len(text) == 2  # the first batch, then the end (the rest fell within the interval)
    assert re.search(r"extracting 5/5 img 1\.0 img/s ETA 0:00$", text[-1])


def test_evaluation_progress_in_a_log():
    out, clock = io.StringIO(), Clock()
    progress = SweepProgress(total=1, title="demo", plain=True,
                             lines=PlainLines(interval=30.0, stream=out, clock=clock))
    progress.trial_started("agw seed=0", epochs=1)
    clock.now = 40.0
    progress.iteration(1, 63, {"phase": "evaluating", "steps": 200})
    assert out.getvalue().splitlines()[-1].endswith("agw seed=0 evaluating 64/200 test images")
