"""Shared types and small helpers of the data layer (no torch here).

Every path that comes from a file (split files, annotation lists, manifests)
goes through `make_datum`, which rejects paths that would leave the image
folder; every directory listing goes through `list_dirs` / `list_images`,
which sort, so that no file-system order leaks into results.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from mmrl.errors import UserError
from mmrl.fileio import JSONFileError, write_json_atomic, write_text_atomic  # noqa: F401 (re-exported)
from mmrl.fileio import read_json as _read_json_file

LOG = logging.getLogger("mmrl.data")

# lower-case suffixes of the files we treat as images when listing folders
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
DEFAULT_TEMPLATE = "a photo of a {}."


class DataError(UserError, ValueError):
    """A dataset is present but its content is not what was expected."""


class MissingDataError(UserError, FileNotFoundError):
    """A file or folder a dataset needs does not exist."""


@dataclass(frozen=True)
class Datum:
    impath: str  # absolute path of the image
    label: int
    classname: str
    relpath: str  # path relative to the dataset's image folder (what split files and predictions use)
    # the image's real class where ``label`` is the label it is GIVEN (label-noise studies, noise.py):
    # a wrong shot has true_label != label; None = no noise was drawn (label is the image's class),
    # -1 = a class outside this split (a noisy split cut to base/novel classes afterwards)
    true_label: Optional[int] = None


@dataclass
class DatasetSplits:
    name: str  # canonical name, e.g. "DescribableTextures" or "folder:my_data"
    image_dir: Path
    train: list[Datum]
    val: list[Datum]
    test: list[Datum]
    classnames: list[str]  # index = label (after any relabelling)
    template: str  # e.g. "{} texture."
    test_only: bool = False  # ImageNet variants

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def train_counts(self) -> list[int]:
        """Training images per class, by label (the realised shots of a few-shot split)."""
        counts = [0] * self.num_classes
        for d in self.train:
            counts[d.label] += 1
        return counts

    def summary(self) -> str:
        return (f"{self.name}: {self.num_classes} classes, train {len(self.train)}, "
                f"val {len(self.val)}, test {len(self.test)}")


# reader(cache_dir, split_seed) -> (train, val, test, class names or None = derive from the items)
Reader = Callable[[Path, int], tuple[list[Datum], list[Datum], list[Datum], Optional[list[str]]]]


@dataclass(frozen=True)
class Located:
    """Where a dataset lives, before anything is read. `read(cache_dir, split_seed)` reads it."""

    name: str
    dataset_dir: Path
    image_dir: Path
    template: str
    test_only: bool
    read: Reader


_logged_once: set[str] = set()


def log_once(key: str, level: int, msg: str, *args: object) -> None:
    """Log ``msg`` at ``level`` the first time ``key`` is seen in this process, at DEBUG after.

    A run reads its dataset several times (training split, then each evaluation); a note
    such as "built a split from the raw data" is news only the first time.
    """
    first = key not in _logged_once
    _logged_once.add(key)
    LOG.log(level if first else logging.DEBUG, msg, *args)


# --------------------------------------------------------------------------- paths

_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relpath(relpath: object, source: str) -> str:
    """Return `relpath` if it is a relative path that stays inside its folder.

    `source` names where the path came from (file and entry) for the error.
    Rejects absolute paths (POSIX, Windows drive or UNC) and any `..` part;
    backslashes count as separators here so a Windows-style escape is caught
    too.
    """
    if not isinstance(relpath, str) or not relpath.strip():
        raise DataError(f"{source}: image path {relpath!r} is not a non-empty string")
    parts = relpath.replace("\\", "/")
    if parts.startswith("/") or _DRIVE.match(parts) or ".." in parts.split("/"):
        raise DataError(
            f"{source}: image path {relpath!r} escapes the dataset folder "
            "(absolute paths and '..' are not allowed; paths are relative to the image folder)"
        )
    return relpath


def make_datum(image_dir: Path | str, relpath: str, label: int, classname: str, source: str) -> Datum:
    rel = check_relpath(relpath, source)
    return Datum(impath=os.path.join(str(image_dir), rel), label=int(label), classname=classname, relpath=rel)


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_dirs(path: Path | str) -> list[str]:
    """Sorted names of the non-hidden sub-folders of `path` (Python string order)."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if _visible(e.name) and e.is_dir())
    except FileNotFoundError as e:
        raise MissingDataError(f"folder {path} does not exist") from e


def list_images(path: Path | str) -> list[str]:
    """Sorted names of the non-hidden image files directly in `path`."""
    try:
        with os.scandir(path) as it:
            return sorted(
                e.name for e in it
                if _visible(e.name) and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()
            )
    except FileNotFoundError as e:
        raise MissingDataError(f"folder {path} does not exist") from e


def list_images_recursive(path: Path | str) -> list[str]:
    """Sorted relative paths (``/``-separated) of the non-hidden image files in `path` and in its
    non-hidden sub-folders at any depth, as torchvision's ``ImageFolder`` finds them (symlinked
    folders are not followed, so a link cannot make the walk loop)."""
    path = Path(path)
    if not path.is_dir():
        raise MissingDataError(f"folder {path} does not exist")
    found = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if _visible(d)]
        rel = Path(folder).relative_to(path)
        found += [(rel / f).as_posix() for f in files
                  if _visible(f) and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise MissingDataError(f"missing {what}: {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MissingDataError(f"missing {what}: {path}/")
    return path


def read_lines(path: Path) -> list[str]:
    """Stripped, non-empty lines of a text file (Windows line ends tolerated)."""
    require_file(path, "file")
    with open(path, encoding="utf-8") as f:
        return [ln.strip() for ln in f if ln.strip()]


# --------------------------------------------------------------------------- labels

def classnames_from_items(splits: Iterable[list[Datum]], source: str) -> list[str]:
    """Class-name list indexed by label, from the (label, classname) pairs of the items.

    Raises if a label has two names or if labels 0..max are not all present
    (a gap would shift every later class name).
    """
    names: dict[int, str] = {}
    for items in splits:
        for d in items:
            old = names.setdefault(d.label, d.classname)
            if old != d.classname:
                raise DataError(f"{source}: label {d.label} has two class names, {old!r} and {d.classname!r}")
    if not names:
        return []
    if min(names) < 0:
        raise DataError(f"{source}: negative label {min(names)}")
    missing = [y for y in range(max(names) + 1) if y not in names]
    if missing:
        raise DataError(f"{source}: labels must be 0..{max(names)} without gaps; no item has label(s) "
                        f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return [names[y] for y in range(len(names))]


def check_template(template: str, source: str) -> str:
    if not isinstance(template, str) or template.count("{}") != 1:
        raise DataError(f"{source}: prompt template {template!r} must contain '{{}}' exactly once")
    return template


# --------------------------------------------------------------------------- cache and files

def default_cache_dir() -> Path:
    """$MMRL_CACHE_DIR, else $XDG_CACHE_HOME/mmrl, else ~/.cache/mmrl."""
    env = os.environ.get("MMRL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "mmrl"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def path_key(path: Path) -> str:
    """Short stable key of an absolute path, used to name cache entries."""
    return hashlib.sha1(str(Path(path).absolute()).encode()).hexdigest()[:12]


def read_json(path: Path | str, what: str = "JSON file") -> object:
    path = Path(path)
    require_file(path, what)
    try:
        return _read_json_file(path)
    except JSONFileError as e:  # its message names the file
        raise DataError(str(e)) from None
