"""Rebuild every table and figure of a sweep folder from its record store."""

from __future__ import annotations

import importlib.util
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.atomic import atomic_write_text
from harness.errors import InputError
from harness.results.metrics import ACCURACY_METRICS, TABLE_METRICS, VALIDATION_PREFIX
from harness.results.paper import (
    ANY_PROTOCOL,
    TERMINAL_WIDTH,
    WIDE_LATEX_COLUMNS,
    Published,
    paper_latex,
    paper_markdown,
    paper_numbers,
    render_terminal,
    terminal_tables,
)
from harness.results.search_table import (
    search_caption,
    search_csv,
    search_markdown,
    search_objectives,
    search_table,
    search_terminal,
)
from harness.results.stats import pairs_caption, significance_caption
from harness.results.store import STORE_NAME, ResultStore
from harness.results.tables import (
    Summary,
    add_deltas,
    csv_frame,
    expand_records,
    latex_label,
    statistics_frame,
    summarise,
    summary_caption,
    to_latex,
    to_markdown,
)


@dataclass
class Report:
    markdown: str
    terminal: str
    """The paper-style table as plain text no wider than 80 columns, caption and failures below."""
    footer: str
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)


def consistency_warnings(records: pd.DataFrame) -> list[str]:
    """Warnings when the finished runs of one table come from different library versions or devices."""
    ok = records[records["status"] == "ok"].drop_duplicates("trial_key")
    out = []
    if "versions" in ok and ok["versions"].nunique() > 1:
        parsed = pd.DataFrame([json.loads(v) if isinstance(v, str) else {} for v in ok["versions"]])
        differing = {lib: sorted(parsed[lib].dropna().astype(str).unique()) for lib in parsed.columns
                     if parsed[lib].astype(str).nunique() > 1}
        out.append("rows of this table come from different library versions: " + "; ".join(
            f"{lib} {', '.join(v)}" for lib, v in differing.items()) + " (numbers are not comparable digit for digit)")
    if "hardware" in ok and ok["hardware"].dropna().nunique() > 1:
        parsed = pd.DataFrame([json.loads(v) for v in ok["hardware"].dropna()])
        differing = {key: sorted(parsed[key].dropna().astype(str).unique()) for key in parsed.columns
                     if parsed[key].astype(str).nunique() > 1}
        out.append("rows of this table come from different hardware: " + "; ".join(
            f"{key} {' / '.join(values)}" for key, values in differing.items())
            + " (numbers are not comparable digit for digit, throughput not at all)")
    elif "device" in ok and ok["device"].nunique() > 1:
        devices = "; ".join(sorted(ok["device"].astype(str).unique()))
        out.append(f"rows of this table come from different devices: {devices} (throughput columns are not comparable)")
    return out


def hardware_note(records: pd.DataFrame) -> str | None:
    """The caption's sentence naming what computed the table's rows (records' `device` field)."""
    ok = records[records["status"] == "ok"]
    if "device" not in ok or ok["device"].dropna().empty:
        return None
    devices = sorted(ok["device"].dropna().astype(str).unique())
    return ("Computed on " if len(devices) == 1 else "Computed on several machines: ") + "; ".join(devices) + "."


OutcomeKey = tuple[str | None, str]
"""(protocol, status) of one stored record of a trial."""


