"""The protocols the report knows, in report order: the ONE dispatch table (name -> module).

Every protocol module provides the same interface (:class:`ProtocolModule`); the rest of the
report loops over this table and never asks which protocol it holds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from mmrl.report import base2novel, crossdataset, fewshot
from mmrl.report.document import Block
from mmrl.report.group import Series
from mmrl.report.scan import Run


class ProtocolModule(Protocol):
    NAME: str             # the protocol's name in run.json and on the command line
    TITLE: str            # the section's heading
    FIGURE: str           # the figure's file name in the report folder
    SHOTS_IN_TABLE: bool  # shot counts are columns/blocks of the table (else a series each)

    def required_evals(self, series: Series, run: Run) -> list[str]:
        """Eval keys ("<dataset>-<subsample>") a finished run of the series must have."""

    def summarise(self, series: Series) -> dict:
        """The series' numbers (report.json ``methods[<key>]``, besides label/method/grid/counts)."""

    def ablation_row(self, entry: dict) -> dict:
        """A ``summarise()`` entry condensed to one row of an ablation (or decoupled-inference) table:
        ``{"columns": {name: value | None}, "metric": <the name of the column that is the study's
        metric>, "metric_label": <the metric in words, for axes>, "value": <its value> | None, "per_dataset": {dataset: metric}, "datasets": [averaged],
        "note": <how the row is computed, for the caption>}``; averages as the protocol's table computes
        them, over :func:`mmrl.report.group.averaged_datasets`."""

    def zeroshot(self, zs: dict[str, list[float]], methods: dict) -> dict | None:
        """The zero-shot numbers that go beside the section's series, or None."""

    def document(self, sec: dict, published: dict, figure: str | None) -> list[Block]:
        """The section's headings, captions, tables and figure."""

    def to_csv(self, sec: dict, published: dict) -> str:
        """The section's table as CSV (<protocol>.csv)."""

    def plot(self, sec: dict, published: dict, path: Path, colors: dict[str, str]) -> bool:
        """Draw the section's figure into ``path`` (``colors``: series label -> colour, the same in every
        figure); False (nothing written) when there is nothing to draw."""


PROTOCOLS: dict[str, ProtocolModule] = {m.NAME: m for m in (base2novel, fewshot, crossdataset)}
