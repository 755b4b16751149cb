"""User data: `folder:PATH`, `manifest:FILE` and `dataset:PATH` (a folder with `dataset.json`).

- `folder:PATH`: PATH holds `<class name>/<image>` (class name = folder
  name, kept as is); images in sub-folders of a class folder, at any depth,
  belong to that class (as torchvision's ImageFolder). If PATH contains a
  `dataset.json` it is read as the `dataset:` form instead.
- `manifest:FILE.csv` (header with `path,label`, optional `split`) or
  `manifest:FILE.json` (list of {"path", "label"[, "split"]}); paths relative
  to the manifest's folder, label = class name.
- `dataset:PATH`: PATH is a folder with `dataset.json` (or that file):
  {"name": str, "template": str, "image_dir": "images", "split_file":
  "split.json"[, "classnames": [...]]}, paths relative to that folder. The
  split file has the split-file format; without "split_file" the image
  folder is read like `folder:`.

Labels are indices in the sorted class names (Python string order). When no
split is given, each image's part (train/val/test, 50/20/30 per class) follows
from a hash of the split seed and its relative path (`splits.split_groups_stable`),
so adding or removing images never moves the others (except in classes of a few
images, which keep at least one image in each part).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from .core import (
    DEFAULT_TEMPLATE,
    DataError,
    Datum,
    Located,
    MissingDataError,
    check_relpath,
    check_template,
    list_dirs,
    list_images_recursive,
    make_datum,
    read_json,
    require_dir,
)
from .splits import read_split_file, save_built_split, split_groups_stable

USER_PREFIXES = ("folder:", "manifest:", "dataset:")
STABLE_HOW = "50/20/30 per class from a hash of split seed {seed} and each image's path"


def is_user_spec(name: str) -> bool:
    return name.lower().startswith(USER_PREFIXES)


def _candidates(path_text: str, root: Path | None) -> list[Path]:
    """Where a user path may be: as given if absolute, else relative to the working directory, then to `root`."""
    p = Path(path_text).expanduser()
    if p.is_absolute():
        return [p]
    return [p.absolute()] + ([(root / p).absolute()] if root is not None else [])


def _resolve(spec: str, path_text: str, root: Path | None) -> Path:
    """The first existing candidate of :func:`_candidates`; MissingDataError naming every place searched."""
    places = _candidates(path_text, root)
    for p in places:
        if p.exists():
            return p
    where = " and ".join(str(p) for p in places)
    hint = "" if root is not None or Path(path_text).expanduser().is_absolute() else \
        " (a relative path is also looked for under --root)"
    raise MissingDataError(f"--dataset {spec!r}: {path_text} not found; looked in {where}{hint}")


def _inside(base: Path, rel: str, source: str) -> Path:
    return base / check_relpath(rel, source)


def locate_user(spec: str, root: Path | None, template: str | None) -> Located:
    prefix, _, rest = spec.partition(":")
    prefix = prefix.lower()
    if not rest:
        raise DataError(f"--dataset {spec!r}: expected {prefix}:PATH")
    path = _resolve(spec, rest, root)
    if prefix == "manifest":
        return _locate_manifest(path, template)
    if prefix == "dataset" and path.name == "dataset.json":
        path = path.parent
    if (path / "dataset.json").is_file():
        return _locate_dataset_json(path, template)
    if prefix == "dataset":
        raise MissingDataError(f"--dataset {spec!r}: no dataset.json in {path}")
    return _locate_folder(path, template)


# --------------------------------------------------------------------------- folder:

def _folder_groups(image_dir: Path) -> tuple[list[tuple[int, str, list[str]]], list[str]]:
    require_dir(image_dir, "image folder")
    classes = list_dirs(image_dir)
    if not classes:
        raise DataError(f"{image_dir}: no class folders (expected {image_dir}/<class name>/<image>)")
    groups = [(y, c, [f"{c}/{f}" for f in list_images_recursive(image_dir / c)]) for y, c in enumerate(classes)]
    return groups, classes


def _locate_folder(path: Path, template: str | None) -> Located:
    name = f"folder:{path.name}"

    def read(cache_dir: Path, split_seed: int):
        groups, classes = _folder_groups(path)
        source = f"{name} ({path})"
        train, val, test = split_groups_stable(groups, path, split_seed, source)
        save_built_split(train, val, test, name=name, dataset_dir=path, filename=f"split-seed{split_seed}.json",
                         cache_dir=cache_dir, how=STABLE_HOW.format(seed=split_seed), level=logging.INFO)
        return train, val, test, classes

    return Located(name, path, path, check_template(template or DEFAULT_TEMPLATE, name), False, read)


# --------------------------------------------------------------------------- manifest:

def _manifest_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        if not path.is_file():
            raise MissingDataError(f"missing manifest: {path}")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [h.strip().lower() for h in (reader.fieldnames or [])]
            if "path" not in fields or "label" not in fields:
                raise DataError(f"{path}: a CSV manifest needs a header with columns 'path,label' "
                                f"(optional 'split'); found {reader.fieldnames}")
            return [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    if suffix == ".json":
        rows = read_json(path, "manifest")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataError(f"{path}: a JSON manifest is a list of {{\"path\": ..., \"label\": ...}} objects")
        return rows
    raise DataError(f"manifest {path}: expected a .csv or .json file")


def _locate_manifest(path: Path, template: str | None) -> Located:
    name = f"manifest:{path.stem}"
    base = path.parent

    def read(cache_dir: Path, split_seed: int):
        rows = _manifest_rows(path)
        if not rows:
            raise DataError(f"{path}: the manifest lists no images")
        entries = []
        for i, r in enumerate(rows):
            src = f"{path}: entry {i}"
            p, lab, sp = r.get("path"), r.get("label"), r.get("split")
            if not isinstance(p, str) or not isinstance(lab, str) or not p or not lab:
                raise DataError(f"{src} = {r!r}; expected non-empty string 'path' and 'label' (a class name)")
            if sp not in (None, "") and (not isinstance(sp, str) or sp.lower() not in ("train", "val", "test")):
                raise DataError(f"{src}: split {sp!r}; expected train, val or test")
            entries.append((check_relpath(p, src), lab, sp.lower() if sp else None))
        classes = sorted({lab for _, lab, _ in entries})
        cid = {c: y for y, c in enumerate(classes)}
        given = [sp is not None for _, _, sp in entries]
        if any(given) and not all(given):
            raise DataError(f"{path}: either every entry has a 'split' or none has")
        if all(given):  # the user's own split, in manifest order
            out: dict[str, list[Datum]] = {"train": [], "val": [], "test": []}
            for i, (p, lab, sp) in enumerate(entries):
                out[sp].append(make_datum(base, p, cid[lab], lab, f"{path}: entry {i}"))
            return out["train"], out["val"], out["test"], classes
        seen: set[str] = set()
        for p, _, _ in entries:
            if p in seen:
                raise DataError(f"{path}: image {p!r} is listed twice")
            seen.add(p)
        groups = [(cid[c], c, sorted(p for p, lab, _ in entries if lab == c)) for c in classes]
        train, val, test = split_groups_stable(groups, base, split_seed, f"{name} ({path})")
        save_built_split(train, val, test, name=name, dataset_dir=path, filename=f"split-seed{split_seed}.json",
                         cache_dir=cache_dir, how=STABLE_HOW.format(seed=split_seed), level=logging.INFO)
        return train, val, test, classes

    return Located(name, base, base, check_template(template or DEFAULT_TEMPLATE, name), False, read)


# --------------------------------------------------------------------------- dataset.json

def _locate_dataset_json(path: Path, template: str | None) -> Located:
    cfg_path = path / "dataset.json"
    cfg = read_json(cfg_path, "dataset description")
    if not isinstance(cfg, dict):
        raise DataError(f"{cfg_path}: expected an object with keys name, template, image_dir, split_file")
    allowed = {"name", "template", "image_dir", "split_file", "classnames"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise DataError(f"{cfg_path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    for key in ("name", "template", "image_dir", "split_file"):
        if key in cfg and not isinstance(cfg[key], str):
            raise DataError(f"{cfg_path}: '{key}' must be a string, got {cfg[key]!r}")
    name = cfg.get("name") or path.name
    image_dir = _inside(path, cfg.get("image_dir", "images"), f"{cfg_path}: image_dir")
    tmpl = check_template(template or cfg.get("template") or DEFAULT_TEMPLATE, str(cfg_path))
    split_rel = cfg.get("split_file")
    split_path = _inside(path, split_rel, f"{cfg_path}: split_file") if split_rel else None
    given_names = cfg.get("classnames")
    if given_names is not None and (not isinstance(given_names, list)
                                    or not all(isinstance(c, str) for c in given_names)):
        raise DataError(f"{cfg_path}: 'classnames' must be a list of strings")

    def read(cache_dir: Path, split_seed: int):
        if split_path is None:
            groups, classes = _folder_groups(image_dir)
            train, val, test = split_groups_stable(groups, image_dir, split_seed, f"{name} ({image_dir})")
            save_built_split(train, val, test, name=name, dataset_dir=path, filename=f"split-seed{split_seed}.json",
                             cache_dir=cache_dir, how=STABLE_HOW.format(seed=split_seed), level=logging.INFO)
            return train, val, test, given_names or classes
        train, val, test = read_split_file(split_path, image_dir)
        return train, val, test, given_names

    return Located(name, path, image_dir, tmpl, False, read)