def _outcome_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that say what a trial measured: every accuracy metric, its gallery spread and its
    validation form (costs such as img/s depend on the machine and may differ between two runs)."""
    names = [*ACCURACY_METRICS, *(VALIDATION_PREFIX + m for m in ACCURACY_METRICS)]
    return [c for name in names for c in (name, f"{name}_std") if c in frame.columns]


def _outcomes(frame: pd.DataFrame) -> dict[str, dict[OutcomeKey, dict[str, Any]]]:
    """trial_key -> {(protocol, status): {metric: value}} (NaN and missing both None)."""
    columns = _outcome_columns(frame)
    out: dict[str, dict[OutcomeKey, dict[str, Any]]] = {}
    for row in frame.to_dict("records"):
        protocol = row.get("protocol")
        protocol = None if protocol is None or (isinstance(protocol, float) and math.isnan(protocol)) else protocol
        values = {c: None if row.get(c) is None or (isinstance(row.get(c), float) and math.isnan(row[c]))
                  else row[c] for c in columns}
        out.setdefault(row["trial_key"], {})[(protocol, row["status"])] = values
    return out


def _difference(a: dict[OutcomeKey, dict[str, Any]], b: dict[OutcomeKey, dict[str, Any]]) -> str:
    """What differs between two outcomes of one trial, in words."""
    if set(a) != set(b):
        def show(outcome: dict[OutcomeKey, dict[str, Any]]) -> str:
            return ", ".join(f"{status} on {protocol}" if protocol else status for protocol, status in sorted(
                outcome, key=str))
        return f"{show(a)} vs {show(b)}"
    for key in sorted(a, key=str):
        differing = [f"{c} {a[key].get(c)} vs {b[key].get(c)}" for c in sorted(set(a[key]) | set(b[key]))
                     if a[key].get(c) != b[key].get(c)]
        if differing:
            return f"{key[0] or key[1]}: " + ", ".join(differing[:4])
    return "no difference"


def read_stores(folders: Sequence[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Records and curves of one or more results folders, read without modifying them.

    A trial stored in several folders (the same configuration run on two nodes) is counted once
    when every copy has the same status and accuracy numbers on every protocol (its records, speed
    included, come from the first folder that holds it); copies that disagree are refused with
    InputError naming the trial and both folders, so a merged table never depends on the order
    of the folders.
    """
    frames, curve_frames = [], []
    for folder in folders:
        store = ResultStore(folder)
        if not store.path.exists():
            raise InputError(f"{folder}: no {STORE_NAME} here; expected a sweep results folder (results/<sweep>)")
        frames.append(store.dataframe())
        curve_frames.append(store.curves())
    if len(frames) == 1:
        df, curves = frames[0], curve_frames[0]
    else:
        first: dict[str, tuple[Path, dict[OutcomeKey, dict[str, Any]]]] = {}
        conflicts: list[str] = []
        kept = []
        for folder, frame in zip(folders, frames):
            if frame.empty:
                continue
            outcomes = _outcomes(frame)
            for key, outcome in outcomes.items():
                if key not in first:
                    continue
                where, seen = first[key]
                if seen != outcome:
                    conflicts.append(f"trial {key}: {where} and {folder} differ ({_difference(seen, outcome)})")
            kept.append(frame[~frame["trial_key"].isin(first)])
            first.update({key: (folder, outcome) for key, outcome in outcomes.items() if key not in first})
        if conflicts:
            more = f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
            raise InputError("the same trial (configuration and seed) is stored with different results: "
                             + "; ".join(conflicts[:3]) + more + ". A merged table counts a trial once and cannot "
                             "choose between them: name only one of these folders, or remove the trial's records "
                             "from one store")
        df = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame()
        non_empty = [c for c in curve_frames if not c.empty]
        curves = (pd.concat(non_empty, ignore_index=True).drop_duplicates(["trial_key", "epoch"])
                  if non_empty else curve_frames[0])
        if not df.empty:
            df["record_id"] = range(len(df))
    if df.empty:
        names = ", ".join(str(f) for f in folders)
        raise InputError(f"{names}: the store holds no records yet (no trial has finished)")
    return df, curves


def _is_synthetic(folder: Path, summaries: Sequence[Summary]) -> bool:
    return folder.name.endswith("-dry-run") or any(s.synthetic for s in summaries)


