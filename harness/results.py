"""Records -> tables and plots.

Every backend writes trial records into one SQLite store per sweep (`records.sqlite`): one
transaction per trial, so a killed sweep never leaves a half-written trial, and several
worker processes can write at once. Tables are rebuilt from the store at any time.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from harness.errors import HarnessError

STORE_NAME = "records.sqlite"
METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
METRIC_LABELS = {"rank1": "Rank-1", "rank5": "Rank-5", "rank10": "Rank-10", "rank20": "Rank-20",
                 "mAP": "mAP", "mINP": "mINP", "train_img_per_s": "train img/s", "infer_img_per_s": "infer img/s"}
TABLE_METRICS = ("rank1", "rank10", "rank20", "mAP", "mINP")


class ResultStore:
    """Trial records of one sweep, in SQLite (stdlib: works wherever the harness runs)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / STORE_NAME

    def _connect(self) -> sqlite3.Connection:
        self.folder.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=60)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("""CREATE TABLE IF NOT EXISTS records (
            id INTEGER PRIMARY KEY AUTOINCREMENT, trial_key TEXT NOT NULL, status TEXT NOT NULL,
            protocol TEXT, created REAL NOT NULL, record TEXT NOT NULL)""")
        con.execute("CREATE INDEX IF NOT EXISTS records_key ON records(trial_key)")
        return con

    def put_trial(self, trial_key: str, records: Sequence[dict[str, Any]]) -> None:
        """Replace every record of `trial_key` by `records`, atomically."""
        with closing(self._connect()) as con, con:
            con.execute("DELETE FROM records WHERE trial_key = ?", (trial_key,))
            now = time.time()
            con.executemany(
                "INSERT INTO records (trial_key, status, protocol, created, record) VALUES (?, ?, ?, ?, ?)",
                [(trial_key, r["status"], r.get("protocol"), now, json.dumps(r, default=_json_default))
                 for r in records])

    def statuses(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        with closing(self._connect()) as con:
            return dict(con.execute("SELECT trial_key, status FROM records GROUP BY trial_key"))

    def dataframe(self) -> pd.DataFrame:
        if not self.path.exists():
            return pd.DataFrame()
        with closing(self._connect()) as con:
            rows = con.execute("SELECT id, record FROM records ORDER BY id").fetchall()
        return pd.DataFrame([{"record_id": i, **json.loads(r)} for i, r in rows])


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- aggregation


def aggregate(df: pd.DataFrame, *, protocol: str | None = None, group_by: Sequence[str] = ("method",),
              metrics: Sequence[str] = METRICS + ("train_img_per_s", "infer_img_per_s")) -> pd.DataFrame:
    """Mean and sample std over seeds (and any other unlisted axis) of each metric per group.

    Rows keep the order in which their groups first appear in the store; `n` counts the runs
    (seeds, RegDB splits, ...) behind each row. Failed trials are counted in `failed` and
    excluded from the statistics.
    """
    if df.empty:
        raise HarnessError("no records to tabulate (the sweep has not finished any trial yet)")
    group_by = [g for g in group_by if g in df.columns]
    ok = df[df["status"] == "ok"]
    if protocol is None and not ok.empty:
        protocol = ok["protocol"].iloc[0]
    if protocol is not None and not ok.empty:
        known = list(dict.fromkeys(ok["protocol"]))
        if protocol not in known:
            raise HarnessError(f"protocol {protocol!r} has no records; recorded protocols: {', '.join(known)}")
        ok = ok[ok["protocol"] == protocol]
    order = list(dict.fromkeys(map(tuple, df[group_by].astype(str).values.tolist())))
    rows = []
    for group in order:
        sel = np.all(ok[group_by].astype(str).values == np.array(group), axis=1) if not ok.empty else []
        g = ok[sel] if len(ok) else ok
        in_group = np.all(df[group_by].astype(str).values == np.array(group), axis=1)
        row: dict[str, Any] = dict(zip(group_by, group))
        row["n"] = int(len(g))
        row["failed"] = int(df[in_group & (df["status"] == "failed")]["trial_key"].nunique())
        row["pruned"] = int(df[in_group & (df["status"] == "pruned")]["trial_key"].nunique())
        for m in metrics:
            vals = g[m].astype(float).to_numpy() if m in g else np.array([])
            row[m] = float(vals.mean()) if len(vals) else math.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else (0.0 if len(vals) else math.nan)
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["protocol"] = protocol
    return out


def add_deltas(agg: pd.DataFrame, baseline: str, *, key: str = "method",
               metrics: Sequence[str] = TABLE_METRICS) -> pd.DataFrame:
    if baseline not in set(agg[key]):
        raise HarnessError(f"baseline {baseline!r} is not a row of the table; rows: {', '.join(map(str, agg[key]))}")
    base = agg[agg[key] == baseline].iloc[0]
    out = agg.copy()
    for m in metrics:
        out[f"delta_{m}"] = out[m] - base[m]
    out.attrs.update(agg.attrs, baseline=baseline)
    return out


# --------------------------------------------------------------------------- rendering


def _cell(mean: float, std: float, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table_frame(agg: pd.DataFrame, *, key_columns: Sequence[str] = ("method",),
                metrics: Sequence[str] = TABLE_METRICS, mark_best: str | None = None,
                published: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """Human-readable table: `mean ± std` cells, best mean per metric marked, optional deltas.

    `published` maps a row name (e.g. a method) to the numbers a paper reports for it
    (percent), shown in extra columns beside the measured ones.
    """
    best = {m: agg[m].max() for m in metrics if m in agg and agg[m].notna().any()}
    cols: dict[str, list[str]] = {c: agg[c].astype(str).tolist() for c in key_columns if c in agg}
    cols["runs"] = [str(n) + "".join(f" ({k} {what})" for k, what in ((f, "failed"), (p, "pruned")) if k)
                    for n, f, p in zip(agg["n"], agg["failed"], agg.get("pruned", [0] * len(agg)))]
    for m in metrics:
        cells = []
        for mean, std, n in zip(agg[m], agg[f"{m}_std"], agg["n"]):
            text = _cell(mean, std if n > 1 else math.nan)
            if mark_best and m in best and not math.isnan(mean) and mean == best[m]:
                text = mark_best.format(text)
            cells.append(text)
        cols[METRIC_LABELS.get(m, m)] = cells
        if f"delta_{m}" in agg:
            cols[f"Δ {METRIC_LABELS.get(m, m)}"] = [
                "-" if math.isnan(d) else f"{d:+.2f}" for d in agg[f"delta_{m}"]]
    for m in ("train_img_per_s", "infer_img_per_s"):
        if m in agg:
            cols[METRIC_LABELS[m]] = [_cell(a, b if n > 1 else math.nan, 1)
                                      for a, b, n in zip(agg[m], agg[f"{m}_std"], agg["n"])]
    if published is not None:
        rows = agg[key_columns[0]].astype(str).tolist()
        for m in ("rank1", "rank10", "mAP", "mINP"):
            if any(m in published.get(r, {}) for r in rows):
                cols[f"published {METRIC_LABELS[m]}"] = [
                    f"{published[r][m]:.2f}" if m in published.get(r, {}) else "-" for r in rows]
    return pd.DataFrame(cols)


def to_markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(frame: pd.DataFrame) -> str:
    def esc(s: str) -> str:
        return (str(s).replace("\\textbf", "\x00").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
                .replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("\x00", "\\textbf"))

    lines = [r"\begin{tabular}{" + "l" * 1 + "r" * (len(frame.columns) - 1) + "}", r"\toprule",
             " & ".join(esc(c) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def plot_cmc(df: pd.DataFrame, protocol: str, path: Path, *, key: str = "method") -> None:
    """Mean CMC curve per row key (over seeds), with a band of +- one std."""
    plt = _pyplot()
    ok = df[(df["status"] == "ok") & (df["protocol"] == protocol)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(ok[key]):
        curves = np.array([json.loads(c) for c in ok[ok[key] == name]["cmc"]]) * 100
        mean = curves.mean(0)
        ranks = np.arange(1, len(mean) + 1)
        ax.plot(ranks, mean, marker="o", markersize=3, label=str(name))
        if len(curves) > 1:
            std = curves.std(0, ddof=1)
            ax.fill_between(ranks, mean - std, mean + std, alpha=0.15)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_title(f"CMC ({protocol})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_ablation_bars(agg: pd.DataFrame, path: Path, *, key: str = "method",
                       metrics: Sequence[str] = ("rank1", "mAP", "mINP")) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(agg)), 4))
    width = 0.8 / len(metrics)
    x = np.arange(len(agg))
    for i, m in enumerate(metrics):
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, agg[m], width, yerr=agg[f"{m}_std"].fillna(0),
               capsize=3, label=METRIC_LABELS[m])
    ax.set_xticks(x, agg[key].astype(str), rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.set_title(f"ablation ({agg.attrs.get('protocol')})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of the points not dominated in (maximise x, maximise y)."""
    pts = np.asarray(points, dtype=float)
    dominated = ((pts[None, :, 0] >= pts[:, None, 0]) & (pts[None, :, 1] >= pts[:, None, 1])
                 & ((pts[None, :, 0] > pts[:, None, 0]) | (pts[None, :, 1] > pts[:, None, 1]))).any(1)
    return np.flatnonzero(~dominated)


def plot_accuracy_vs_throughput(agg: pd.DataFrame, path: Path, *, key: str = "method",
                                metric: str = "mAP") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = agg[["train_img_per_s", metric]].to_numpy(dtype=float)
    valid = ~np.isnan(pts).any(1)
    ax.errorbar(pts[valid, 0], pts[valid, 1], xerr=agg["train_img_per_s_std"].fillna(0)[valid],
                yerr=agg[f"{metric}_std"].fillna(0)[valid], fmt="o", capsize=3)
    for (x, y), name in zip(pts[valid], agg[key].astype(str)[valid]):
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if valid.sum() > 1:
        front = pts[valid][pareto_front(pts[valid])]
        front = front[np.argsort(front[:, 0])]
        ax.plot(front[:, 0], front[:, 1], "--", color="gray", label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xlabel("training throughput (img/s)")
    ax.set_ylabel(f"{METRIC_LABELS[metric]} (%)")
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def write_report(folder: str | Path, *, protocol: str | None = None, baseline: str | None = None,
                 group_by: Sequence[str] = ("method",), published: dict[str, dict[str, float]] | None = None,
                 plots: bool = True) -> tuple[str, list[Path]]:
    """Rebuild every table and plot of a sweep folder from its store; returns (markdown, files)."""
    folder = Path(folder)
    store = ResultStore(folder)
    if not store.path.exists():
        raise HarnessError(f"{folder}: no {STORE_NAME} here; expected a sweep results folder (results/<sweep>)")
    df = store.dataframe()
    agg = aggregate(df, protocol=protocol, group_by=group_by)
    if baseline:
        agg = add_deltas(agg, baseline, key=group_by[0])
    proto = agg.attrs.get("protocol")
    written = []
    md_frame = table_frame(agg, key_columns=group_by, mark_best="**{}**", published=published)
    plain = table_frame(agg, key_columns=group_by, published=published)
    tex = table_frame(agg, key_columns=group_by, mark_best="\\textbf{{{}}}", published=published)
    title = f"{folder.name}: protocol {proto}" + (f", deltas to {baseline}" if baseline else "")
    markdown = f"### {title}\n\n" + to_markdown(md_frame)
    failures = df[df["status"] == "failed"]
    if len(failures):
        markdown += "\nFailed trials:\n" + "".join(
            f"- {r.method} seed {r.seed}: {r.failure}\n" for r in failures.drop_duplicates("trial_key").itertuples())
    suffix = f"-{proto}" if proto else ""
    for name, text in ((f"table{suffix}.md", markdown), (f"table{suffix}.tex", to_latex(tex))):
        atomic_write_text(folder / name, text)
        written.append(folder / name)
    csv_path = folder / f"table{suffix}.csv"
    atomic_write_text(csv_path, agg.to_csv(index=False))
    atomic_write_text(folder / f"readable{suffix}.csv", plain.to_csv(index=False))
    written += [csv_path, folder / f"readable{suffix}.csv"]
    if plots and importlib.util.find_spec("matplotlib") is None:
        plots = False
        markdown += "\n(plots skipped: matplotlib is not installed)\n"
    if plots and proto is not None and (df["status"] == "ok").any():
        plot_cmc(df, proto, folder / f"cmc{suffix}.png", key=group_by[0])
        plot_ablation_bars(agg, folder / f"ablation{suffix}.png", key=group_by[0])
        plot_accuracy_vs_throughput(agg, folder / f"accuracy_vs_throughput{suffix}.png", key=group_by[0])
        written += [folder / f"cmc{suffix}.png", folder / f"ablation{suffix}.png",
                    folder / f"accuracy_vs_throughput{suffix}.png"]
    return markdown, written
