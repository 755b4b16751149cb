"""Figure helpers shared by the protocol modules: colours, grouped bars with their values written
on them, and writing a PNG atomically.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so no global state is shared
between reports written at the same time. Colours: our series take a strong colour each (in
series order), CLIP zero-shot is grey, published numbers take colours of their own and are
hatched, so a published bar is never mistaken for ours. Ablation figures: one colour per dataset
(:func:`dataset_colors`) and a thick black average (:func:`category_lines`), heat maps with their
values written in the cells (:func:`annotated_heatmap`).
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


def dataset_colors(names: Sequence[str]) -> dict[str, str]:
    """One distinct colour per dataset: matplotlib's tab20, its ten strong colours first (tab10's), then
    their light partners, so up to ten datasets never share a hue."""
    import matplotlib
    from matplotlib.colors import to_hex

    cmap = matplotlib.colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {n: to_hex(cmap(order[i % 20])) for i, n in enumerate(names)}


@dataclass
class Line:
    """One line over categories: a value (or None: a gap) per category."""
    label: str
    values: Sequence[float | None]
    color: str
    width: float = 1.2
    annotate: bool = False   # write each value (1 decimal) above its point
    partial: Sequence[bool] | None = None  # per category: the value lacks some runs (annotated with '*')
    spread: Sequence[tuple[float, float] | None] | None = None  # per category: (low, high) over seeds, drawn


def category_lines(ax, categories: Sequence[str], lines: Sequence[Line], *, xlabel: str, ylabel: str,
                   mark: int | None = None, mark_label: str = "default", min_span: float = 0.0) -> None:
    """Lines over evenly spaced categorical x ticks (labelled ``categories``); ``mark``: the index of a
    category marked by a vertical dashed line (legend: ``mark_label``). A line's ``spread`` is drawn as
    a grey band with whiskers. Missing values leave gaps; the y axis spans at least ``min_span``
    (centred on the data); the legend sits outside, right of the axes."""
    xs = list(range(len(categories)))
    for ln in lines:
        if ln.spread is not None and any(ln.spread):
            lo = [float("nan") if s is None else s[0] for s in ln.spread]
            hi = [float("nan") if s is None else s[1] for s in ln.spread]
            ax.fill_between(xs, lo, hi, color="#999999", alpha=0.3, lw=0, zorder=1, label=f"{ln.label}: seed range")
            ax.vlines(xs, lo, hi, color=ln.color, lw=1.0, zorder=2)
    for ln in lines:
        ys = [float("nan") if v is None else v for v in ln.values]
        ax.plot(xs, ys, marker="o", ms=3.5 + ln.width, lw=ln.width, color=ln.color, label=ln.label,
                zorder=3 if ln.annotate else 2)
        if ln.annotate:
            for i, (x, v) in enumerate(zip(xs, ln.values)):
                if v is not None:
                    star = "*" if ln.partial is not None and ln.partial[i] else ""
                    ax.annotate(f"{v:.1f}{star}", (x, v), textcoords="offset points", xytext=(0, 7), ha="center",
                                fontsize=8, fontweight="bold", color=ln.color, zorder=4)
    if mark is not None:
        ax.axvline(mark, color="#555555", ls="--", lw=1.0, label=mark_label, zorder=1)
    ax.set_xticks(xs, list(categories))
    ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.margins(y=0.12)
    lo, hi = ax.get_ylim()
    if hi - lo < min_span:  # a small difference keeps a small height
        mid = (lo + hi) / 2
        ax.set_ylim(mid - min_span / 2, mid + min_span / 2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def annotated_heatmap(fig, ax, matrix: Sequence[Sequence[float | None]], rows: Sequence[str], cols: Sequence[str],
                      *, ylabel: str, xlabel: str, cbar_label: str, mark: tuple[int, int] | None = None,
                      partial: Sequence[Sequence[bool]] | None = None) -> None:
    """A heat map of ``matrix`` (rows x cols; None: a grey cell reading "missing"), each cell's value
    written in it with one decimal ('*' where ``partial``: the value lacks some runs), a colour bar
    labelled ``cbar_label``; ``mark``: (row, col) of a cell outlined (the default)."""
    import matplotlib
    from matplotlib.patches import Rectangle

    data = [[float("nan") if v is None else v for v in row] for row in matrix]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    present = [v for row in matrix for v in row if v is not None]
    lo, hi = (min(present), max(present)) if present else (0.0, 1.0)
    if hi - lo < 1e-9:  # one value (or all equal): a visible colour, not the end of the map
        lo, hi = lo - 1.0, hi + 1.0
    im = ax.imshow(data, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v is None:
                ax.text(j, i, "missing", ha="center", va="center", fontsize=8, color="#666666")
            else:
                light = (v - lo) / (hi - lo) > 0.6  # viridis is light at the top end: dark text there
                star = "*" if partial is not None and partial[i][j] else ""
                ax.text(j, i, f"{v:.1f}{star}", ha="center", va="center", fontsize=10,
                        color="#111111" if light else "white")
    if mark is not None:
        ax.add_patch(Rectangle((mark[1] - 0.5, mark[0] - 0.5), 1, 1, fill=False, ec="#d62728", lw=2.5))
    ax.set_xticks(range(len(cols)), list(cols))
    ax.set_yticks(range(len(rows)), list(rows))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    cbar = fig.colorbar(im, ax=ax)
    cbar.set_label(cbar_label)


def save_png(fig, path: Path, dpi: int = 100) -> None:
    """Write the figure as a PNG (atomically: a reader never sees half a file).

    Every text is drawn as it is: names from files (datasets, methods, values) may hold ``$``, which
    matplotlib would otherwise parse as mathtext -- and fail on (``$\\x$``), losing the report."""
    import matplotlib
    from matplotlib.text import Text

    for t in fig.findobj(Text):
        t.set_parse_math(False)
    buf = io.BytesIO()
    with matplotlib.rc_context({"text.parse_math": False}):  # texts made while drawing (tick labels)
        fig.savefig(buf, format="png", dpi=dpi)
    write_bytes_atomic(buf.getvalue(), path)
