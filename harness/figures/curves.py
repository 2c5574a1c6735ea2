"""Training curves of a sweep as one figure: a panel per loss term, a line per method (mean over
its seeds, band of one sd), drawn by `vireid table` from the store's curves table. A method has
one colour in every panel, and the legend names every method drawn in any panel."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.figures import pyplot


def loss_curves_figure(curves: pd.DataFrame, records: pd.DataFrame, *, key: str = "method") -> Any:
    """`curves`: ResultStore.curves(); `records`: the store's records (maps trial_key -> `key`)."""
    plt = pyplot()
    from matplotlib.lines import Line2D

    groups = records.drop_duplicates("trial_key").set_index("trial_key")[key].astype(str)
    data = curves[curves["trial_key"].isin(groups.index)].assign(group=lambda d: d["trial_key"].map(groups))
    terms = [c for c in data.columns if c.startswith("loss/")]
    terms = sorted(terms, key=lambda t: (t == "loss/total", t))  # the sum last
    columns = min(4, max(len(terms), 1))
    rows = max(1, math.ceil(len(terms) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False,
                             layout="constrained")
    names = list(dict.fromkeys(groups))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(names)}  # one colour per group, every panel
    styles = {name: ("-", "--", ":", "-.")[(i // len(palette)) % 4] for i, name in enumerate(names)}
    for ax, term in zip(axes.flat, terms):
        for name in names:
            trials = data[(data["group"] == name) & data[term].notna()]
            if trials.empty:
                continue
            stats = trials.groupby("epoch")[term].agg(["mean", "std", "count"])
            ax.plot(stats.index, stats["mean"], label=name, color=colours[name], linestyle=styles[name])
            spread = stats["std"].where(stats["count"] > 1)
            if spread.notna().any():
                ax.fill_between(stats.index, stats["mean"] - spread, stats["mean"] + spread, alpha=0.15,
                                color=colours[name])
        ax.set_title(term.removeprefix("loss/"), fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(terms):]:
        ax.set_visible(False)
    drawn = [n for n in names if data.loc[data["group"] == n, terms].notna().any().any()] if terms else []
    if drawn:  # every group drawn in any panel, not only in the first one
        handles = [Line2D([], [], color=colours[n], linestyle=styles[n], label=n) for n in drawn]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(drawn), 4), fontsize=8)
    fig.suptitle(f"training losses per epoch (mean ± sd over seeds, by {key})", fontsize=10)
    return fig
