"""One paper-style table across protocols: switch columns, Rank-1/10/20, mAP, mINP per protocol.

Rendered as Markdown, LaTeX (booktabs, one \\multicolumn per protocol; `table*` when wide) and,
for the terminal, as rich tables no wider than 80 columns (each cell's sd on a second line). The
CSV holds numbers only: mean, sd and n per (protocol, metric), the best/tied mark in a column of
its own, so `pandas.read_csv` reads it back.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pandas as pd

from harness.errors import HarnessError
from harness.results.metrics import metric
from harness.results.tables import (
    LATEX,
    MARKDOWN,
    TIED_MARK,
    Markup,
    Summary,
    best_marks,
    format_cell,
    format_number,
    key_text,
    protocol_title,
    runs_text,
)

ANY_PROTOCOL = "*"
"""Published rows given as one plain entry (harness.published): shown only in a single-protocol table."""
PUBLISHED_SOURCE = "source"
"""A published setting's optional label of where its numbers come from (harness.published), printed in the
published row's runs column instead of "paper" (e.g. which version of a dataset's results they are)."""
CHECK = "✓"
SWITCH_COLUMNS = ("MCM", "ICA/center", "CCA")
TERMINAL_WIDTH = 80
Published = dict[str, dict[str, dict[str, Any]]]
"""protocol -> row label -> metric -> published value (percent), and optionally PUBLISHED_SOURCE -> label."""


def method_switches(name: str) -> dict[str, Any] | None:
    """The MCLNet switches (mcm, center, cca) of a method name, or None for another family."""
    try:
        from methods.registry import resolve_method

        switches = resolve_method(str(name)).switches
    except HarnessError:  # a name no registered family knows (e.g. from an older store)
        return None
    return switches if {"mcm", "center", "cca"} <= set(switches) else None


def _switch_cells(name: str) -> tuple[str, str, str] | None:
    s = method_switches(name)
    if s is None:
        return None
    center = {"none": ""}.get(s["center"], str(s["center"]).upper() if s["center"] == "ica" else str(s["center"]))
    return (CHECK if s["mcm"] else "", center, CHECK if s["cca"] else "")


def _label_columns(summary: Summary, short: bool = False) -> tuple[pd.DataFrame, bool]:
    rows = summary.rows
    labels = pd.DataFrame({k: rows[k].map(key_text) for k in summary.key_columns})
    with_switches = summary.key_columns[0] == "method"
    if with_switches:
        cells = [_switch_cells(m) for m in rows["method"]]
        with_switches = all(c is not None for c in cells)
        if with_switches:
            for i, col in enumerate(SWITCH_COLUMNS):
                labels[col] = [c[i] for c in cells]
    labels["runs"] = [runs_text(r, short=short) for _, r in rows.iterrows()]
    return labels, with_switches


def paper_frame(summaries: Sequence[Summary], markup: Markup = MARKDOWN, *, with_std: bool = True,
                short: bool = False, published: Published | None = None, std_below: bool = False) -> pd.DataFrame:
    """The combined table: label columns, then (protocol, metric) columns; MultiIndex columns.

    A cell is "mean ± sd" (`std_below`: the sd on a second line, for narrow terminals) with its mark.
    """
    first = summaries[0]
    labels, _ = _label_columns(first, short)
    columns: dict[tuple[str, str], list[str]] = {("", c): labels[c].tolist() for c in labels.columns}
    for summary in summaries:
        rows = summary.rows.set_index("configuration").reindex(first.rows["configuration"])
        aligned = Summary(summary.protocol, summary.key_columns, rows.reset_index(), summary.runs, summary.metrics)
        for m in summary.metrics:
            info = metric(m)
            marks = best_marks(aligned, m)
            cells = []
            for (_, row), mark in zip(aligned.rows.iterrows(), marks):
                n = int(row["n"]) if pd.notna(row["n"]) else 0
                std = row[f"{m}_std"] if with_std else float("nan")
                text = format_cell(row[m], float("nan") if std_below else std, n, info.digits)
                if mark == "best":
                    text = markup.best.format(text)
                elif mark == "tied":
                    text = markup.tied.format(text)
                if std_below and n >= 2 and pd.notna(std):
                    text += f"\n± {format_number(std, info.digits)}"
                cells.append(text)
            columns[(protocol_title(summary.protocol), info.short if short else info.label)] = cells
    frame = pd.DataFrame(columns)
    frame.columns = pd.MultiIndex.from_tuples(columns.keys())
    if published:
        frame = pd.concat([frame, _published_rows(frame, summaries, published, short)], ignore_index=True)
    return frame


def _published_rows(frame: pd.DataFrame, summaries: Sequence[Summary], published: Published,
                    short: bool) -> pd.DataFrame:
    names = list(dict.fromkeys(row for rows in published.values() for row in rows))
    key = summaries[0].key_columns[0]
    out = pd.DataFrame("", index=range(len(names)), columns=frame.columns)
    out[("", key)] = [f"{name} (published)" for name in names]
    sources = [list(dict.fromkeys(str(rows[name][PUBLISHED_SOURCE]) for rows in published.values()
                                  if PUBLISHED_SOURCE in rows.get(name, {}))) for name in names]
    out[("", "runs")] = ["; ".join(labels) or "paper" for labels in sources]
    for summary in summaries:
        for m in summary.metrics:
            info = metric(m)
            col = (protocol_title(summary.protocol), info.short if short else info.label)
            numbers = published.get(summary.protocol) or (
                published.get(ANY_PROTOCOL, {}) if len(summaries) == 1 else {})
            values = [numbers.get(name, {}).get(m) for name in names]
            out[col] = [format_number(v, info.digits) if v is not None else "-" for v in values]
    return out


def paper_numbers(summaries: Sequence[Summary], published: Published | None = None) -> pd.DataFrame:
    """The combined table as numbers (table.csv): label and switch columns, n / failed / pruned, then
    per protocol and metric `<protocol>.<metric>.mean`, `.sd`, `.n` and `.mark` (best, tied or empty).
    Published rows carry their number as the mean and `paper` in the runs column."""
    first = summaries[0]
    labels, _ = _label_columns(first)
    out = labels.drop(columns=["runs"]).copy()
    out["n"] = first.rows["n"].astype(int).to_numpy()
    for status in ("failed", "pruned"):
        out[status] = first.rows[status].astype(int).to_numpy()
    out["runs"] = "measured"
    for summary in summaries:
        rows = summary.rows.set_index("configuration").reindex(first.rows["configuration"])
        aligned = Summary(summary.protocol, summary.key_columns, rows.reset_index(), summary.runs, summary.metrics)
        for m in summary.metrics:
            prefix = f"{summary.protocol}.{m}"
            out[f"{prefix}.mean"] = aligned.rows[m].to_numpy(float)
            out[f"{prefix}.sd"] = aligned.rows[f"{m}_std"].to_numpy(float)
            out[f"{prefix}.n"] = aligned.rows[f"{m}_n"].fillna(0).astype(int).to_numpy()
            out[f"{prefix}.mark"] = best_marks(aligned, m)
    if published:
        names = list(dict.fromkeys(row for rows in published.values() for row in rows))
        extra = pd.DataFrame({first.key_columns[0]: [f"{name} (published)" for name in names], "runs": "paper"})
        for summary in summaries:
            numbers = published.get(summary.protocol) or (
                published.get(ANY_PROTOCOL, {}) if len(summaries) == 1 else {})
            for m in summary.metrics:
                extra[f"{summary.protocol}.{m}.mean"] = [numbers.get(name, {}).get(m) for name in names]
        out = pd.concat([out, extra], ignore_index=True)
    return out


def flat_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Markdown/CSV headers: "<protocol> <metric>" in one line."""
    out = frame.copy()
    out.columns = [" ".join(p for p in col if p) for col in frame.columns]
    return out


