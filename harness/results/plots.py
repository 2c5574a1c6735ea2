"""Figures of one protocol's summary: CMC curves, ablation bars, accuracy vs throughput.

Each builder returns a matplotlib Figure (tests inspect it); `save_figure` writes it as PNG
and PDF through the atomic writer. A figure is never blank: a missing value is written into
the axes as text.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.atomic import atomic_path
from harness.figures import pyplot
from harness.results.metrics import metric
from harness.results.stats import pareto_front
from harness.results.tables import Summary, key_text, protocol_title


def _row_labels(summary: Summary) -> list[str]:
    return [" / ".join(key_text(row[k]) for k in summary.key_columns) for _, row in summary.rows.iterrows()]


def _title(kind: str, summary: Summary) -> str:
    datasets = ", ".join(summary.datasets) or "unknown dataset"
    return f"{kind}: {datasets}, {protocol_title(summary.protocol)} ({summary.protocol})"


def _missing(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, f"missing: {text}", transform=ax.transAxes, ha="center", va="center", fontsize=10,
            color="darkred")


def cmc_figure(summary: Summary) -> Any:
    """Mean CMC curve per configuration over seeds, band = +-1 sd over seeds, integer rank ticks."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = 0
    max_rank = 1
    for label, (_, row) in zip(_row_labels(summary), summary.rows.iterrows()):
        runs = summary.runs[summary.runs["configuration"] == row["configuration"]]
        if "cmc" not in runs or runs.empty:
            continue
        curves = np.array([json.loads(c) for c in runs["cmc"] if isinstance(c, str)], dtype=float) * 100
        if curves.ndim != 2 or curves.shape[1] == 0:
            continue
        mean = curves.mean(0)
        ranks = np.arange(1, len(mean) + 1)
        max_rank = max(max_rank, len(mean))
        n = len(curves)
        line, = ax.plot(ranks, mean, marker="o", markersize=3,
                        label=f"{label} (n={n}" + (", band ±1 sd)" if n > 1 else ")"))
        if n > 1:
            std = curves.std(0, ddof=1)
            ax.fill_between(ranks, mean - std, mean + std, alpha=0.15, color=line.get_color())
        drawn += 1
    if not drawn:
        _missing(ax, "no finished run recorded a CMC curve for this protocol")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, max_rank + 0.5)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(_title("CMC", summary), fontsize=10)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return fig


