"""Statistics over seeds: mean and the population standard deviation.

The population std (divide by n) is numpy's default and what CoOp's parse_test_res.py reports.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable


@dataclass
class Stat:
    """Mean and population std of ``values`` (one per seed), n = len(values) >= 1."""
    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def std(self) -> float:
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / len(self.values))

    def as_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}


def stat(values: Iterable[float]) -> Stat | None:
    """A Stat of the values, or None when there are none."""
    v = [float(x) for x in values]
    return Stat(v) if v else None


def stat_dict(values: Iterable[float]) -> dict | None:
    """``stat(values).as_dict()``, or None when there are none (the report.json form)."""
    s = stat(values)
    return s.as_dict() if s else None


def mean(values: Iterable[float]) -> float | None:
    """Plain mean, or None when there are none."""
    v = [float(x) for x in values]
    return sum(v) / len(v) if v else None
