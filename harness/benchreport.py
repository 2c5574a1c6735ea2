"""`vireid bench-report`: speed-up tables and target checks from a pytest-benchmark JSON file.

pytest-benchmark compares implementations within a group but leaves the ratios, and whether a
speed target holds, to the reader. This reads its `--benchmark-json` output, prints every group
with each benchmark's speed-up over the group's slowest, and checks the harness's targets
(`TARGETS`) on the median times. A target whose benchmarks are not in the file (for example a
CUDA target in a CPU run) is reported as not measured, never as met.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import InputError
from harness.results import atomic_write_text, to_markdown


@dataclass(frozen=True)
class Target:
    """`baseline` time / `candidate` time must reach `min_speedup` (medians) on `device`."""

    what: str
    group: str
    baseline: dict[str, str]
    """Selects one benchmark of the group: "id" matches pytest's parameter id, other keys its params."""
    candidate: dict[str, str]
    device: str
    min_speedup: float


def _losses(group: str, label: str, device: str, speedup: float) -> Target:
    return Target(f"{label} vs a per-class Python loop", group, {"implementation": "loop", "device": device},
                  {"implementation": "batched", "device": device}, device, speedup)


TARGETS: tuple[Target, ...] = (
    _losses("marginal_center_loss ICA", "marginal center loss, ICA over 395 identities", "cpu", 4.0),
    _losses("marginal_center_loss CCA", "marginal center loss, CCA over 6 cameras", "cpu", 4.0),
    _losses("marginal_center_loss ICA", "marginal center loss, ICA over 395 identities", "cuda", 30.0),
    _losses("marginal_center_loss CCA", "marginal center loss, CCA over 6 cameras", "cuda", 30.0),
    Target("MCLNet step, bf16 + channels_last + compile + fused SGD vs fp32 eager",
           "train step: acceleration (mclnet)", {"id": "fp32-eager"}, {"id": "all"}, "cuda", 3.0),
    Target("rank_metrics within 3x of the one torch.sort it needs (SYSU multi-shot trial)", "sysu-multishot-trial",
           {"implementation": "torch.sort floor"}, {"implementation": "rank_metrics"}, "cpu", 1 / 3),
    Target("rank_metrics within 3x of the one torch.sort it needs (SYSU multi-shot trial)", "sysu-multishot-trial",
           {"implementation": "torch.sort floor"}, {"implementation": "rank_metrics"}, "cuda", 1 / 3),
)


