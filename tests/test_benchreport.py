"""`vireid bench-report`: ratios and target checks on a hand-written pytest-benchmark file."""

from __future__ import annotations

import json

import pytest

from harness.benchreport import Target, benchmark_frame, check_targets, load_benchmarks, run_bench_report
from harness.cli import main
from harness.errors import HarnessError


def bench(group: str, param: str, params: dict, median: float, *, low: float | None = None, extra=None) -> dict:
    low = median if low is None else low
    return {"group": group, "name": f"test_x[{param}]", "param": param, "params": params, "extra_info": extra or {},
            "stats": {"min": low, "median": median, "mean": median, "rounds": 5}}


def loss(group: str, implementation: str, device: str, median: float, low: float | None = None) -> dict:
    return bench(group, f"{implementation}-{device}", {"implementation": implementation, "device": device},
                 median, low=low)


@pytest.fixture()
def data() -> dict:
    return {
        "datetime": "2026-11-23T00:00:00",
        "machine_info": {"python_version": "3.11.0", "cpu": {"brand_raw": "Test CPU", "count": 2}},
        "commit_info": {"id": "abc123", "dirty": True},
        "benchmarks": [
            loss("marginal_center_loss ICA", "batched", "cpu", 0.002, low=0.0015),
            loss("marginal_center_loss ICA", "loop", "cpu", 0.010, low=0.009),  # 5x: met
            loss("marginal_center_loss CCA", "batched", "cpu", 0.001),
            loss("marginal_center_loss CCA", "loop", "cpu", 0.003),  # 3x: missed
            bench("train step: acceleration (mclnet)", "fp32-eager", {"train": {}}, 0.5,
                  extra={"device": "cpu", "images_per_s": 64.0, "backbone": "resnet18", "size": "128x64"}),
            bench("train step: acceleration (mclnet)", "all", {"train": {"amp": "bf16"}}, 0.25,
                  extra={"device": "cpu", "images_per_s": 128.0, "backbone": "resnet18", "size": "128x64",
                         "amp": "bf16"}),
        ],
    }


def test_frame_speedups_are_relative_to_the_slowest_of_the_group(data):
    frame = benchmark_frame(data).set_index(["group", "benchmark"])
    assert frame.loc[("marginal_center_loss ICA", "batched-cpu"), "speedup"] == pytest.approx(5.0)
    assert frame.loc[("marginal_center_loss ICA", "loop-cpu"), "speedup"] == pytest.approx(1.0)
    assert frame.loc[("train step: acceleration (mclnet)", "all"), "speedup"] == pytest.approx(2.0)
    assert frame.loc[("train step: acceleration (mclnet)", "all"), "device"] == "cpu"  # from extra_info
    assert frame.loc[("marginal_center_loss CCA", "loop-cpu"), "median_ms"] == pytest.approx(3.0)


def test_targets_met_missed_and_not_measured(data):
    rows = check_targets(data).set_index(["target", "device"])
    ica = rows.loc[("marginal center loss, ICA over 395 identities vs a per-class Python loop", "cpu")]
    assert ica["status"] == "met"
    assert ica["median_ratio"] == pytest.approx(5.0) and ica["min_ratio"] == pytest.approx(6.0)
    cca = rows.loc[("marginal center loss, CCA over 6 cameras vs a per-class Python loop", "cpu")]
    assert cca["status"] == "MISSED" and cca["median_ratio"] == pytest.approx(3.0)
    # CUDA targets and the CUDA step target: their benchmarks are not in a CPU file
    assert (rows.xs("cuda", level="device")["status"] == "not measured").all()
    assert rows.xs("cuda", level="device")["median_ratio"].isna().all()


def test_a_target_selects_by_parameter_id(data):
    target = Target("step", "train step: acceleration (mclnet)", {"id": "fp32-eager"}, {"id": "all"}, "cpu", 1.5)
    row = check_targets(data, (target,)).iloc[0]
    assert row["status"] == "met" and row["median_ratio"] == pytest.approx(2.0)


def test_report_and_check_exit_code(data, tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "report" / "bench.md"
    report, code = run_bench_report(path, out=out, check=True)
    assert code == 1  # the CCA target is missed
    assert out.read_text() == report
    assert "Test CPU, 2 logical CPUs" in report and "abc123 (uncommitted changes)" in report
    cca_row = ("| marginal center loss, CCA over 6 cameras vs a per-class Python loop | cpu | 4.00x | 3.00x | 3.00x "
               "| MISSED |")
    assert cca_row in report
    assert "## train step: acceleration (mclnet) (cpu)\n\nbackbone: resnet18, size: 128x64\n" in report  # shared only
    assert "128.0" in report
    _, code = run_bench_report(path, check=False)
    assert code == 0


def test_cli_bench_report(data, tmp_path, capsys):
    data["benchmarks"] = [b for b in data["benchmarks"] if "CCA" not in b["group"]]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    assert main(["bench-report", str(path), "--check"]) == 0
    assert capsys.readouterr().out.startswith("# Benchmark report")


@pytest.mark.parametrize("content,fragment", [
    (None, "no such file"),
    ("{not json", "not JSON"),
    ('{"machine_info": {}}', "'benchmarks' list"),
    ('{"benchmarks": []}', "holds no benchmarks"),
    ('{"benchmarks": [{"group": "g", "stats": {"min": 1}}]}', "benchmarks[0] has no stats"),
])
def test_bad_files_name_the_problem(tmp_path, content, fragment):
    path = tmp_path / "bench.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(HarnessError, match=fragment.replace("[", r"\[").replace("]", r"\]")) as err:
        load_benchmarks(path)
    assert str(path) in str(err.value)


def test_cli_bad_file_exits_2(tmp_path, capsys):
    assert main(["bench-report", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