def write_report(folder: str | Path, *, protocols: Sequence[str | None] | None = None, baseline: str | None = None,
                 group_by: Sequence[str] = ("method",), metrics: Sequence[str] = TABLE_METRICS,
                 published: Published | None = None, plots: bool = True,
                 label_columns: dict[str, str] | None = None, notes: Sequence[str] = (),
                 sources: Sequence[str | Path] = ()) -> Report:
    """Tables (per protocol and one paper-style table across protocols) and figures of a sweep folder.

    `protocols` defaults to every recorded protocol. Published numbers are shown only beside rows
    measured on real data. `label_columns` adds constant label columns (e.g. which search chose a
    configuration) and `notes` sentences to every caption. `sources` are the results folders whose
    stores are read (default: `folder` alone); several are merged, e.g. the folders of the nodes of
    one multi-node sweep, and the tables and figures are written to `folder`. The records of a
    search get the search table instead (harness.results.search_table: objectives, sampled values,
    pruning; no test protocol was evaluated), whatever `protocols` says.
    """
    folder = Path(folder)
    df, curves = read_stores([Path(s) for s in sources] or [folder])
    records = expand_records(df)
    objectives = search_objectives(records)
    if objectives is not None:
        return _write_search_report(folder, records, curves, objectives, plots=plots)
    recorded = list(dict.fromkeys(records.loc[records["status"] == "ok", "protocol"].dropna()))
    protocols = [p for p in (protocols or recorded or [None])]
    summaries = []
    for protocol in protocols:
        summary = summarise(df, protocol=protocol, group_by=group_by, metrics=metrics, records=records)
        if baseline:
            summary = add_deltas(summary, baseline)
        for name, value in (label_columns or {}).items():
            summary.rows.insert(len(summary.key_columns), name, value)
            summary.key_columns.append(name)
        summaries.append(summary)
    if published and ANY_PROTOCOL in published and len(summaries) > 1:
        raise InputError("published rows given as one paper.setting entry fit a single protocol; choose one "
                         "protocol, or map each protocol to its entry (rows: {ROW: {PROTOCOL: paper.setting}})")
    warnings = consistency_warnings(records)
    hardware = hardware_note(records)
    notes = [*notes, *([hardware] if hardware else []), *(f"Warning: {w}." for w in warnings)]
    if published and _is_synthetic(folder, summaries):
        notes.append("Published numbers are not shown beside rows measured on synthetic or dry-run data.")
        published = None
    files: list[Path] = []
    sections = []
    for summary in summaries:
        summary.notes.extend(notes)
        suffix = f"-{summary.protocol or 'no-protocol'}"
        caption = summary_caption(summary)
        stats_frame = statistics_frame(summary)
        md = f"### {folder.name}: {summary.protocol}\n\n{to_markdown(stats_frame)}\n{caption}\n"
        sections.append(md)
        tex = to_latex(stats_frame, caption=caption, left_columns=len(summary.key_columns) + 1,
                       environment="table*" if len(stats_frame.columns) > WIDE_LATEX_COLUMNS else "table",
                       label=latex_label(f"{folder.name}-{summary.protocol or 'no-protocol'}"))
        for name, text in ((f"table{suffix}.md", md), (f"table{suffix}.tex", tex),
                           (f"table{suffix}.csv", csv_frame(summary).to_csv(index=False))):
            atomic_write_text(folder / name, text)
            files.append(folder / name)
    caption = _paper_caption(summaries, baseline, notes)
    paper_md = f"### {folder.name}\n\n{paper_markdown(summaries, published)}\n{caption}\n"
    atomic_write_text(folder / "table.md", paper_md)
    atomic_write_text(folder / "table.tex", paper_latex(summaries, caption, published,
                                                        label=latex_label(folder.name)))
    atomic_write_text(folder / "table.csv", paper_numbers(summaries, published).to_csv(index=False))
    files += [folder / "table.md", folder / "table.tex", folder / "table.csv"]
    failures = records[records["status"] == "failed"].drop_duplicates("trial_key")
    failed_text = "".join(f"- {r['method']} seed {r['seed']}: {r['failure']}\n" for _, r in failures.iterrows())
    markdown = (paper_md + "".join("\n" + s for s in sections)
                + (f"\nFailed trials:\n{failed_text}" if failed_text else ""))
    if plots and importlib.util.find_spec("matplotlib") is None:
        plots = False
        markdown += "\n(plots skipped: matplotlib is not installed)\n"
    if plots:
        from harness.results.plots import (
            ablation_figure,
            cmc_figure,
            save_figure,
            throughput_figure,
        )

        for summary in summaries:
            suffix = f"-{summary.protocol or 'no-protocol'}"
            files += save_figure(cmc_figure(summary), folder / f"cmc{suffix}.png")
            files += save_figure(ablation_figure(summary), folder / f"ablation{suffix}.png")
            files += save_figure(throughput_figure(summary), folder / f"accuracy_vs_throughput{suffix}.png")
        if not curves.empty:
            from harness.figures.curves import loss_curves_figure

            key = group_by[0] if group_by and group_by[0] in records.columns else "method"
            files += save_figure(loss_curves_figure(curves, records, key=key), folder / "loss_curves.png")
    footer = textwrap.fill(caption, TERMINAL_WIDTH) + "\n" + (f"Failed trials:\n{failed_text}" if failed_text else "")
    return Report(markdown=markdown, terminal=render_terminal(summaries) + footer, footer=footer, files=files,
                  warnings=warnings, summaries=summaries)


def _write_search_report(folder: Path, records: pd.DataFrame, curves: pd.DataFrame, objectives: dict[str, str],
                         *, plots: bool) -> Report:
    """table.md / table.csv of a search (one row per trial) and its loss curves."""
    table = search_table(records, objectives)
    markdown = search_markdown(table, folder.name)
    files = [folder / "table.md", folder / "table.csv"]
    atomic_write_text(files[0], markdown)
    atomic_write_text(files[1], search_csv(table))
    if plots and importlib.util.find_spec("matplotlib") is not None and not curves.empty:
        from harness.figures.curves import loss_curves_figure
        from harness.results.plots import save_figure

        files += save_figure(loss_curves_figure(curves, records), folder / "loss_curves.png")
    warnings = consistency_warnings(records)
    footer = textwrap.fill(search_caption(table, folder.name), TERMINAL_WIDTH) + "\n"
    return Report(markdown=markdown, terminal=search_terminal(table, folder.name) + footer, footer=footer,
                  files=files, warnings=warnings)


def _paper_caption(summaries: Sequence[Summary], baseline: str | None, notes: list[str]) -> str:
    parts = ["Mean ± sd over seeds (n in the runs column)."]
    limit = pairs_caption([n for s in summaries for n in s.rows["n"]])
    if limit is None or not limit.endswith("nothing is marked."):
        parts.append("Bold: best, significantly better than the runner-up (paired by seed); † : best not "
                     "significantly better than these rows (tied).")
    if limit:
        parts.append(limit)
    if baseline:
        parts.append(f"Differences to {baseline}, with CIs and p-values, are in the per-protocol tables. "
                     + significance_caption())
    parts += notes
    return " ".join(dict.fromkeys(parts))


def print_report(report: Report) -> None:
    """The terminal view on stdout (bold only on a terminal); warnings and written files on stderr."""
    import sys

    from rich.console import Console

    if sys.stdout.isatty() and report.summaries:
        console = Console()
        for table in terminal_tables(report.summaries, min(console.width, TERMINAL_WIDTH)):
            console.print(table)
        print(report.footer, end="")
    else:
        print(report.terminal, end="")
    for warning in report.warnings:
        print(f"vireid: warning: {warning}", file=sys.stderr)
    print("written: " + ", ".join(str(f) for f in report.files), file=sys.stderr)
