"""Figures drawn from saved models and stored curves (matplotlib; written as PNG and PDF with
`harness.results.plots.save_figure`).

    qualitative.py  ranked lists, t-SNE embedding, distance histograms of a saved model (`vireid show`)
    curves.py       per-epoch training curves of a sweep, mean over seeds per method (`vireid table`)

Builders return matplotlib Figures, so tests inspect their content.
"""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
