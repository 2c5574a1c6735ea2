"""Figures drawn from saved models and stored curves (matplotlib; written as PNG and PDF with
`harness.results.plots.save_figure`).

    qualitative.py  ranked lists, t-SNE embedding, distance histograms of a saved model (`vireid show`)
    curves.py       per-epoch training curves of a sweep, mean over seeds per method (`vireid table`)

Builders return matplotlib Figures, so tests inspect their content. Every figure of the harness
gets matplotlib from `pyplot()`, which sets the options of every saved file in one place: fonts
embedded in PDFs as TrueType (Type 42), which conference checkers accept, never as Type 3.
"""

from __future__ import annotations

from typing import Any

FIGURE_RC = {"pdf.fonttype": 42, "ps.fonttype": 42}
"""rcParams of every figure the harness writes: TrueType (Type 42) fonts in PDF and PS files."""


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed), FIGURE_RC applied."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams.update(FIGURE_RC)
    import matplotlib.pyplot as plt

    return plt
