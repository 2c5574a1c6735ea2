"""`vireid data check` and `vireid data split`, for every registered dataset.

check_dataset runs the dataset's own scanning code in collecting mode (its description's
`check`), so it reports every problem with the file or folder concerned instead of stopping at
the first, and opens every image with the loaders' decoder. describe_split lists the exact query
and gallery of one evaluation trial, computed by the same protocol functions the loaders use.
"""

from __future__ import annotations

from pathlib import Path

from harness.data.layout import absolute_root
from harness.data.registry import SPLIT_OPTIONS, get_dataset
from harness.data.report import MODALITY_NAMES, CheckReport
from harness.data.splits import ImageSplit
from harness.errors import InputError


def check_dataset(dataset: str, root: Path) -> CheckReport:
    """Counts per split, camera and modality, and every problem found (never raises for the tree)."""
    description = get_dataset(dataset)
    report = CheckReport(dataset=description.name, root=str(absolute_root(root)), title=description.title)
    description.check(report)
    return report


def _entries(split: ImageSplit) -> list[dict]:
    return [
        {"path": path, "id": pid, "camera": cam + 1, "modality": MODALITY_NAMES[modality]}
        for path, pid, cam, modality in zip(
            split.paths, split.pids.tolist(), split.cams.tolist(), split.modalities.tolist()
        )
    ]


def describe_split(dataset: str, root: Path, **options: object) -> dict:
    """The exact query and gallery of one evaluation trial, as the loaders define them.

    `options` are among mode, shots, trial and direction; each dataset's `split_options` says
    which it takes and their defaults (`vireid data split --help`), and one it does not take is
    an error. The lists are those evaluated: for LLCM vis2ir the trial's sampled NIR images are
    the queries and every VIS image the gallery. Entries carry the image path, the original
    identity id and the on-disk camera number (SYSU camN / LLCM camK; RegDB 1 = Visible,
    2 = Thermal).
    """
    description = get_dataset(dataset)
    unknown = set(options) - set(SPLIT_OPTIONS)
    if unknown:
        raise InputError(f"data split: unknown option(s) {sorted(unknown)}; known: {', '.join(SPLIT_OPTIONS)}")
    for option, value in options.items():
        if value is not None and option not in description.split_options:
            raise InputError(f"{description.title} has no {option} option (got {value!r})")
    given = {option: options.get(option) for option in description.split_options}
    protocol, draw, shown = description.split_protocol(Path(root), given)
    return {
        "dataset": description.name,
        "root": str(absolute_root(root)),
        "protocol": protocol.name,
        "metric_protocol": protocol.metric_protocol,
        "trial": shown,
        "query": _entries(protocol.trial_query(draw)),
        "gallery": _entries(protocol.trial_gallery(draw)),
    }

