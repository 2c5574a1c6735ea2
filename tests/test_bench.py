"""`vireid bench`: phase timer arithmetic, FLOP counting, the report table and the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from harness.bench import (
    batch_layout,
    bench_config,
    device_peak_tflops,
    parse_size,
    run_step_benchmark,
    training_step_flops,
)
from harness.cli import main
from harness.config import TrialConfig
from harness.errors import HarnessError
from harness.training import PhaseTimer

MCLNET_PHASES = ["data", "forward", "ce", "wrt", "mcm_update", "mcm", "ica", "cca", "backward", "optimizer", "other"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_phase_timer_charges_nested_sections_exclusively():
    clock = FakeClock()
    timer = PhaseTimer(enabled=True, clock=clock)
    with timer("outer"):
        clock.now += 1.0
        with timer("inner"):
            clock.now += 2.0
        clock.now += 0.5
        with timer("inner"):
            clock.now += 0.25
    with timer("outer"):
        clock.now += 4.0
    assert timer.seconds == {"inner": 2.25, "outer": 5.5}
    assert timer.calls == {"inner": 2, "outer": 2}
    assert sum(timer.seconds.values()) == clock.now  # every second inside a section is charged once


def test_disabled_phase_timer_records_nothing():
    clock = FakeClock()
    timer = PhaseTimer(enabled=False, clock=clock)
    first, second = timer("a"), timer("b")
    assert first is second  # one shared no-op context
    with first:
        clock.now += 1.0
    assert timer.seconds == {} and timer.calls == {}


class OneConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, kernel_size=3, padding=1, bias=False)

    def training_losses(self, images, modality, pids, cams):
        return {"sum": self.conv(images).sum()}


def test_training_step_flops_of_one_conv_match_the_hand_count():
    batch, height, width = 2, 6, 4
    images = torch.randn(batch, 3, height, width)
    flops = training_step_flops(OneConv(), images, torch.zeros(batch, dtype=torch.long),
                                torch.zeros(batch, dtype=torch.long), torch.zeros(batch, dtype=torch.long))
    multiply_adds = batch * 5 * height * width * 3 * 3 * 3
    # forward 2 FLOPs per multiply-add; backward: the weight gradient only (the images need no gradient)
    assert flops == 2 * multiply_adds + 2 * multiply_adds


def independent_step_flops(method: str, height: int, width: int, batch: int) -> tuple[int, int]:
    """(FLOPs of training_losses + backward, FLOPs of the bare network forward + backward) for one batch."""
    from methods import create_method

    cfg = TrialConfig(method=method).with_overrides({"model.backbone": "test_resnet"})
    model = create_method(cfg, 395, 6)
    images = torch.randn(batch, 3, height, width)
    modality = torch.tensor([0] * (batch // 2) + [1] * (batch // 2))
    pids = torch.arange(batch) % 2
    cams = torch.where(modality == 0, 1, 5)
    with FlopCounterMode(display=False) as step:
        sum(model.training_losses(images, modality, pids, cams).values()).backward()
    with FlopCounterMode(display=False) as net:
        out = model.net(images, modality)
        (out["pool"].sum() + out["bn"].sum() + out["logits"].sum()).backward()
    return step.get_total_flops(), net.get_total_flops()


@pytest.fixture(scope="module")
def cpu_report() -> str:
    return run_step_benchmark(method="mclnet", backbone="test_resnet", size="64x32", batch=8, device="cpu",
                              steps=2, warmup=1)


def phase_rows(report: str) -> dict[str, tuple[float, float]]:
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["phase", "mean", "ms"])
    rows = {}
    for line in lines[start + 1:]:
        if line.startswith("step (phased)"):
            break
        name, ms, percent = line.split()
        rows[name] = (float(ms), float(percent))
    return rows


def test_report_phases_cover_the_whole_step(cpu_report):
    rows = phase_rows(cpu_report)
    assert list(rows) == MCLNET_PHASES
    assert sum(p for _, p in rows.values()) == pytest.approx(100.0, abs=0.1 * len(rows))
    phased = float(re.search(r"^step \(phased\)\s+([\d.]+)", cpu_report, re.M).group(1))
    assert sum(ms for ms, _ in rows.values()) == pytest.approx(phased, abs=0.01 * len(rows))
    assert rows["forward"][0] > 0 and rows["backward"][0] > 0


def test_report_flops_match_an_independent_count(cpu_report):
    reported = int(re.search(r"^FLOPs/image\s+([\d,]+)", cpu_report, re.M).group(1).replace(",", ""))
    step, net = independent_step_flops("mclnet", 64, 32, 8)
    assert reported == step // 8
    # the losses (distances to 395 identity centres, WRT, MCM) add a little to the network's count
    assert net // 8 <= reported <= 1.25 * net / 8


def test_report_throughput_is_consistent(cpu_report):
    step_ms, per_s = re.search(r"^step \(plain\)\s+([\d.]+) ms\s+([\d.]+) images/s", cpu_report, re.M).groups()
    # both printed with 2 decimals: allow their rounding
    assert float(per_s) == pytest.approx(8000 / float(step_ms), rel=1e-3, abs=0.006)
    assert "peak fraction" not in cpu_report  # no peak is claimed for a CPU


def test_cli_prints_the_table(capsys):
    code = main(["bench", "--method", "agw", "--backbone", "test_resnet", "--size", "32x16", "--batch", "8",
                 "--steps", "1", "--warmup", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("vireid bench: agw on test_resnet, 32x16, batch 8")
    assert list(phase_rows(out)) == ["data", "forward", "ce", "wrt", "backward", "optimizer", "other"]


def test_cli_times_each_deen_term(capsys):
    code = main(["bench", "--method", "deen", "--backbone", "test_resnet", "--size", "64x32", "--batch", "8",
                 "--steps", "1", "--warmup", "0", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("vireid bench: deen on test_resnet, 64x32, batch 8")
    assert list(phase_rows(out)) == ["data", "forward", "ce", "triplet", "cpm", "ort", "backward", "optimizer",
                                     "other"]


def test_cli_json_output(capsys, monkeypatch):
    import harness.bench as bench
    import harness.bench.step as bench_step

    seen = {}

    def fake_measure(cfg, height, width, *, steps, warmup, compile_backend="inductor"):
        seen.update(cfg=cfg, height=height, width=width, steps=steps, warmup=warmup)
        return bench.StepBenchmark(
            method=cfg.method, backbone=cfg.model.backbone, height=height, width=width, batch=8,
            identities_per_batch=2, images_per_modality=2, device="cpu", device_name="cpu", torch_version="t",
            timm_version="t", amp=cfg.train.amp, channels_last=cfg.train.channels_last, compile=cfg.train.compile,
            fused_optimizer=False, steps=steps, warmup=warmup, phase_ms={"forward": 3.0, "backward": 1.0},
            phased_step_ms=4.0, step_ms=4.0, images_per_s=2000.0, flops_per_image=10)

    monkeypatch.setattr(bench_step, "measure_step", fake_measure)
    code = main(["bench", "--method", "agw", "--backbone", "test_resnet", "--size", "32x16", "--batch", "8",
                 "--steps", "3", "--warmup", "2", "--device", "cpu", "--json", "--channels-last",
                 "--set", "train.amp=bf16"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (seen["height"], seen["width"], seen["steps"], seen["warmup"]) == (32, 16, 3, 2)
    assert seen["cfg"].train.channels_last and seen["cfg"].train.amp == "bf16"
    assert data["phase_percent"] == {"forward": 75.0, "backward": 25.0}
    assert data["method"] == "agw" and data["peak_tflops"] is None


@pytest.mark.parametrize("size", ["288", "288x", "axb", "0x144", "1x2x3"])
def test_cli_rejects_a_bad_size(size, capsys):
    assert main(["bench", "--size", size, "--device", "cpu"]) == 2
    assert "--size" in capsys.readouterr().err


def test_parse_size():
    assert parse_size("288x144") == (288, 144)
    assert parse_size("64X32") == (64, 32)


@pytest.mark.parametrize("batch, k, want", [(8, 4, (2, 2)), (64, 4, (8, 4)), (12, 4, (2, 3)), (6, 4, (3, 1)),
                                            (4, 1, (2, 1))])
def test_batch_layout(batch, k, want):
    p, got_k = batch_layout(batch, k)
    assert (p, got_k) == want and 2 * p * got_k == batch


@pytest.mark.parametrize("batch", [0, 2, 7])
def test_batch_layout_rejects_unusable_batches(batch):
    with pytest.raises(HarnessError, match="--batch"):
        batch_layout(batch, 4)


def test_bench_config_overrides_win():
    cfg = bench_config("agw", "resnet18", 16, device="cpu", amp="none", overrides={"train.amp": "bf16",
                                                                                   "train.images_per_modality": 2})
    assert cfg.train.amp == "bf16" and cfg.model.backbone == "resnet18"
    assert (cfg.train.num_identities, cfg.train.images_per_modality) == (4, 2)
    with pytest.raises(HarnessError, match="train.ampp"):
        bench_config("agw", "resnet18", 16, overrides={"train.ampp": "bf16"})


@pytest.mark.parametrize("name, precision, want", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0), ("NVIDIA H100 80GB HBM3", "tf32", 494.0),
    ("NVIDIA H100 PCIe", "bf16", 756.0), ("NVIDIA H200", "fp32", 67.0), ("NVIDIA A100-SXM4-80GB", "bf16", 312.0),
    ("NVIDIA L4", "bf16", 121.0), ("NVIDIA L40S", "bf16", 362.0), ("Some Future GPU", "bf16", None),
])
def test_device_peak_lookup(name, precision, want):
    assert device_peak_tflops(name, precision) == want


# --------------------------------------------------------------------------------------------
# epoch timing
# --------------------------------------------------------------------------------------------


def test_sized_train_set_spreads_identities_over_both_modalities():
    from harness.bench import sized_train_set

    split, images = sized_train_set(5, 23, 11, 8, 4, seed=3)
    assert images.shape == (34, 3, 8, 4) and images.dtype == torch.uint8
    visible = split.modalities == 0
    assert visible.sum() == 23 and (~visible).sum() == 11
    for modality_rows in (visible, ~visible):
        counts = np.bincount(split.pids[modality_rows], minlength=5)
        assert counts.max() - counts.min() <= 1 and counts.min() >= 2  # even spread, nobody missing
    assert set(split.cams[visible]) <= {0, 1, 3, 4} and set(split.cams[~visible]) <= {2, 5}


@pytest.mark.parametrize("counts", [(1, 10, 10), (4, 3, 10), (4, 10, 2)])
def test_sized_train_set_rejects_unusable_sizes(counts):
    from harness.bench import sized_train_set

    with pytest.raises(HarnessError, match="at least 2 identities"):
        sized_train_set(*counts, 8, 4)


def test_epoch_benchmark_runs_one_epoch_and_extrapolates(monkeypatch):
    import harness.bench as bench
    from harness.training import Trainer

    calls = []
    real_step = Trainer.train_step

    def counting_step(self, indices):
        calls.append(len(indices))
        return real_step(self, indices)

    monkeypatch.setattr(Trainer, "train_step", counting_step)
    cfg = bench.bench_config("mclnet", "test_resnet", 8, device="cpu")
    r = bench.measure_epoch(cfg, 32, 16, num_identities=4, num_visible=43, num_infrared=21, warmup=2,
                            estimate_epochs=7, eval_images=30)
    assert r.iterations == 11  # int(43 visible / (2 ids x 2 images)) + 1, as the AGW sampler counts
    assert calls == [8] * (2 + r.iterations)  # the warm-up steps, then exactly one epoch
    assert r.train_images_per_s == pytest.approx(r.iterations * 8 / r.epoch_s)
    assert r.estimate_train_h == pytest.approx(7 * r.epoch_s / 3600)
    assert r.estimate_total_h == pytest.approx(r.estimate_train_h + (r.warmup_s + r.eval_s) / 3600)
    assert r.eval_s > 0 and r.eval_images == 30
    assert (r.num_identities, r.num_visible, r.num_infrared) == (4, 43, 21)


def test_cli_epoch_json(capsys):
    code = main(["bench", "--epoch", "--backbone", "test_resnet", "--size", "32x16", "--batch", "8", "--device",
                 "cpu", "--warmup", "0", "--train-images", "24,17", "--train-identities", "3",
                 "--eval-images", "0", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["iterations"] == 7 and data["batch"] == 8 and data["eval_s"] == 0.0
    # by default the estimate trains as long as the authors' loop, epochs 0..200
    assert data["estimate_epochs"] == 201
    assert data["estimate_train_h"] == pytest.approx(201 * data["epoch_s"] / 3600)


def test_cli_epoch_rejects_bad_image_counts(capsys):
    code = main(["bench", "--epoch", "--train-images", "22258", "--device", "cpu"])
    assert code == 2
    assert "--train-images '22258'" in capsys.readouterr().err


def test_epoch_benchmark_names_the_fix_when_training_diverges(monkeypatch):
    import harness.bench as bench
    from harness.training import Trainer, TrialFailure

    real_step = Trainer.train_step
    calls = []

    def diverging_step(self, indices):
        calls.append(1)
        if len(calls) == 3:  # the second step of the timed epoch (one warm-up step first)
            raise TrialFailure("non-finite loss term(s) mcm")
        return real_step(self, indices)

    monkeypatch.setattr(Trainer, "train_step", diverging_step)
    cfg = bench.bench_config("mclnet", "test_resnet", 8, device="cpu")
    with pytest.raises(HarnessError, match=r"diverged after 1 steps.*mcm\.lr=0\.1.*--set mcm\.lr=0\.01"):
        bench.measure_epoch(cfg, 32, 16, num_identities=4, num_visible=40, num_infrared=24, warmup=1, eval_images=0)
