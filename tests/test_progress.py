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
    assert "; ETA " in text[-1]  # one of the two trials remains: the sweep's ETA


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


def _rich_sweep(clock, total=36):
    from rich.console import Console

    console = Console(width=80, height=30, file=io.StringIO(), force_terminal=True)
    return SweepProgress(total=total, title="ablation-synthetic", console=console, clock=clock)


def _rendered(progress) -> list[str]:
    from rich.console import Console

    out = io.StringIO()
    Console(width=80, file=out, color_system=None).print(progress.progress.make_tasks_table(progress.progress.tasks))
    return out.getvalue().splitlines()


def test_the_live_display_keeps_counts_bars_and_etas_in_80_columns():
    clock = Clock()
    progress = _rich_sweep(clock)
    for _ in range(12):
        progress.trial_skipped("ok")
    progress.trial_started("agw+mcm+center model.backbone=test_resnet data.trial=3 seed=4", epochs=30)
    progress.iteration(2, 5, {"steps": 16, "loss": 3.25, "lr": 0.01, "images": 400, "seconds": 4.0})
    clock.now = 10.0
    progress.iteration(2, 6, {"steps": 16, "loss": 3.2, "lr": 0.01, "images": 440, "seconds": 5.0})
    progress.trial_finished("ok", score=38.04)
    progress.trial_started("mclnet-no-mcm model.backbone=test_resnet data.trial=3 seed=5", epochs=30)
    clock.now = 20.0
    progress.iteration(0, 0, {"steps": 16, "loss": 3.3, "lr": 0.01, "images": 40, "seconds": 1.0})
    clock.now = 21.0
    progress.iteration(0, 1, {"steps": 16, "loss": 3.3, "lr": 0.01, "images": 80, "seconds": 2.0})
    progress.epoch(5, {"total": 3.3})
    lines = _rendered(progress)
    assert max(map(len, lines)) <= 80
    text = " ".join(" ".join(lines).split())
    assert "13/36" in text and "6/30" in text and "2/16" in text  # every count kept
    assert text.count("ETA") == 2 and "…" not in text  # the sweep's and the trial's ETA; nothing cut
    assert "best Rank-1 38.0" in text and "12 done by earlier runs" in text and "mclnet-no-mcm" in text
    assert sum(any(c in line for c in "━╸╺") for line in lines) >= 3  # a bar on every row


def test_after_a_resume_the_eta_comes_from_trials_run_in_this_process():
    """30 of 36 trials were done by an earlier run: they are progress, not speed. Before a trial
    finishes here the ETA comes from the running trial's step time; after, from trials run here."""
    clock = Clock()
    progress = _rich_sweep(clock)
    for _ in range(30):
        progress.trial_skipped("ok")
    task = progress.progress.tasks[0]
    assert task.completed == 30 and task.fields["eta"] == "ETA ?"
    progress.trial_started("agw seed=0", epochs=2)
    clock.now = 100.0  # building data and caching images: not steps
    progress.iteration(0, 0, {"steps": 4})
    for step in (1, 2):
        clock.now += 10.0
        progress.iteration(0, step, {"steps": 4})
    # 10 s a step: 5 steps left in this trial, 5 more trials of 8 steps
    assert task.fields["eta"] == "ETA 7:30" and progress.progress.tasks[1].fields["eta"] == "ETA 0:50"
    clock.now = 200.0
    progress.trial_finished("ok")
    assert task.fields["eta"] == "ETA 16:40"  # 200 s for the one trial run here, 5 left


def test_a_log_says_what_a_trial_does_before_its_first_step(tmp_path):
    """Building synthetic data is announced (by the data code's log lines), and the first steps
    after it give a step-time ETA, not the setup time over one step."""
    from harness.data.registry import get_dataset
    from harness.data.synthetic import SynthSpec, ensure_synthetic

    out, clock = io.StringIO(), Clock()
    progress = SweepProgress(total=1, title="demo", plain=True,
                             lines=PlainLines(interval=0.0, stream=out, clock=clock), clock=clock)
    with progress:
        progress.trial_started("agw seed=0", epochs=2)
        ensure_synthetic(get_dataset("sysu"), SynthSpec(num_identities=8, images_per_camera=1, height=32, width=16),
                         tmp_path / "synthetic")
        clock.now = 120.0
        for step in range(3):
            progress.iteration(0, step, {"steps": 4})
            clock.now += 10.0
    text = out.getvalue().splitlines()
    assert re.search(r"\[0/1\] agw seed=0: building synthetic data \(sysu layout, 8 identities", text[1])
    assert "agw seed=0: built the synthetic data in" in text[2]
    steps = [t for t in text if " step " in t]
    assert not steps[0].endswith("ETA ?") and "ETA" not in steps[0]  # one step: no speed yet
    assert steps[-1].endswith("ETA 0:50")  # 10 s a step, 5 steps left (the 120 s of setup are not steps)
    import logging

    assert not logging.getLogger("harness").handlers  # the display's handler is gone with it
