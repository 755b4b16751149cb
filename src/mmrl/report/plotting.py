"""Figure helpers shared by the protocol modules: colours, grouped bars with their values written
on them, and writing a PNG atomically.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so no global state is shared
between reports written at the same time. Colours: our series take a strong colour each (in
series order), CLIP zero-shot is grey, published numbers take colours of their own and are
hatched, so a published bar is never mistaken for ours.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mmrl.fileio import write_bytes_atomic

OURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
PUBLISHED = ("#ff7f0e", "#f2c45a", "#b5cf6b", "#c49c94")
ZEROSHOT = "#7f7f7f"
ZEROSHOT_PUBLISHED = "#c7c7c7"
ACC_LABEL = "accuracy (%)"


def ours_color(i: int) -> str:
    return OURS[i % len(OURS)]


def series_colors(labels: list[str]) -> dict[str, str]:
    """One colour per series label, in the given order, the same in every figure of a report."""
    return {label: ours_color(i) for i, label in enumerate(dict.fromkeys(labels))}


def published_color(i: int) -> str:
    return PUBLISHED[i % len(PUBLISHED)]


@dataclass
class BarSeries:
    """One series of a grouped bar chart: a value (or None: no bar) per category."""
    label: str
    values: Sequence[float | None]
    color: str
    errors: Sequence[float | None] | None = None   # ± std over seeds
    hatch: str | None = None                       # "//" for published numbers

    @property
    def any(self) -> bool:
        return any(v is not None for v in self.values)


def new_figure(width: float, height: float):
    """A matplotlib Figure (Agg) of the given size in inches."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def grouped_bars(ax, categories: Sequence[str], series: Sequence[BarSeries], *, title: str = "",
                 ylabel: str = ACC_LABEL, legend: bool = True) -> None:
    """Bars grouped by category, one colour per series, each bar's value written above it.

    Series without any value are left out (and out of the legend); the y axis is accuracy in
    percent from 0 to 100 with room above for the values.
    """
    series = [s for s in series if s.any]
    n = max(1, len(series))
    width = 0.82 / n
    many = n * len(categories) > 14   # vertical value labels when the bars are narrow
    for j, s in enumerate(series):
        xs, ys, es = [], [], []
        for i, v in enumerate(s.values):
            if v is None:
                continue
            xs.append(i - 0.41 + (j + 0.5) * width)
            ys.append(v)
            e = s.errors[i] if s.errors is not None else None
            es.append(e or 0.0)
        ax.bar(xs, ys, width * 0.92, yerr=es if any(es) else None, color=s.color, label=s.label,
               hatch=s.hatch, edgecolor="#444444" if s.hatch else s.color, linewidth=0.6, capsize=2,
               error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
        for x, y, e in zip(xs, ys, es):
            ax.text(x, y + e + 1.5, f"{y:.1f}", ha="center", va="bottom", fontsize=6.5 if many else 8,
                    rotation=90 if many else 0, color="#222222")
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels(categories, rotation=30 if len(categories) > 3 else 0,
                       ha="right" if len(categories) > 3 else "center", fontsize=8)
    ax.set_xlim(-0.6, len(categories) - 0.4)
    ax.set_ylim(0, 118 if many else 110)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=10)
    if legend and series:
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False)


def save_png(fig, path: Path, dpi: int = 100) -> None:
    """Write the figure as a PNG (atomically: a reader never sees half a file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    write_bytes_atomic(buf.getvalue(), path)
