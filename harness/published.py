"""Published numbers (percent) to print beside measured rows.

`harness/published_results.yaml` holds what papers report; an entry is addressed as
`paper.setting` (e.g. `mclnet.sysu_all`). Figures under a paper's `unverified` block are
never shown as published numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError

BUILTIN = Path(__file__).with_name("published_results.yaml")


def load_published(path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path) if path and path != "builtin" else BUILTIN
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read published results ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path}: malformed YAML ({exc})") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected a mapping paper -> setting -> metrics")
    return data


def lookup(data: dict[str, Any], entry: str, *, source: str = "published results") -> dict[str, float]:
    paper, _, setting = entry.partition(".")
    if paper not in data:
        raise HarnessError(f"{source}: no paper {paper!r}; known: {', '.join(data)}")
    settings = {k: v for k, v in data[paper].items() if isinstance(v, dict) and k != "unverified"}
    if setting not in settings:
        raise HarnessError(f"{source}: {paper!r} has no setting {setting!r}; known: {', '.join(settings)}")
    return {k: float(v) for k, v in settings[setting].items()}


def published_rows(spec: dict[str, Any], protocol: str | None = None) -> dict[str, dict[str, float]]:
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
