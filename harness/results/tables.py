"""Records -> statistics per configuration -> tables (Markdown, CSV, LaTeX, terminal).

Rows are configurations: records are grouped by their FULL configuration minus the replicate
keys (seed, RegDB split), so two runs that differ in anything else are never averaged as seeds.
`group_by` names the label columns shown first; any other configuration key that varies
between rows is shown as a column too.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from harness.config import TrialConfig
from harness.config_schema import fill_added_keys
from harness.errors import ConfigError, InputError
from harness.results.metrics import (
    ACCURACY_METRICS,
    COST_METRICS,
    TABLE_METRICS,
    metric,
)
from harness.results.records import PARAM_PREFIX
from harness.results.stats import (
    MIN_SIGNIFICANT_PAIRS,
    mean_interval,
    paired_difference,
    pairs_caption,
    significance_caption,
)

REPLICATE_KEYS = ("seed", "data.trial")
"""Configuration keys whose values are repetitions of one configuration (averaged, paired on)."""
RECORD_KEYS = ("method", "backbone", "dataset")
PROTOCOL_TITLES = {
    "all-single": "SYSU all", "indoor-single": "SYSU indoor", "all-multi": "SYSU all (multi)",
    "indoor-multi": "SYSU indoor (multi)", "v2t": "RegDB V→T", "t2v": "RegDB T→V",
    "ir2vis": "LLCM IR→VIS", "vis2ir": "LLCM VIS→IR", "val": "validation",
}
TIED_MARK = "†"
SIGNIFICANT_MARK = "*"


def protocol_title(protocol: str | None) -> str:
    return PROTOCOL_TITLES.get(protocol or "", protocol or "-")


# --------------------------------------------------------------------------- records


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return out


def expand_records(df: pd.DataFrame) -> pd.DataFrame:
    """Stored records with their configuration as dotted columns, a `configuration` id (the
    config minus the replicate keys), a `replicate` id, and the gallery-trial spread renamed
    `<metric>_gallery_std` (a record's `<metric>_std` is the std over its gallery draws)."""
    if df.empty:
        return df
    configs = [json.loads(c) if isinstance(c, str) else {} for c in df.get("config", pd.Series([None] * len(df)))]
    # a record stored before a key was added reads as holding its default: one row with the newer records
    configs = [fill_added_keys(TrialConfig, c) if isinstance(c, dict) and c else c for c in configs]
    flat = [_flatten(c) for c in configs]
    out = df.rename(columns={f"{m}_std": f"{m}_gallery_std" for m in ACCURACY_METRICS}).reset_index(drop=True)
    dotted = pd.DataFrame(flat, index=out.index)
    out = pd.concat([out, dotted[[c for c in dotted.columns if c not in out.columns]]], axis=1)
    identity = [{k: v for k, v in f.items() if k not in REPLICATE_KEYS} or
                {k: row.get(k) for k in RECORD_KEYS} for f, row in zip(flat, df.to_dict("records"))]
    out["configuration"] = [json.dumps(i, sort_keys=True, default=str) for i in identity]
    replicate = [tuple(f.get(k, row.get(k)) for k in REPLICATE_KEYS) for f, row in zip(flat, df.to_dict("records"))]
    out["replicate"] = [json.dumps(r, default=str) for r in replicate]
    return out


def config_columns(records: pd.DataFrame) -> list[str]:
    """The dotted configuration columns (not the `param_*` copies a search records beside them)."""
    return [c for c in records.columns if "." in c and not c.startswith(PARAM_PREFIX)]


def swept_keys(records: pd.DataFrame) -> list[str]:
    """Configuration keys whose value differs between configurations (replicate keys excluded)."""
    if records.empty:
        return []
    firsts = records.drop_duplicates("configuration")
    keys = ["method", *config_columns(firsts)] if "method" in firsts else config_columns(firsts)
    return [k for k in keys if k not in REPLICATE_KEYS and firsts[k].astype(str).nunique() > 1]


def check_group_by(group_by: Sequence[str], records: pd.DataFrame) -> list[str]:
    """`group_by` as a list, or ConfigError naming the valid keys (swept dotted keys first)."""
    group_by = list(group_by)
    if not group_by:
        raise ConfigError("group_by: expected at least one key")
    replicated = [g for g in group_by if g in REPLICATE_KEYS]
    if replicated:
        raise ConfigError(f"group_by: {', '.join(replicated)} repeats a configuration (averaged over); "
                          f"group by a configuration key instead")
    dotted = [c for c in config_columns(records) if c not in REPLICATE_KEYS]
    valid = list(dict.fromkeys([*RECORD_KEYS, *dotted]))
    unknown = [g for g in group_by if g not in valid]
    if unknown:
        swept = swept_keys(records)
        raise ConfigError(f"group_by: unknown key(s) {', '.join(map(repr, unknown))}; valid: "
                          f"{', '.join(RECORD_KEYS)}, the swept keys {', '.join(swept) or '(none)'}, "
                          f"or any dotted config key (e.g. {', '.join(dotted[:3])})")
    return group_by


# --------------------------------------------------------------------------- statistics


@dataclass
class Summary:
    """Statistics of one protocol: one row per configuration."""

    protocol: str | None
    key_columns: list[str]
    rows: pd.DataFrame
    """key columns, configuration, n/failed/pruned, and per metric m (the table's metrics and the
    recorded cost metrics such as throughput): m (mean), m_std (over seeds),
    m_n, m_ci_low, m_ci_high, m_gallery_std; after `add_deltas` also m_delta, m_delta_ci_low,
    m_delta_ci_high, m_delta_p, m_delta_n, m_delta_test."""
    runs: pd.DataFrame
    """The finished runs behind the rows: configuration, replicate, metric values, cmc."""
    metrics: tuple[str, ...]
    datasets: tuple[str, ...] = ()
    baseline: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        return any(str(d).startswith("synthetic") for d in self.datasets)

    @property
    def min_n(self) -> int:
        n = self.rows["n"][self.rows["n"] > 0]
        return int(n.min()) if len(n) else 0


def summarise(df: pd.DataFrame, *, protocol: str | None = None, group_by: Sequence[str] = ("method",),
              metrics: Sequence[str] = TABLE_METRICS, records: pd.DataFrame | None = None) -> Summary:
    """Mean, std, n and 95 % CI over seeds of each metric per configuration, for one protocol.

    Rows keep the order in which their configurations first appear in the store. Failed and
    pruned trials are counted per row and excluded from the statistics.
    """
    if df.empty:
        raise InputError("no records to tabulate (the sweep has not finished any trial yet)")
    records = expand_records(df) if records is None else records
    group_by = check_group_by(group_by, records)
    for m in metrics:
        metric(m)  # unknown metric names are refused
    ok = records[records["status"] == "ok"]
    known = list(dict.fromkeys(ok["protocol"])) if not ok.empty else []
    if protocol is None and known:
        protocol = known[0]
    if protocol is not None and known and protocol not in known:
        raise InputError(f"protocol {protocol!r} has no records; recorded protocols: {', '.join(known)}")
    ok = ok[ok["protocol"] == protocol]
    key_columns = group_by + [k for k in swept_keys(records) if k not in group_by]
    firsts = records.drop_duplicates("configuration").set_index("configuration")
    trials = records.drop_duplicates("trial_key")
    counts = pd.crosstab(trials["configuration"], trials["status"])
    rows = []
    for configuration, first in firsts.iterrows():  # one iteration per table row
        values = ok[ok["configuration"] == configuration]
        row: dict[str, Any] = {k: first.get(k) for k in key_columns}
        row["configuration"] = configuration
        row["n"] = len(values)
        for status in ("failed", "pruned"):
            row[status] = int(counts.at[configuration, status]) if status in counts else 0
        for m in [*metrics, *(c for c in COST_METRICS if c in records and c not in metrics)]:
            ci = mean_interval(values[m].to_numpy(dtype=float) if m in values else np.array([]))
            row.update({m: ci.mean, f"{m}_std": ci.std, f"{m}_n": ci.n, f"{m}_ci_low": ci.low,
                        f"{m}_ci_high": ci.high})
            gallery = f"{m}_gallery_std"
            row[gallery] = float(values[gallery].mean()) if gallery in values and len(values) else math.nan
        rows.append(row)
    run_columns = ["configuration", "replicate", *[m for m in metrics if m in ok],
                   *[c for c in ("cmc", "device", "versions", "dataset") if c in ok]]
    datasets = tuple(dict.fromkeys(records["dataset"].dropna().astype(str))) if "dataset" in records else ()
    return Summary(protocol=protocol, key_columns=key_columns, rows=pd.DataFrame(rows),
                   runs=ok[run_columns].reset_index(drop=True), metrics=tuple(metrics), datasets=datasets)


def _paired(summary: Summary, row_a: pd.Series, row_b: pd.Series, m: str):
    runs = summary.runs
    a = runs[runs["configuration"] == row_a["configuration"]][["replicate", m]]
    b = runs[runs["configuration"] == row_b["configuration"]][["replicate", m]]
    both = a.merge(b, on="replicate", suffixes=("_a", "_b"))
    return paired_difference(both[f"{m}_a"].to_numpy(float), both[f"{m}_b"].to_numpy(float))


def add_deltas(summary: Summary, baseline: str) -> Summary:
    """Deltas to the baseline row, paired by seed, with 95 % CI and p-value per metric.

    The baseline is a value of the first key column (e.g. a method name). Where other key
    columns vary, each row is compared with the baseline row that shares them.
    """
    rows = summary.rows
    first = summary.key_columns[0]
    is_base = rows[first].astype(str) == str(baseline)
    if not is_base.any():
        raise ConfigError(f"baseline {baseline!r} is not a row of the table; rows: "
                          f"{', '.join(dict.fromkeys(rows[first].astype(str)))}")
    others = summary.key_columns[1:]
    out = rows.copy()
    for i, row in rows.iterrows():
        match = rows[is_base & np.logical_and.reduce([rows[k].astype(str) == str(row[k]) for k in others] or
                                                     [np.ones(len(rows), bool)])]
        base = match.iloc[0] if len(match) else (rows[is_base].iloc[0] if is_base.sum() == 1 else None)
        if base is not None and base["configuration"] == row["configuration"]:
            base = None  # the baseline row itself has no delta
        for m in summary.metrics:
            d = _paired(summary, row, base, m) if base is not None else paired_difference([], [])
            out.loc[i, [f"{m}_delta", f"{m}_delta_ci_low", f"{m}_delta_ci_high", f"{m}_delta_p"]] = \
                [d.mean, d.low, d.high, d.p]
            out.loc[i, f"{m}_delta_n"] = d.n
            out.loc[i, f"{m}_delta_test"] = d.test
            out.loc[i, f"{m}_delta_significant"] = d.significant
    return replace(summary, rows=out, baseline=str(baseline))


def best_marks(summary: Summary, m: str) -> list[str]:
    """Per row: "best" when it is significantly better than the runner-up (paired by seed);
    otherwise "tied" for the best row and every row not significantly worse than it; "" else.
    Nothing is marked when no row shares enough seeds with the best one for any difference to be
    significant (fewer than MIN_SIGNIFICANT_PAIRS: marking every row tied would say nothing)."""
    rows = summary.rows
    marks = [""] * len(rows)
    means = rows[m].to_numpy(float)
    valid = np.flatnonzero(np.isfinite(means))
    if len(valid) < 2:
        return marks
    sign = 1.0 if metric(m).direction == "max" else -1.0
    order = valid[np.argsort(-sign * means[valid], kind="stable")]
    best = order[0]
    if rows.iloc[best]["n"] < MIN_SIGNIFICANT_PAIRS:
        return marks
    tests = {j: _paired(summary, rows.iloc[best], rows.iloc[j], m) for j in order[1:]}
    if all(t.n < MIN_SIGNIFICANT_PAIRS for t in tests.values()):
        return marks
    if tests[order[1]].significant and sign * tests[order[1]].mean > 0:
        marks[best] = "best"
        return marks
    marks[best] = "tied"
    for j, test in tests.items():
        if not (test.significant and sign * test.mean > 0):
            marks[j] = "tied"
    return marks


# --------------------------------------------------------------------------- formatting


def key_text(value: Any) -> str:
    """A configuration value as a table label: floats to 4 significant digits (sampled values)."""
    if isinstance(value, (float, np.floating)) and not isinstance(value, bool):
        return f"{float(value):.4g}"
    return str(value)


def format_number(value: float, digits: int, *, sign: bool = False) -> str:
    """Fixed-point text without "-0.00" ("-" for a missing value)."""
    if value is None or not np.isfinite(value):
        return "-"
    rounded = round(float(value), digits)
    if rounded == 0:
        rounded = 0.0
    return f"{rounded:+.{digits}f}" if sign else f"{rounded:.{digits}f}"


def format_cell(mean: float, std: float, n: int, digits: int) -> str:
    if n >= 2 and np.isfinite(std):
        return f"{format_number(mean, digits)} ± {format_number(std, digits)}"
    return format_number(mean, digits)


@dataclass(frozen=True)
class Markup:
    """How a table format writes emphasis."""

    best: str = "**{}**"
    tied: str = "{}" + TIED_MARK
    significant: str = "{}" + SIGNIFICANT_MARK


MARKDOWN = Markup()
LATEX = Markup(best="\\textbf{{{}}}", tied="{}$^\\dagger$", significant="{}$^*$")


def runs_text(row: pd.Series, *, short: bool = False) -> str:
    """Finished runs, with failed and pruned ones in brackets (`short`: a run that only failed or
    was pruned is named by that word, for narrow terminal tables)."""
    stopped = [k for k in ("failed", "pruned") if row.get(k)]
    if short and int(row["n"]) == 0 and len(stopped) == 1:
        return stopped[0]
    return f"{int(row['n'])}" + "".join(f" ({int(row[k])} {k})" for k in stopped)


def statistics_frame(summary: Summary) -> pd.DataFrame:
    """The long statistics table of one protocol: one line per (configuration, metric)."""
    lines = []
    for _, row in summary.rows.iterrows():
        for m in summary.metrics:
            info = metric(m)
            d = info.digits
            line = {k: key_text(row[k]) for k in summary.key_columns}
            line.update({"metric": info.label, "n": int(row[f"{m}_n"]), "mean": format_number(row[m], d),
                         "sd (seeds)": format_number(row[f"{m}_std"], d),
                         "95% CI": (f"[{format_number(row[f'{m}_ci_low'], d)}, {format_number(row[f'{m}_ci_high'], d)}]"
                                    if row[f"{m}_n"] >= 2 else "-"),
                         "sd (gallery)": format_number(row[f"{m}_gallery_std"], d)})
            if summary.baseline is not None:
                delta = format_number(row[f"{m}_delta"], d, sign=True)
                if row.get(f"{m}_delta_significant"):
                    delta += SIGNIFICANT_MARK
                line["Δ"] = delta
                line["Δ 95% CI"] = (f"[{format_number(row[f'{m}_delta_ci_low'], d, sign=True)}, "
                                   f"{format_number(row[f'{m}_delta_ci_high'], d, sign=True)}]"
                                   if row[f"{m}_delta_n"] >= 2 else "-")
                line["p"] = format_number(row[f"{m}_delta_p"], 3)
            lines.append(line)
    return pd.DataFrame(lines)


def summary_caption(summary: Summary) -> str:
    parts = [(f"Protocol {protocol_title(summary.protocol)} ({summary.protocol}); "
              f"datasets: {', '.join(summary.datasets) or '-'}. Mean over seeds; sd (seeds) is the spread over "
              f"seeds, sd (gallery) the mean spread over one run's gallery draws; 95% CI of the mean from the t "
              f"distribution.")]
    if summary.baseline is not None:
        parts.append(f"Baseline: {summary.baseline}. " + significance_caption())
    limit = pairs_caption(summary.rows["n"].tolist())
    if limit:
        parts.append(limit)
    parts += summary.notes
    return " ".join(parts)


def csv_frame(summary: Summary) -> pd.DataFrame:
    """Every statistic as numbers (the CSV a script reads)."""
    return summary.rows.drop(columns=["configuration"]).assign(protocol=summary.protocol)


def to_markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


_LATEX_ESCAPES = (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"),
                  ("^", r"\textasciicircum{}"), ("~", r"\textasciitilde{}"), ("<", r"$<$"), (">", r"$>$"),
                  ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("→", r"$\to$"), ("✓", r"\checkmark"),
                  (TIED_MARK, r"$^\dagger$"))


def latex_label(name: str) -> str:
    """`tab:<name>` with only the characters a LaTeX label takes safely."""
    return "tab:" + re.sub(r"[^A-Za-z0-9:.-]+", "-", name).strip("-")


def latex_escape(text: Any) -> str:
    out = str(text)
    for raw, escaped in _LATEX_ESCAPES:
        out = out.replace(raw, escaped)
    return out


def to_latex(frame: pd.DataFrame, *, caption: str | None = None, escape_cells: bool = True,
             left_columns: int = 1, environment: str = "table", label: str | None = None) -> str:
    """A booktabs table (pandas Styler) in `environment` (`table*` spans both columns of a two-column
    paper); MultiIndex columns become \\multicolumn headers; `label` becomes its \\label."""
    body = frame.copy()
    if escape_cells:
        body = body.map(latex_escape)
    if isinstance(body.columns, pd.MultiIndex):
        body.columns = pd.MultiIndex.from_tuples([tuple(latex_escape(c) for c in col) for col in body.columns])
    else:
        body.columns = [latex_escape(c) for c in body.columns]
    styler = body.style.hide(axis="index")
    fmt = "l" * left_columns + "r" * (len(frame.columns) - left_columns)
    return styler.to_latex(hrules=True, multicol_align="c", column_format=fmt, environment=environment,
                           caption=latex_escape(caption) if caption else None, label=label)
