"""The published numbers of ``mmrl/presets/published.yaml`` and how the report looks them up.

Lookups take the method's display name ("MMRL", "CLIP zero-shot") and return None where the
file has no number, so the report prints a dash rather than a number nobody published.
"""
from __future__ import annotations

from importlib import resources

from mmrl.config import parse_yaml

PUBLISHED_FILE = "presets/published.yaml"


def load_published() -> dict:
    """The published numbers (``mmrl/presets/published.yaml``) as a mapping."""
    text = resources.files("mmrl").joinpath(PUBLISHED_FILE).read_text(encoding="utf-8")
    data = parse_yaml(text, f"mmrl/{PUBLISHED_FILE}") or {}
    if not isinstance(data, dict):
        raise ValueError(f"mmrl/{PUBLISHED_FILE}: expected a mapping at the top, got {type(data).__name__}")
    return data


def source_of(published: dict, key: str | None) -> str:
    """The citation text of a source key (the key itself when it is not described)."""
    return (published.get("sources") or {}).get(key, key or "")


def b2n_average(published: dict, method: str) -> dict | None:
    """Published base-to-novel 11-dataset average {base, novel, hm, source} of ``method``, or None."""
    for row in ((published.get("base2novel") or {}).get("average") or []):
        if row.get("method") == method:
            return row
    return None


def b2n_average_rows(published: dict) -> list[dict]:
    """Every published base-to-novel average row, in the file's order."""
    return list((published.get("base2novel") or {}).get("average") or [])


def b2n_dataset(published: dict, method: str, dataset: str) -> dict | None:
    """Published base-to-novel {base, novel, hm} of ``method`` on ``dataset``, or None."""
    rows = ((published.get("base2novel") or {}).get("datasets") or {}).get(method) or {}
    row = rows.get(dataset)
    return row if isinstance(row, dict) else None


def b2n_dataset_source(published: dict, method: str) -> str | None:
    rows = ((published.get("base2novel") or {}).get("datasets") or {}).get(method) or {}
    return rows.get("source")


def cross_target(published: dict, method: str, target: str) -> float | None:
    """Published cross-dataset / DG accuracy of ``method`` on ``target`` (ImageNet = the source), or None."""
    v = (((published.get("crossdataset") or {}).get("targets") or {}).get(method) or {}).get(target)
    return float(v) if isinstance(v, (int, float)) else None


def cross_average(published: dict, method: str, group: str) -> float | None:
    """Published average of ``method`` over the cross-dataset targets (group "crossdataset") or the
    ImageNet variants (group "dg"), or None."""
    v = (((published.get("crossdataset") or {}).get("average") or {}).get(method) or {}).get(group)
    return float(v) if isinstance(v, (int, float)) else None


def cross_source(published: dict, method: str) -> str | None:
    return (((published.get("crossdataset") or {}).get("targets") or {}).get(method) or {}).get("source")