def ablation_figure(summary: Summary, metrics: Sequence[str] = ("rank1", "mAP", "mINP")) -> Any:
    """Grouped bars per configuration, error bars = +-1 sd over seeds, legend outside the bars."""
    plt = pyplot()
    rows = summary.rows
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4))
    width = 0.8 / len(metrics)
    x = np.arange(len(rows))
    for i, m in enumerate(metrics):
        values = rows[m].to_numpy(float)
        errors = np.where(rows["n"].to_numpy() > 1, rows[f"{m}_std"].to_numpy(float), 0.0)
        pos = x + (i - (len(metrics) - 1) / 2) * width
        ok = np.isfinite(values)
        ax.bar(pos[ok], values[ok], width, yerr=np.nan_to_num(errors[ok]), capsize=3, label=metric(m).label)
        for p in pos[~ok]:
            ax.text(p, 0, "missing", rotation=90, ha="center", va="bottom", fontsize=7, color="darkred")
    if not np.isfinite(rows[list(metrics)].to_numpy(float)).any():
        _missing(ax, "no finished run on this protocol")
    ax.set_xticks(x, _row_labels(summary), rotation=20, ha="right")
    ns = sorted({int(n) for n in rows["n"]})
    ax.set_ylabel("%")
    ax.set_title(_title("Ablation", summary) + f"\nerror bars: ±1 sd over seeds (n={'/'.join(map(str, ns))})",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _devices(summary: Summary) -> dict[str, str]:
    """configuration -> the device its throughput was measured on ("mixed: ..." if several)."""
    runs = summary.runs
    if "device" not in runs:
        return {}
    out = {}
    for configuration, devices in runs.groupby("configuration")["device"]:
        names = sorted(set(devices.astype(str)))
        out[configuration] = names[0] if len(names) == 1 else "mixed: " + " + ".join(names)
    return out


def _interval(row: Any, m: str) -> tuple[float, float]:
    """(low, high) 95 % CI of a row's mean of `m`; NaN where it has fewer than two runs."""
    low, high = row.get(f"{m}_ci_low", np.nan), row.get(f"{m}_ci_high", np.nan)
    return (float(low), float(high)) if np.isfinite(low) and np.isfinite(high) else (np.nan, np.nan)


def resolved_front(points: np.ndarray, intervals: np.ndarray) -> np.ndarray | None:
    """Indices of the Pareto front of `points` (N, 2; both maximised) sorted by the first column, or
    None when it is not resolved: neighbours on the front must have disjoint 95 % intervals
    (`intervals` (N, 2, 2): [point, axis, low/high]) on both axes, else the trade-off it draws may be noise."""
    front = pareto_front(points)
    front = front[np.argsort(points[front, 0])]
    for a, b in itertools.pairwise(front):
        for axis in (0, 1):
            (lo_a, hi_a), (lo_b, hi_b) = intervals[a, axis], intervals[b, axis]
            if not np.isfinite([lo_a, hi_a, lo_b, hi_b]).all() or (lo_a <= hi_b and lo_b <= hi_a):
                return None
    return front


def throughput_figure(summary: Summary, accuracy: str = "mAP", speed: str = "train_img_per_s") -> Any:
    """Accuracy vs training throughput: one marker per configuration named in a legend (labels
    never overlap), bars the 95 % CI of each mean over seeds, the device in the axis label (marked
    when mixed). The Pareto front (dashed) is drawn only where its points' intervals are disjoint
    (`resolved_front`): throughput measured inside trials on a shared machine is often too noisy."""
    plt = pyplot()
    rows = summary.rows
    fig, ax = plt.subplots(figsize=(6.5, 4))
    devices = _devices(summary)
    distinct = sorted(set(devices.values()))
    pts = rows[[speed, accuracy]].to_numpy(float) if speed in rows else np.full((len(rows), 2), np.nan)
    intervals = np.array([[_interval(row, speed), _interval(row, accuracy)] for _, row in rows.iterrows()],
                         dtype=float).reshape(len(rows), 2, 2)
    valid = np.isfinite(pts).all(1)
    markers = "osD^vP*Xh<>p"
    for i, (label, (_, row)) in enumerate(zip(_row_labels(summary), rows.iterrows())):
        if not valid[i]:
            continue
        device = devices.get(row["configuration"], "")
        errors = [np.nan_to_num(np.abs(intervals[i, axis] - pts[i, axis])).reshape(2, 1) for axis in (0, 1)]
        ax.errorbar(pts[i, 0], pts[i, 1], xerr=errors[0], yerr=errors[1], fmt=markers[i % len(markers)], capsize=3,
                    label=label + (f" [{device}]" if len(distinct) > 1 else ""))
    if valid.sum() > 1:
        front = resolved_front(pts[valid], intervals[valid])
        if front is not None and len(front) > 1:
            ax.plot(pts[valid][front, 0], pts[valid][front, 1], "--", color="gray", label="Pareto front")
        elif front is None:
            ax.text(0.01, 0.01, "no Pareto front: the 95 % intervals of its points overlap", transform=ax.transAxes,
                    fontsize=7, color="dimgray", va="bottom")
    if not valid.any():
        _missing(ax, f"no run recorded both {metric(speed).label} and {metric(accuracy).label}")
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    where = distinct[0] if len(distinct) == 1 else ("MIXED DEVICES: " + "; ".join(distinct) if distinct else
                                                    "device not recorded")
    ax.set_xlabel(f"{metric(speed).label} on {where} (measured in the trials)", fontsize=8)
    ax.set_ylabel(f"{metric(accuracy).label} (%)")
    ax.set_title(_title("Accuracy vs throughput", summary) + "\nbars: 95 % CI of the mean over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def save_figure(fig: Any, png: Path) -> list[Path]:
    """Write `fig` as PNG and as PDF (vector) beside it, atomically; closes the figure."""
    plt = pyplot()
    written = []
    try:
        for path in (png, png.with_suffix(".pdf")):
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix[1:])
            written.append(path)
    finally:
        plt.close(fig)
    return written