def paper_markdown(summaries: Sequence[Summary], published: Published | None = None) -> str:
    from harness.results.tables import to_markdown

    return to_markdown(flat_columns(paper_frame(summaries, MARKDOWN, published=published)))


WIDE_LATEX_COLUMNS = 8
"""A LaTeX table with more columns than this spans both columns of a two-column paper (`table*`)."""
LATEX_PACKAGES = "% needs \\usepackage{booktabs} (rules) and \\usepackage{amssymb} (\\checkmark)\n"


def paper_latex(summaries: Sequence[Summary], caption: str, published: Published | None = None,
                label: str | None = None) -> str:
    """The booktabs table with its caption and `\\label{label}`, preceded by the packages it needs."""
    from harness.results.tables import to_latex

    frame = paper_frame(summaries, LATEX, published=published)
    left = sum(1 for col in frame.columns if col[0] == "")
    environment = "table*" if len(frame.columns) > WIDE_LATEX_COLUMNS else "table"
    body = to_latex(frame, caption=caption, left_columns=left, escape_cells=False, environment=environment,
                    label=label)
    return LATEX_PACKAGES + body.replace("±", r"$\pm$").replace(CHECK, r"\checkmark").replace("→", r"$\to$")


def terminal_tables(summaries: Sequence[Summary], width: int = TERMINAL_WIDTH) -> list[Any]:
    """rich Tables of the combined table (mean, its sd below; best in bold, ties marked) within `width` columns.

    All protocols side by side when they fit, otherwise one table per protocol.
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    def build(group: Sequence[Summary]) -> Table:
        frame = paper_frame(group, Markup(best="[bold]{}[/bold]", tied="{}" + TIED_MARK), short=True,
                            std_below=True)
        title = ", ".join(protocol_title(s.protocol) for s in group)
        labels = [col for col in frame.columns if not col[0] and col[1] != "runs"]
        constant = [col for col in labels if frame[col].nunique() == 1]
        if len(constant) == len(labels):  # rows told apart by no label: keep the row names
            constant = constant[1:]
        named = [f"{name}: {frame[(top, name)].iloc[0]}" for top, name in constant if frame[(top, name)].iloc[0]]
        if named:  # the same label on every row goes into the title, leaving the width to the numbers
            title += "\n" + "; ".join(named)
        frame = frame.drop(columns=constant)  # an empty one (a switch off on every row) says nothing
        table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False)
        dotted = [name for top, name in frame.columns if not top and "." in name]
        for (top, name), cells in zip(frame.columns, frame.T.itertuples(index=False)):
            header = name if not top or len(group) == 1 else f"{name}\n{top}"
            label = {"ICA/center": "I/C", "runs": "n"}.get(name, _short_key(name, dotted))
            numbers = bool(top) or name in ("runs", *SWITCH_COLUMNS) or name == frame.columns[0][1]
            # numbers, row names and swept values are never cut: their columns keep the width of their
            # widest cell (a swept key's header may wrap); other labels wrap
            widest = max([len(line) for c in cells for line in str(c).replace("[bold]", "").replace("[/bold]", "")
                          .splitlines()] + [3])
            table.add_column(label if not top else header, justify="right" if top else "left",
                             no_wrap=numbers, min_width=widest if numbers or name in dotted else None,
                             overflow="fold")
        for row in frame.itertuples(index=False):
            table.add_row(*map(str, row))
        return table

    console = Console(width=10_000, file=io.StringIO())
    whole = build(summaries)
    if console.measure(whole).maximum <= width or len(summaries) == 1:
        return [whole]
    return [build([s]) for s in summaries]


def _short_key(name: str, keys: Sequence[str]) -> str:
    """The shortest dotted suffix of `name` that no other key of `keys` ends with (loss.ica.sigma -> sigma)."""
    if name not in keys:
        return name
    parts = name.split(".")
    for start in range(len(parts) - 1, 0, -1):
        suffix = ".".join(parts[start:])
        if not any(k != name and (k == suffix or k.endswith("." + suffix)) for k in keys):
            return suffix
    return name


def render_terminal(summaries: Sequence[Summary], width: int = TERMINAL_WIDTH, *, styles: bool = False) -> str:
    """The terminal tables as text (`styles` keeps ANSI bold)."""
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(width=width, file=buffer, force_terminal=styles, color_system="standard" if styles else None)
    for table in terminal_tables(summaries, width):
        console.print(table)
    return buffer.getvalue()