def load_benchmarks(path: str | Path) -> dict[str, Any]:
    """The parsed JSON of `pytest --benchmark-json=PATH`, checked for the fields used here."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (write one with pytest benchmarks --benchmark-only "
                           f"--benchmark-json={path})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, list):
        raise InputError(f"{path}: expected pytest-benchmark JSON with a 'benchmarks' list")
    if not benchmarks:
        raise InputError(f"{path}: holds no benchmarks (were they all skipped or deselected? run pytest with "
                           "--benchmark-only and without -k filters that match nothing)")
    for i, bench in enumerate(benchmarks):
        stats = bench.get("stats") if isinstance(bench, dict) else None
        if not isinstance(stats, dict) or not all(k in stats for k in ("min", "median", "mean", "rounds")):
            raise InputError(f"{path}: benchmarks[{i}] has no stats with min, median, mean and rounds "
                               "(was the file written with --benchmark-disable?)")
    return data


def _device(bench: dict[str, Any]) -> str:
    params = bench.get("params") or {}
    device = params.get("device") or (bench.get("extra_info") or {}).get("device") or "cpu"
    return str(device).split(":")[0]


def benchmark_frame(data: dict[str, Any]) -> pd.DataFrame:
    """One row per benchmark: group, name, device, times in ms, rounds, images/s, speed-up in its group."""
    rows = []
    for bench in data["benchmarks"]:
        stats = bench["stats"]
        rows.append({
            "group": bench.get("group") or "(no group)",
            "benchmark": bench.get("param") or bench.get("name"),
            "device": _device(bench),
            "min_ms": 1000 * stats["min"],
            "median_ms": 1000 * stats["median"],
            "mean_ms": 1000 * stats["mean"],
            "rounds": int(stats["rounds"]),
            "images_per_s": (bench.get("extra_info") or {}).get("images_per_s"),
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # within a group and device: how many times faster than the slowest (median times)
    slowest = frame.groupby(["group", "device"])["median_ms"].transform("max")
    frame["speedup"] = slowest / frame["median_ms"]
    return frame


def group_settings(data: dict[str, Any], group: str, device: str) -> dict[str, Any]:
    """extra_info entries shared by every benchmark of a group (backbone, size, batch, ...)."""
    infos = [bench.get("extra_info") or {} for bench in data["benchmarks"]
             if (bench.get("group") or "(no group)") == group and _device(bench) == device]
    if not infos:
        return {}
    shared = {k: v for k, v in infos[0].items() if k not in _PER_BENCHMARK_INFO and not isinstance(v, (dict, list))}
    return {k: v for k, v in shared.items() if all(info.get(k) == v for info in infos[1:])}


_PER_BENCHMARK_INFO = {"images_per_s", "device"}


def _select(data: dict[str, Any], group: str, selector: dict[str, str], device: str) -> dict[str, Any] | None:
    for bench in data["benchmarks"]:
        if bench.get("group") != group or _device(bench) != device:
            continue
        params = bench.get("params") or {}
        if all((bench.get("param") == v) if k == "id" else (params.get(k) == v) for k, v in selector.items()):
            return bench
    return None


def check_targets(data: dict[str, Any], targets: tuple[Target, ...] = TARGETS) -> pd.DataFrame:
    """One row per target: the median and best-case (min) ratios and whether the median ratio meets it."""
    rows = []
    for target in targets:
        base = _select(data, target.group, target.baseline, target.device)
        cand = _select(data, target.group, target.candidate, target.device)
        row: dict[str, Any] = {"target": target.what, "device": target.device,
                               "required": target.min_speedup, "median_ratio": None, "min_ratio": None}
        if base is None or cand is None:
            row["status"] = "not measured"
        else:
            row["median_ratio"] = base["stats"]["median"] / cand["stats"]["median"]
            row["min_ratio"] = base["stats"]["min"] / cand["stats"]["min"]
            row["status"] = "met" if row["median_ratio"] >= target.min_speedup else "MISSED"
        rows.append(row)
    return pd.DataFrame(rows)


def _ratio(value: float | None) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{value:.2f}x" if value >= 1 else f"1/{1 / value:.2f}x"


def format_report(data: dict[str, Any], *, source: str = "") -> str:
    """Markdown: where it ran, the targets, then every group."""
    machine = data.get("machine_info") or {}
    cpu = machine.get("cpu") or {}
    commit = data.get("commit_info") or {}
    lines = ["# Benchmark report", ""]
    if source:
        lines.append(f"- file: `{source}`")
    lines += [
        f"- date: {data.get('datetime', 'unknown')}",
        f"- commit: {commit.get('id', 'unknown')}{' (uncommitted changes)' if commit.get('dirty') else ''}",
        f"- machine: {cpu.get('brand_raw') or machine.get('processor') or 'unknown CPU'}, "
        f"{cpu.get('count', '?')} logical CPUs, Python {machine.get('python_version', '?')}",
        "- speed-ups are ratios of median times; a target is met when the median ratio reaches it",
        "",
        "## Targets",
        "",
    ]
    targets = check_targets(data)
    table = pd.DataFrame({
        "target": targets["target"], "device": targets["device"], "required": targets["required"].map(_ratio),
        "median ratio": targets["median_ratio"].map(_ratio), "best-case ratio": targets["min_ratio"].map(_ratio),
        "status": targets["status"],
    })
    lines.append(to_markdown(table))
    frame = benchmark_frame(data)
    for (group, device), rows in frame.groupby(["group", "device"], sort=False):
        lines += [f"## {group} ({device})", ""]
        settings = group_settings(data, group, device)
        if settings:
            lines += [", ".join(f"{k}: {v}" for k, v in settings.items()), ""]
        shown = pd.DataFrame({
            "benchmark": rows["benchmark"],
            "min ms": rows["min_ms"].map(lambda v: f"{v:.3f}"),
            "median ms": rows["median_ms"].map(lambda v: f"{v:.3f}"),
            "mean ms": rows["mean_ms"].map(lambda v: f"{v:.3f}"),
            "rounds": rows["rounds"],
            "x slowest": rows["speedup"].map(_ratio),
        })
        if rows["images_per_s"].notna().any():
            shown["images/s"] = rows["images_per_s"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
        lines.append(to_markdown(shown))
    return "\n".join(lines).rstrip("\n") + "\n"


def run_bench_report(path: str | Path, *, out: str | Path | None = None, check: bool = False) -> tuple[str, int]:
    """(report text, exit code): 1 with `check` when a measured target is missed, else 0."""
    data = load_benchmarks(path)
    report = format_report(data, source=str(path))
    if out is not None:
        atomic_write_text(Path(out), report)
    missed = (check_targets(data)["status"] == "MISSED").any()
    return report, 1 if check and missed else 0
