"""Published numbers (percent) to print beside measured rows.

`harness/published_results.yaml` holds what papers report; an entry is addressed as
`paper.setting` (e.g. `mclnet.sysu_all`). Figures under a paper's `unverified` block are
never shown as published numbers. A setting may carry `source: <label>` (where its numbers come
from, e.g. a README's updated version of a paper's table); tables print it beside the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.config import load_yaml
from harness.errors import InputError
from harness.results.metrics import ACCURACY_METRICS
from harness.results.paper import ANY_PROTOCOL, PUBLISHED_SOURCE

BUILTIN = Path(__file__).with_name("published_results.yaml")


def load_published(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path and path != "builtin" else BUILTIN
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping paper -> setting -> metrics")
    return data


def lookup(data: dict[str, Any], entry: str, *, source: str = "published results") -> dict[str, Any]:
    """The metrics of `paper.setting` as floats, and its PUBLISHED_SOURCE label when it names one."""
    paper, _, setting = entry.partition(".")
    if paper not in data:
        raise InputError(f"{source}: no paper {paper!r}; known: {', '.join(data)}")
    settings = {k: v for k, v in data[paper].items() if isinstance(v, dict) and k != "unverified"}
    if setting not in settings:
        raise InputError(f"{source}: {paper!r} has no setting {setting!r}; known: {', '.join(settings)}")
    numbers = dict(settings[setting])
    label = numbers.pop(PUBLISHED_SOURCE, None)
    unknown = [k for k in numbers if k not in ACCURACY_METRICS]
    if unknown:
        raise InputError(f"{source}: {entry}: unknown metric(s) {', '.join(unknown)}; "
                         f"accepted: {', '.join(ACCURACY_METRICS)} (and {PUBLISHED_SOURCE}: a label)")
    out: dict[str, Any] = {k: float(v) for k, v in numbers.items()}
    if label is not None:
        out[PUBLISHED_SOURCE] = str(label)
    return out


def published_rows(spec: dict[str, Any], protocol: str | None = None) -> dict[str, dict[str, Any]]:
    """`{file: PATH|builtin, rows: {row: "paper.setting"}}` -> numbers per row.

    A row's entry may also be a mapping protocol -> "paper.setting", for tables of several
    protocols.
    """
    data = load_published(spec.get("file"))
    out = {}
    for row, entry in (spec.get("rows") or {}).items():
        if isinstance(entry, dict):
            entry = entry.get(protocol)
            if entry is None:
                continue
        out[row] = lookup(data, entry, source=str(spec.get("file") or BUILTIN))
    return out


def published_by_protocol(spec: dict[str, Any], protocols: list[str] | None) -> dict[str, dict[str, dict[str, Any]]]:
    """protocol -> row -> published numbers, for a table of `protocols` (None: every recorded one).

    A row given as one plain "paper.setting" entry lands under ANY_PROTOCOL and is shown only
    when the table has a single protocol.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    data = load_published(spec.get("file"))
    source = str(spec.get("file") or BUILTIN)
    for row, entry in (spec.get("rows") or {}).items():
        per_protocol = entry if isinstance(entry, dict) else {ANY_PROTOCOL: entry}
        for protocol, setting in per_protocol.items():
            if protocols is not None and protocol != ANY_PROTOCOL and protocol not in protocols:
                continue
            out.setdefault(protocol, {})[row] = lookup(data, setting, source=source)
    return out
