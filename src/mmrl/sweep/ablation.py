"""Ablations: ``mmrl reproduce PROTOCOL ... --vary KEY=V1,V2 [--vary KEY2=...]``.

Each ``--vary`` names one config key (any key ``--set`` accepts, except those that name the run or
its grid, :data:`mmrl.config.NOT_VARIABLE`) and its values; several make the full product. A
*point* is one combination, e.g. ``(("method.first_rep_block", 3), ("method.n_rep_tokens", 1))``
(keys in alphabetical order, values as the config types them). Every point is the protocol's whole
grid of ordinary runs, placed under ``OUTPUT/ablation/<point>/`` (:func:`point_dir`) in the sweep
layout; each run gets ``--set KEY=VALUE`` for the point and ``--set vary=[KEY, ...]``, so its
config.yaml and run.json record which values it has. A plain sweep (no ``--vary``) keeps its layout.

The *default* of a varied key is the value it has without ``--vary``: the preset, the per-dataset
value (e.g. lambda), and a ``--set`` of the same key if given. :func:`check_grid` resolves the config
of every (point, dataset) before any work and returns the defaults (the report marks them).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from mmrl.backbone_spec import tower_depths
from mmrl.config import NOT_VARIABLE, ConfigError, parse_override, resolve_config, typed_value, validate_vary
from mmrl.errors import shown

Point = tuple[tuple[str, Any], ...]
# keys every run of a sweep gets from the sweep itself (its arguments, grid and layout): a fixed --set of
# one would change the run without the sweep knowing
SWEPT = ("method.name", "protocol", "data.dataset", "seed", "data.shots", "output", "vary")


@dataclass(frozen=True)
class Vary:
    """One ``--vary KEY=V1,V2,...``: a config key and its values (typed, in grid order)."""
    key: str
    values: tuple[Any, ...]


def split_values(text: str) -> list[str]:
    """``"1,2,[0.9, 0.99]"`` -> ``["1", "2", "[0.9, 0.99]"]``: commas inside brackets or quotes
    belong to the value."""
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def _sort_key(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, json.dumps(v))


def parse_vary(items: Sequence[str]) -> tuple[Vary, ...]:
    """The ``--vary`` items, checked (a config key that may vary, typed values, no repeats), keys in
    alphabetical order, numeric values ascending (others as given): the same grid, and the same
    shards, whatever the order of the arguments. Raises ValueError naming the item."""
    varies: dict[str, Vary] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ValueError(f"--vary {shown(item)}: expected KEY=V1,V2,... (e.g. method.n_rep_tokens=1,3,5)")
        if key in varies:
            raise ValueError(f"--vary {key}: given twice; list all its values in one --vary")
        try:
            validate_vary([key], f"--vary {key}")
            values = [typed_value(key, parse_override(f"{key}={v}")[1], f"--vary {key}") for v in split_values(raw)]
        except ConfigError as e:
            raise ValueError(str(e)) from None
        if any(v == "" for v in values):
            raise ValueError(f"--vary {shown(item)}: an empty value (two commas in a row?)")
        seen = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(seen)) != len(seen):
            dup = next(s for s in seen if seen.count(s) > 1)
            raise ValueError(f"--vary {key}: value {dup} given twice")
        if len(values) < 2:
            raise ValueError(f"--vary {shown(item)}: give at least two values to compare (one value: use --set {key}=...)")
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            values = sorted(values, key=_sort_key)
        varies[key] = Vary(key, tuple(values))
    return tuple(varies[k] for k in sorted(varies))


def points(varies: Sequence[Vary]) -> list[Point]:
    """Every combination of the values (the product grid), in grid order (the last key fastest)."""
    keys = [v.key for v in varies]
    return [tuple(zip(keys, combo)) for combo in itertools.product(*(v.values for v in varies))]


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def point_label(point: Point) -> str:
    """``method.first_rep_block=3, method.n_rep_tokens=1`` (for messages and logs)."""
    return ", ".join(f"{k}={_text(v)}" for k, v in point)


def point_dir(point: Point) -> str:
    """The point's folder name under ``OUTPUT/ablation/``: ``method.first_rep_block=3,method.n_rep_tokens=1``.

    Readable and unique: characters a file name should not hold become ``_``, and then (or when the
    name is long) a hash of the exact values is appended, so two points never share a folder.
    """
    name = ",".join(f"{k}={_text(v)}" for k, v in point)
    safe = re.sub(r"[^A-Za-z0-9._+=,\-]", "_", name)
    if safe != name or len(safe) > 120:
        digest = hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:8]
        safe = f"{safe[:100]}-{digest}"
    return safe


def point_overrides(point: Point) -> list[tuple[str, Any]]:
    """The config overrides of a point: its values and the ``vary`` key listing them."""
    return [*point, ("vary", [k for k, _ in point])]


def point_sets(point: Point) -> list[str]:
    """The point as ``--set`` items for ``mmrl train`` (JSON values, which YAML reads back exactly)."""
    return [f"{k}={json.dumps(v)}" for k, v in point_overrides(point)]


def check_grid(protocol: str, method: str, datasets: Sequence[str], point_list: Sequence[Point],
               sets: Sequence[str] = (), backbone: str | None = None, shots: int = 16
               ) -> dict[str, dict[str, Any]]:
    """Resolve the config of every (point, dataset) as `mmrl train` will, before any run starts, and check
    that the backbone can take it (the first token block J within both towers, when the backbone's depth
    can be told without loading it, :func:`mmrl.backbone_spec.tower_depths`).

    Returns the defaults of the varied keys per dataset: ``{dataset: {key: value}}`` (empty without
    points). Raises ValueError naming the grid point, the dataset and what is wrong.
    """
    flags = {"backbone": backbone, "data.shots": shots}
    for item in sets:
        key = parse_override(item)[0] if isinstance(item, str) else item[0]
        if key in SWEPT:
            raise ValueError(f"--set {key}: the sweep sets it for every run ({NOT_VARIABLE[key]})")
    keys = [k for k, _ in point_list[0]] if point_list else []
    defaults: dict[str, dict[str, Any]] = {}
    depths: dict[str, tuple[int, int] | None] = {}
    for d in datasets:
        try:
            base = resolve_config(method, protocol, d, overrides=list(sets), flags=flags)
        except ConfigError as e:
            raise ValueError(f"{d}: {e}") from None
        defaults[d] = {k: base.value(k) for k in keys}
        for point in point_list or [()]:
            where = f"grid point {point_label(point)} on {d}" if point else d
            try:  # a plain sweep's config is the one resolved above
                cfg = resolve_config(method, protocol, d, overrides=[*sets, *point_overrides(point)],
                                     flags=flags) if point else base
            except ConfigError as e:
                raise ValueError(f"{where}: {e}") from None
            if cfg.backbone not in depths:
                depths[cfg.backbone] = tower_depths(cfg.backbone)
            if depths[cfg.backbone] is not None:
                try:
                    cfg.method.validate(*depths[cfg.backbone])
                except ValueError as e:
                    raise ValueError(f"{where} with backbone {cfg.backbone}: {e}") from None
    return defaults
