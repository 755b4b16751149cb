"""`mmrl data verify`: is each dataset where and how a run expects it?"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .core import DataError, MissingDataError
from .images import find_bad_images
from .datasets import ALL_DATASETS, BENCHMARKS, load_dataset, locate


@dataclass
class VerifyReport:
    name: str
    status: str  # "ok", "missing" (not there at all) or "broken" (there, but a run would fail)
    named: bool  # asked for by name (a missing named dataset is an error)
    location: str = ""
    messages: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    num_classes: int = 0
    absent: list[str] = field(default_factory=list)  # images listed in the split but not on disk
    undecodable: list[str] = field(default_factory=list)  # "path: reason" (with --decode)

    @property
    def failed(self) -> bool:
        return self.status == "broken" or (self.status == "missing" and self.named)


def verify_dataset(name: str, root: str | Path | None, *, decode: bool = False, named: bool = True,
                   cache_dir: str | Path | None = None, split_seed: int = 1) -> VerifyReport:
    """Check one dataset; never raises for dataset problems (they go into the report)."""
    try:
        loc = locate(name, root)
    except (DataError, MissingDataError) as e:
        return VerifyReport(name, "missing" if isinstance(e, MissingDataError) else "broken", named, messages=[str(e)])
    rep = VerifyReport(loc.name, "ok", named, location=str(loc.dataset_dir))
    bench = BENCHMARKS.get(loc.name)
    if bench is not None and not loc.dataset_dir.is_dir():
        rep.status = "missing"
        rep.messages.append(f"not found: {loc.dataset_dir}/ (expected layout under the root: {bench.layout})")
        return rep
    if bench is not None and bench.split_file and not (loc.dataset_dir / bench.split_file).is_file():
        rep.messages.append(f"{loc.dataset_dir / bench.split_file} is missing: the split is built from the raw "
                            "data, so results will not match published numbers image for image")
    try:
        splits = load_dataset(name, root, cache_dir=cache_dir, split_seed=split_seed)
    except MissingDataError as e:
        rep.status = "missing" if bench is None else "broken"  # user data: its path is not there
        rep.messages.append(str(e))
        return rep
    except DataError as e:
        rep.status = "broken"
        rep.messages.append(str(e))
        return rep
    rep.sizes = {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    rep.num_classes = splits.num_classes
    if not splits.image_dir.is_dir():
        rep.messages.append(f"image folder missing: {splits.image_dir}/")
    items = splits.train + splits.val + splits.test
    if not splits.test:
        rep.status = "broken"
        rep.messages.append("the test split is empty")
    rep.absent = list(dict.fromkeys(d.impath for d in items if not os.path.isfile(d.impath)))
    if rep.absent:
        rep.status = "broken"
        rep.messages.append(f"{len(rep.absent)} image(s) listed but absent")
    if decode:
        absent = set(rep.absent)
        present = [d for d in items if d.impath not in absent]
        rep.undecodable = [f"{p}: {r}" for p, r in find_bad_images(present, decode=True)]
        if rep.undecodable:
            rep.status = "broken"
            rep.messages.append(f"{len(rep.undecodable)} image(s) fail to decode")
    return rep


def verify(names: list[str] | None, root: str | Path | None, *, decode: bool = False,
           cache_dir: str | Path | None = None, split_seed: int = 1) -> list[VerifyReport]:
    """Reports for the named datasets, or for all 15 benchmarks (then a missing one is not an error)."""
    if names:
        return [verify_dataset(n, root, decode=decode, named=True, cache_dir=cache_dir, split_seed=split_seed)
                for n in names]
    return [verify_dataset(n, root, decode=decode, named=False, cache_dir=cache_dir, split_seed=split_seed)
            for n in ALL_DATASETS]


def format_report(rep: VerifyReport, max_list: int = 10) -> str:
    head = f"[{rep.status}] {rep.name}"
    if rep.location:
        head += f"  ({rep.location})"
    lines = [head]
    if rep.sizes:
        lines.append(f"    {rep.num_classes} classes; train {rep.sizes['train']}, val {rep.sizes['val']}, "
                     f"test {rep.sizes['test']}")
    lines += [f"    {m}" for m in rep.messages]
    for title, paths in (("absent", rep.absent), ("undecodable", rep.undecodable)):
        lines += [f"      {title}: {p}" for p in paths[:max_list]]
        if len(paths) > max_list:
            lines.append(f"      ... and {len(paths) - max_list} more {title}")
    return "\n".join(lines)
