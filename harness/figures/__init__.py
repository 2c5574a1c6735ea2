"""Figures drawn from saved models and stored records (matplotlib, written as PNG and PDF).

    qualitative.py  ranked lists, t-SNE embedding, distance histograms of a saved model (`vireid show`)
    curves.py       per-epoch training curves of a sweep, mean over seeds per method (`vireid table`)

Builders return matplotlib Figures (tests inspect them); `save_figure` writes one atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from harness.atomic import atomic_path

FIGURE_FORMATS = ("png", "pdf")


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, stem: str | Path, formats: Sequence[str] = FIGURE_FORMATS) -> list[Path]:
    """Write `fig` as `stem.png`, `stem.pdf` (atomically); close it; return the paths."""
    written = []
    for fmt in formats:
        target = Path(f"{stem}.{fmt}")
        with atomic_path(target) as temporary:
            fig.savefig(temporary, format=fmt, dpi=120, bbox_inches="tight")
        written.append(target)
    pyplot().close(fig)
    return written
