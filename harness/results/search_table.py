"""The table of a search: one row per trial with its sampled values, its state and its objectives.

A search trial is scored on held-out training identities only and never evaluates the test
protocols (harness.search), so this table holds no test metric: it shows what the search
optimised (`val_mAP`, costs), whether the pruner stopped a trial (and the last value it
reported), and which trial `--final` retrains (single objective: the best finished one) or the
Pareto front (several objectives). Test numbers come from the final run's table only.

Rows: finished trials best first, then pruned trials by their last reported value, then failed
ones. Rendered as Markdown, numeric CSV and an 80-column terminal table.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.results.metrics import metric
from harness.results.records import OBJECTIVES_FIELD
from harness.results.stats import pareto_front
from harness.results.tables import format_number, key_text, swept_keys, to_markdown

CHOSEN = "✓"
STATE_ORDER = {"ok": 0, "pruned": 1, "failed": 2}


def search_objectives(records: pd.DataFrame) -> dict[str, str] | None:
    """{objective: direction} of a search's records (None: the records are not a search's)."""
    if OBJECTIVES_FIELD not in records:
        return None
    values = records[OBJECTIVES_FIELD].dropna()
    return json.loads(values.iloc[0]) if len(values) else None


@dataclass
class SearchTable:
    """One row per trial (`frame`, numbers) and what the rows mean."""

    frame: pd.DataFrame
    """trial, key columns, state, epochs, one column per objective, last_reported, chosen / pareto."""
    key_columns: list[str]
    objectives: dict[str, str]

    @property
    def counts(self) -> dict[str, int]:
        return {s: int((self.frame["state"] == s).sum()) for s in STATE_ORDER}


def _last_reported(row: dict[str, Any]) -> float:
    try:
        history = json.loads(row.get("val_history") or "{}")
    except (TypeError, ValueError):
        return np.nan
    return float(history[max(history, key=int)]) if history else np.nan


def search_table(records: pd.DataFrame, objectives: dict[str, str]) -> SearchTable:
    """`records`: expand_records() of a search's store; `objectives`: search_objectives(records)."""
    trials = records.drop_duplicates("trial_key")
    keys = list(dict.fromkeys(k for k in ("method", *swept_keys(records)) if k in trials))
    names = list(objectives)
    rows = []
    for row in trials.to_dict("records"):
        state = row["status"] if row["status"] in STATE_ORDER else "failed"
        line = {"trial": str(row.get("trial_id", "")), **{k: row.get(k) for k in keys}, "state": state,
                "epochs": row.get("epochs") if state != "failed" else np.nan}
        for name in names:
            value = row.get(name) if state == "ok" else np.nan
            line[name] = float(value) if isinstance(value, (int, float)) and np.isfinite(value) else np.nan
        line["last_reported"] = _last_reported(row) if state == "pruned" else np.nan
        line["trial_key"] = row["trial_key"]
        rows.append(line)
    frame = pd.DataFrame(rows)
    sign = 1.0 if objectives[names[0]].startswith("max") else -1.0
    rank = np.where(frame["state"] == "pruned", frame["last_reported"], frame[names[0]]) * -sign
    frame = frame.assign(_state=frame["state"].map(STATE_ORDER), _rank=rank)
    frame = frame.sort_values(["_state", "_rank"], kind="stable", na_position="last")
    frame = frame.drop(columns=["_state", "_rank"]).reset_index(drop=True)
    ok = (frame["state"] == "ok") & np.isfinite(frame[names].to_numpy(float)).all(1)
    if len(names) == 1:
        frame["chosen"] = False
        if ok.any():
            frame.loc[ok[ok].index[0], "chosen"] = True  # sorted best first: the trial --final retrains
    else:
        points = frame.loc[ok, names].to_numpy(float)
        frame["pareto"] = False
        if len(points):
            frame.loc[ok[ok].index[pareto_front(points, tuple(objectives[n] for n in names))], "pareto"] = True
    return SearchTable(frame=frame, key_columns=keys, objectives=objectives)


def _text_frame(table: SearchTable, *, short: bool = False) -> pd.DataFrame:
    """The rows as text: sampled values at 4 significant digits, a pruned trial's last reported value
    in brackets in its objective's column, the chosen (or Pareto) trials ticked."""
    frame = table.frame
    names = list(table.objectives)
    out = pd.DataFrame({"trial": frame["trial"]})
    for k in table.key_columns:
        out[k] = frame[k].map(key_text)
    out["state"] = [f"pruned @{int(e)}" if s == "pruned" and pd.notna(e) else s
                    for s, e in zip(frame["state"], frame["epochs"])]
    out["epochs"] = [str(int(e)) if pd.notna(e) else "-" for e in frame["epochs"]]
    for i, name in enumerate(names):
        info = metric(name)
        cells = []
        for _, row in frame.iterrows():
            if row["state"] == "pruned" and i == 0 and np.isfinite(row["last_reported"]):
                cells.append(f"({format_number(row['last_reported'], info.digits)})")
            else:
                cells.append(format_number(row[name], info.digits))
        out[info.label if short else name] = cells
    flag = "chosen" if "chosen" in frame else "pareto"
    out[flag] = [CHOSEN if v else "" for v in frame[flag]]
    return out


def search_caption(table: SearchTable, search: str) -> str:
    counts = table.counts
    names = ", ".join(f"{n} ({'higher' if d.startswith('max') else 'lower'} is better)"
                      for n, d in table.objectives.items())
    parts = [f"Search {search}: {len(table.frame)} trials ({counts['ok']} finished, {counts['pruned']} pruned, "
             f"{counts['failed']} failed), scored on {names}, measured on held-out training identities; the "
             "test protocols were not evaluated (the final run, `vireid sweep SPEC --final`, tests the chosen "
             "configuration)."]
    if counts["pruned"]:
        parts.append("pruned @k: stopped by the pruner after epoch k; (x): the last value it reported.")
    if "chosen" in table.frame:
        parts.append(f"{CHOSEN}: the best finished trial, which --final retrains.")
    else:
        parts.append(f"{CHOSEN}: the Pareto front of the objectives (--final-trial names one).")
    return " ".join(parts)


def search_markdown(table: SearchTable, search: str) -> str:
    return f"### {search}\n\n{to_markdown(_text_frame(table))}\n{search_caption(table, search)}\n"


def search_csv(table: SearchTable) -> str:
    return table.frame.to_csv(index=False)


def search_terminal(table: SearchTable, search: str, width: int = 80) -> str:
    """The table within `width` columns: labels the same on every row go into the title, dotted keys
    are shortened to their last unique part."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from harness.results.paper import _short_key

    text = _text_frame(table, short=True)
    title = f"search {search}"
    constant = [k for k in table.key_columns if text[k].nunique() == 1 and len(text) > 1]
    if constant:
        title += "\n" + "; ".join(f"{k}: {text[k].iloc[0]}" for k in constant)
        text = text.drop(columns=constant)
    keys = [k for k in table.key_columns if k not in constant]
    rich_table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False)
    for column in text.columns:
        header = _short_key(column, keys) if column in keys else {"chosen": CHOSEN}.get(column, column)
        widest = max([len(str(v)) for v in text[column]] + [len(header)])
        # nothing is cut: a column keeps its widest cell or header
        rich_table.add_column(header, justify="left" if column in ("trial", "state", *keys) else "right",
                              no_wrap=True, min_width=widest, overflow="fold")
    for row in text.itertuples(index=False):
        rich_table.add_row(*map(str, row))
    buffer = io.StringIO()
    Console(width=width, file=buffer, color_system=None).print(rich_table)
    return buffer.getvalue()
