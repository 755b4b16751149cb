"""The 15 benchmark datasets in the CoOp layout, the name registry, and the split pipeline.

Readers follow CoOp's dataset classes (see docs/protocols.md#reader-details),
with every directory listing sorted. Datasets with a `split_zhou_*.json`
use it; when it is missing the CoOp recipe builds the split from the raw
data with `random.Random(split_seed)` (default 1, independent of the run's
seed so that few-shot sampling sees the same stream as with a published
file), and the built file is written to the cache directory, never into the
dataset folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import posixpath
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from mmrl import vocab

from .core import (
    DEFAULT_TEMPLATE,
    LOG,
    DatasetSplits,
    DataError,
    Datum,
    Located,
    MissingDataError,
    check_template,
    classnames_from_items,
    log_once,
    list_dirs,
    list_images,
    make_datum,
    path_key,
    read_json,
    read_lines,
    require_dir,
    require_file,
    resolve_cache_dir,
    write_json_atomic,
)
from mmrl.fileio import read_json as read_json_file

from .imagefolder import is_user_spec, locate_user
from .imbalance import imbalanced
from .noise import noise_rate, noisy_fewshot
from .splits import (
    Splits3,
    fewshot,
    read_split_file,
    save_built_split,
    split_groups,
    split_trainval,
    subsample_classes,
    subsample_labels,
)

# the vocabulary's names, as lists (this module's interface)
BENCHMARK_11: list[str] = list(vocab.DATASETS)
IMAGENET_VARIANTS: list[str] = list(vocab.VARIANTS)
ALL_DATASETS: list[str] = list(vocab.ALL_DATASETS)

# builder(dataset_dir, image_dir, rng) -> (train, val, test): CoOp's recipe when the split file is missing
Builder = Callable[[Path, Path, random.Random], Splits3]
# reader(dataset_dir, image_dir, cache_dir, root) -> (train, val, test, class names) for datasets without split file
Reader = Callable[[Path, Path, Path, Path], tuple[list[Datum], list[Datum], list[Datum], list[str]]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    folder: str  # under --root
    image_subdir: str  # image folder under `folder` ("" = the dataset folder itself)
    template: str
    layout: str  # what must be there, for error messages and `mmrl data verify`
    split_file: Optional[str] = None  # split_zhou_*.json in the dataset folder
    build: Optional[Builder] = None  # recipe when split_file is missing
    build_how: str = ""
    read: Optional[Reader] = None  # datasets without a split file
    test_only: bool = False


# --------------------------------------------------------------------------- helpers

def _classnames_txt(path: Path) -> dict[str, str]:
    """`<wnid> <class name words>` per line -> {wnid: name}, file order (CoOp's read_classnames)."""
    out: dict[str, str] = {}
    for line in read_lines(path):
        parts = line.split(" ")
        if len(parts) < 2:
            raise DataError(f"{path}: line {line!r}; expected '<folder> <class name>'")
        out[parts[0]] = " ".join(parts[1:])
    return out


def _variant_classnames(d: Path, root: Path) -> tuple[dict[str, str], Path]:
    """classnames.txt of an ImageNet variant; falls back to ImageNet's own when not copied there."""
    path = d / "classnames.txt"
    if not path.is_file() and (root / "imagenet" / "classnames.txt").is_file():
        LOG.info("%s not found; using %s", path, root / "imagenet" / "classnames.txt")
        path = root / "imagenet" / "classnames.txt"
    require_file(path, "class names file (copy ImageNet's classnames.txt there)")
    return _classnames_txt(path), path


def _loadmat(path: Path, what: str) -> dict:
    require_file(path, what)
    try:  # here: only StanfordCars / OxfordFlowers built from their .mat files need scipy (~0.1 s to import)
        from scipy.io import loadmat
    except ImportError as e:
        raise DataError(f"building the split from {path} needs scipy (pip install scipy), or put the "
                        "published split_zhou_*.json file in the dataset folder") from e
    return loadmat(str(path))


# --------------------------------------------------------------------------- readers without split files

def _imagenet_listing(img: Path, cache_dir: Path) -> dict[str, dict[str, list[str]]]:
    """{"train"|"val": {wnid: sorted image names}}, cached as JSON.

    The cache entry is valid while the modification times of the class
    folders are unchanged (adding or removing a file changes them), so
    1.3M-file listings are not redone every run (CoOp keeps a pickle for the
    same reason).
    """
    folders = {s: list_dirs(require_dir(img / s, f"ImageNet {s} folder")) for s in ("train", "val")}
    stamp_src = "\n".join(f"{s}/{f}:{os.stat(img / s / f).st_mtime_ns}" for s in folders for f in folders[s])
    stamp = hashlib.sha1(stamp_src.encode()).hexdigest()
    cache_file = cache_dir / "listings" / f"imagenet-{path_key(img)}.json"
    try:
        obj = read_json_file(cache_file)
        if obj["image_dir"] == str(img) and obj["stamp"] == stamp:
            files = obj["files"]
            if all(isinstance(files[s][f], list) for s in folders for f in folders[s]):
                return files
    except (OSError, ValueError, KeyError, TypeError):
        pass
    files = {s: {f: list_images(img / s / f) for f in folders[s]} for s in folders}
    try:
        write_json_atomic({"image_dir": str(img), "stamp": stamp, "files": files}, cache_file, indent=None)
    except OSError as e:
        LOG.warning("could not cache the ImageNet listing at %s: %s", cache_file, e)
    return files


def _read_imagenet(d: Path, img: Path, cache_dir: Path, root: Path):
    cn_path = require_file(d / "classnames.txt", "ImageNet class names file")
    names = _classnames_txt(cn_path)
    files = _imagenet_listing(img, cache_dir)
    folders = sorted(files["train"])  # label = index among the train folders
    cid = {f: y for y, f in enumerate(folders)}
    for f in folders:
        if f not in names:
            raise DataError(f"{cn_path}: no line for class folder {img / 'train' / f}")
    for f in files["val"]:
        if f not in cid:
            raise DataError(f"{img / 'val' / f}: class folder not present in {img / 'train'}")
    train = [make_datum(img, f"train/{f}/{fn}", cid[f], names[f], str(img)) for f in folders for fn in files["train"][f]]
    test = [make_datum(img, f"val/{f}/{fn}", cid[f], names[f], str(img))
            for f in sorted(files["val"]) for fn in files["val"][f]]
    return train, test, test, [names[f] for f in folders]  # val = test (CoOp)


def _read_fgvc(d: Path, img: Path, cache_dir: Path, root: Path):
    variants = read_lines(require_file(d / "variants.txt", "FGVCAircraft class list"))
    cid = {c: y for y, c in enumerate(variants)}  # label = line index, file order

    def read(fname: str) -> list[Datum]:
        path = require_file(d / fname, "FGVCAircraft split list")
        items = []
        for line in read_lines(path):
            parts = line.split(" ")
            cname = " ".join(parts[1:])
            if cname not in cid:
                raise DataError(f"{path}: line {line!r}: class {cname!r} is not in {d / 'variants.txt'}")
            items.append(make_datum(img, parts[0] + ".jpg", cid[cname], cname, f"{path}: line {line!r}"))
        return items

    return (read("images_variant_train.txt"), read("images_variant_val.txt"), read("images_variant_test.txt"),
            variants)


def _read_imagenetv2(d: Path, img: Path, cache_dir: Path, root: Path):
    names, _ = _variant_classnames(d, root)
    classnames = list(names.values())  # folder n = label n = line n
    require_dir(img, "ImageNetV2 image folder")
    folders = list_dirs(img)
    for f in folders:
        if not f.isdigit() or str(int(f)) != f or int(f) >= len(classnames):
            raise DataError(f"{img / f}: expected class folders named 0..{len(classnames) - 1} (folder number = label)")
    test = [make_datum(img, f"{f}/{fn}", int(f), classnames[int(f)], str(img))
            for f in sorted(folders, key=int) for fn in list_images(img / f)]
    return [], [], test, classnames


def _wnid_folder_reader(ignored: tuple[str, ...]) -> Reader:
    """ImageNet-Sketch/-A/-R: label = index among the sorted class folders present."""

    def read(d: Path, img: Path, cache_dir: Path, root: Path):
        names, cn_path = _variant_classnames(d, root)
        require_dir(img, "image folder")
        folders = [f for f in list_dirs(img) if f not in ignored]
        for f in folders:
            if f not in names:
                raise DataError(f"{cn_path}: no line for class folder {img / f}")
        test = [make_datum(img, f"{f}/{fn}", y, names[f], str(img))
                for y, f in enumerate(folders) for fn in list_images(img / f)]
        return [], [], test, [names[f] for f in folders]

    return read


# --------------------------------------------------------------------------- builders (split file missing)

def _folder_builder(ignored: tuple[str, ...] = (), renames: dict[str, str] | None = None) -> Builder:
    """DTD.read_and_split_data: label = index in the sorted folder names, renames after labelling."""
    renames = renames or {}

    def build(d: Path, img: Path, rng: random.Random) -> Splits3:
        require_dir(img, "image folder")
        cats = [c for c in list_dirs(img) if c not in ignored]
        if not cats:
            raise DataError(f"{img}: no class folders")
        groups = [(y, renames.get(c, c), [f"{c}/{f}" for f in list_images(img / c)]) for y, c in enumerate(cats)]
        return split_groups(groups, img, rng, str(img))

    return build


def _build_pets(d: Path, img: Path, rng: random.Random) -> Splits3:
    def read(fname: str) -> list[Datum]:
        path = require_file(d / "annotations" / fname, "OxfordPets annotation list")
        items = []
        for line in read_lines(path):
            if line.startswith("#"):
                continue
            parts = line.split(" ")
            if len(parts) != 4 or not parts[1].isdigit():
                raise DataError(f"{path}: line {line!r}; expected '<image name> <class id> <species> <breed id>'")
            breed = "_".join(parts[0].split("_")[:-1]).lower()
            items.append(make_datum(img, parts[0] + ".jpg", int(parts[1]) - 1, breed, f"{path}: line {line!r}"))
        return items

    trainval = read("trainval.txt")
    test = read("test.txt")
    train, val = split_trainval(trainval, rng, str(d / "annotations" / "trainval.txt"))
    return train, val, test


def _build_cars(d: Path, img: Path, rng: random.Random) -> Splits3:
    files = (d / "devkit" / "cars_train_annos.mat", d / "cars_test_annos_withlabels.mat", d / "devkit" / "cars_meta.mat")
    for f in files:
        require_file(f, "StanfordCars annotation file")
    meta = _loadmat(files[2], "StanfordCars class names")["class_names"][0]

    def read(subdir: str, anno_path: Path) -> list[Datum]:
        annos = _loadmat(anno_path, "StanfordCars annotations")["annotations"][0]
        items = []
        for i in range(len(annos)):
            imname = str(annos[i]["fname"][0])
            label = int(annos[i]["class"][0, 0]) - 1
            words = str(meta[label][0]).split(" ")
            words.insert(0, words.pop(-1))  # year first, as CoOp
            items.append(make_datum(img, f"{subdir}/{imname}", label, " ".join(words), f"{anno_path}: entry {i}"))
        return items

    trainval = read("cars_train", files[0])
    test = read("cars_test", files[1])
    train, val = split_trainval(trainval, rng, str(files[0]))
    return train, val, test


def _build_flowers(d: Path, img: Path, rng: random.Random) -> Splits3:
    labels = _loadmat(d / "imagelabels.mat", "OxfordFlowers label file")["labels"][0]
    lab2cname = read_json(d / "cat_to_name.json", "OxfordFlowers class names")
    tracker: dict[int, list[str]] = {}
    for i, label in enumerate(labels):
        tracker.setdefault(int(label), []).append(f"image_{str(i + 1).zfill(5)}.jpg")
    groups = []
    for label, paths in tracker.items():  # first-appearance order, as CoOp
        if str(label) not in lab2cname:
            raise DataError(f"{d / 'cat_to_name.json'}: no class name for label {label}")
        groups.append((label - 1, lab2cname[str(label)], paths))
    return split_groups(groups, img, rng, str(d / "imagelabels.mat"))


def _build_sun397(d: Path, img: Path, rng: random.Random) -> Splits3:
    cn_path = require_file(d / "ClassName.txt", "SUN397 class list")
    cid = {line.lstrip("/"): y for y, line in enumerate(read_lines(cn_path))}  # "/a/abbey" -> "a/abbey"

    def read(fname: str) -> list[Datum]:
        path = require_file(d / fname, "SUN397 partition list")
        items = []
        for line in read_lines(path):
            rel = line.lstrip("/")  # "/a/abbey/sun_x.jpg" (CoOp drops the first character)
            folder = posixpath.dirname(rel)
            if folder not in cid:
                raise DataError(f"{path}: line {line!r}: class {folder!r} is not in {cn_path}")
            cname = " ".join(folder.split("/")[1:][::-1])  # a/apartment_building/outdoor -> outdoor apartment_building
            items.append(make_datum(img, rel, cid[folder], cname, f"{path}: line {line!r}"))
        return items

    trainval = read("Training_01.txt")
    test = read("Testing_01.txt")
    train, val = split_trainval(trainval, rng, str(d / "Training_01.txt"))
    return train, val, test


def _build_ucf101(d: Path, img: Path, rng: random.Random) -> Splits3:
    lists = d / "ucfTrainTestlist"
    cname2lab = {}
    for line in read_lines(require_file(lists / "classInd.txt", "UCF101 class list")):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DataError(f"{lists / 'classInd.txt'}: line {line!r}; expected '<1-based id> <ActionName>'")
        cname2lab[parts[1]] = int(parts[0]) - 1

    def read(fname: str) -> list[Datum]:
        path = require_file(lists / fname, "UCF101 split list")
        items = []
        for line in read_lines(path):
            first = line.split(" ")[0]  # trainlist lines carry a label after the path
            action, _, video = first.partition("/")
            if action not in cname2lab or not video:
                raise DataError(f"{path}: line {line!r}: expected '<ActionName>/<video>.avi' with a class of classInd.txt")
            renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))  # YoYo -> Yo_Yo
            rel = f"{renamed}/{video.replace('.avi', '.jpg')}"
            items.append(make_datum(img, rel, cname2lab[action], renamed, f"{path}: line {line!r}"))
        return items

    trainval = read("trainlist01.txt")
    test = read("testlist01.txt")
    train, val = split_trainval(trainval, rng, str(lists / "trainlist01.txt"))
    return train, val, test


# --------------------------------------------------------------------------- registry

_CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
_CALTECH_RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
_EUROSAT_RENAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}
_FOLDER_HOW = "per class 50/20/30 after a seeded shuffle of the sorted file list"
_TRAINVAL_HOW = "official train+val / test lists, 20% of train+val per class to val"


def _zhou(name: str, image_subdir: str, template: str, layout: str,
          build: Builder | None, how: str) -> Benchmark:
    return Benchmark(name, vocab.DATASET_FOLDERS[name], image_subdir, template, layout, split_file=f"split_zhou_{name}.json",
                     build=build, build_how=how)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("ImageNet", vocab.DATASET_FOLDERS["ImageNet"], "images", DEFAULT_TEMPLATE,
              "imagenet/classnames.txt, imagenet/images/train/<wnid>/*, imagenet/images/val/<wnid>/*",
              read=_read_imagenet),
    _zhou("Caltech101", "101_ObjectCategories", DEFAULT_TEMPLATE,
          "caltech-101/101_ObjectCategories/<class>/*.jpg, caltech-101/split_zhou_Caltech101.json",
          _folder_builder(_CALTECH_IGNORED, _CALTECH_RENAMES), _FOLDER_HOW),
    _zhou("OxfordPets", "images", "a photo of a {}, a type of pet.",
          "oxford_pets/images/*.jpg, oxford_pets/split_zhou_OxfordPets.json "
          "(or oxford_pets/annotations/{trainval,test}.txt to build it)", _build_pets, _TRAINVAL_HOW),
    _zhou("StanfordCars", "", DEFAULT_TEMPLATE,
          "stanford_cars/cars_train/*.jpg, stanford_cars/cars_test/*.jpg, stanford_cars/split_zhou_StanfordCars.json",
          _build_cars, _TRAINVAL_HOW),
    _zhou("OxfordFlowers", "jpg", "a photo of a {}, a type of flower.",
          "oxford_flowers/jpg/*.jpg, oxford_flowers/split_zhou_OxfordFlowers.json "
          "(or imagelabels.mat + cat_to_name.json to build it)", _build_flowers, "per class 50/20/30"),
    _zhou("Food101", "images", "a photo of {}, a type of food.",
          "food-101/images/<class>/*.jpg, food-101/split_zhou_Food101.json", _folder_builder(), _FOLDER_HOW),
    Benchmark("FGVCAircraft", vocab.DATASET_FOLDERS["FGVCAircraft"], "images", "a photo of a {}, a type of aircraft.",
              "fgvc_aircraft/images/*.jpg, fgvc_aircraft/variants.txt, "
              "fgvc_aircraft/images_variant_{train,val,test}.txt", read=_read_fgvc),
    _zhou("SUN397", "SUN397", DEFAULT_TEMPLATE,
          "sun397/SUN397/<letter>/<class>/*.jpg, sun397/split_zhou_SUN397.json "
          "(or ClassName.txt, Training_01.txt, Testing_01.txt to build it)", _build_sun397, _TRAINVAL_HOW),
    _zhou("DescribableTextures", "images", "{} texture.",
          "dtd/images/<class>/*.jpg, dtd/split_zhou_DescribableTextures.json", _folder_builder(), _FOLDER_HOW),
    _zhou("EuroSAT", "2750", "a centered satellite photo of {}.",
          "eurosat/2750/<class>/*.jpg, eurosat/split_zhou_EuroSAT.json",
          _folder_builder(renames=_EUROSAT_RENAMES), _FOLDER_HOW),
    _zhou("UCF101", "UCF-101-midframes", "a photo of a person doing {}.",
          "ucf101/UCF-101-midframes/<Action_Name>/*.jpg, ucf101/split_zhou_UCF101.json "
          "(or ucf101/ucfTrainTestlist/ to build it)", _build_ucf101, _TRAINVAL_HOW),
    Benchmark("ImageNetV2", vocab.DATASET_FOLDERS["ImageNetV2"], "imagenetv2-matched-frequency-format-val", DEFAULT_TEMPLATE,
              "imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*, imagenetv2/classnames.txt",
              read=_read_imagenetv2, test_only=True),
    Benchmark("ImageNetSketch", vocab.DATASET_FOLDERS["ImageNetSketch"], "images", DEFAULT_TEMPLATE,
              "imagenet-sketch/images/<wnid>/*, imagenet-sketch/classnames.txt",
              read=_wnid_folder_reader(()), test_only=True),
    Benchmark("ImageNetA", vocab.DATASET_FOLDERS["ImageNetA"], "imagenet-a", DEFAULT_TEMPLATE,
              "imagenet-adversarial/imagenet-a/<wnid>/*, imagenet-adversarial/classnames.txt",
              read=_wnid_folder_reader(("README.txt",)), test_only=True),
    Benchmark("ImageNetR", vocab.DATASET_FOLDERS["ImageNetR"], "imagenet-r", DEFAULT_TEMPLATE,
              "imagenet-rendition/imagenet-r/<wnid>/*, imagenet-rendition/classnames.txt",
              read=_wnid_folder_reader(("README.txt",)), test_only=True),
]}

def canonical_name(name: str) -> str:
    """Benchmark alias (case-insensitive, '-', '_' and spaces ignored) -> canonical Dassl name.

    User data specs (`folder:`, `manifest:`, `dataset:`) come back unchanged,
    as does a path to a folder holding a `dataset.json` (as `dataset:PATH`).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"dataset name {name!r} is empty")
    if is_user_spec(name):
        return name
    hit = vocab.canonical_benchmark(name)
    if hit:
        return hit
    p = Path(name).expanduser()
    if (p / "dataset.json").is_file() or (p.name == "dataset.json" and p.is_file()):
        return f"dataset:{name}"
    raise ValueError(
        f"unknown dataset {name!r}; expected one of {', '.join(ALL_DATASETS)} (case-insensitive; short forms "
        "such as dtd, pets, cars, flowers, aircraft, imagenet-a work), or folder:PATH, manifest:FILE.csv|json, "
        "dataset:PATH (a folder with dataset.json)")


def locate(name: str, root: str | Path | None, *, template: str | None = None) -> Located:
    """Where dataset `name` lives under `root`, without reading it."""
    canon = canonical_name(name)
    root_path = Path(root).expanduser().absolute() if root is not None else None
    if is_user_spec(canon):
        return locate_user(canon, root_path, template)
    b = BENCHMARKS[canon]
    if root_path is None:
        raise DataError(f"dataset {canon}: a data root is needed (--root DIR holding {b.folder}/)")
    d = root_path / b.folder
    img = d / b.image_subdir if b.image_subdir else d

    def read(cache_dir: Path, split_seed: int):
        if not d.is_dir():
            raise MissingDataError(f"{canon}: dataset folder {d}/ not found; expected under {root_path}: {b.layout}")
        if b.read is not None:
            return b.read(d, img, cache_dir, root_path)
        split_path = d / b.split_file
        if split_path.is_file():
            train, val, test = read_split_file(split_path, img)
            return train, val, test, None
        log_once(f"building-split:{split_path}", logging.INFO, "%s: %s not found; building the split from the raw "
                 "data (%s)", canon, split_path, b.build_how)
        try:
            train, val, test = b.build(d, img, random.Random(split_seed))
        except MissingDataError as e:
            raise MissingDataError(f"{canon}: missing {split_path}, and the raw data to build it is incomplete: {e}"
                                   f" (expected: {b.layout})") from e
        save_built_split(train, val, test, name=canon, dataset_dir=d, filename=f"split_zhou_{canon}.json",
                         cache_dir=cache_dir, how=f"{b.build_how}, split seed {split_seed}")
        return train, val, test, None

    tmpl = check_template(template or b.template, canon)
    return Located(canon, d, img, tmpl, b.test_only, read)


def dataset_template(name: str, root: str | Path | None = None) -> str:
    """The hand-written prompt template of a dataset ("{}" = class name)."""
    canon = canonical_name(name)
    if canon in BENCHMARKS:
        return BENCHMARKS[canon].template
    return locate(canon, root).template


def _checked_classnames(source: str, splits: tuple[list[Datum], ...], given: list[str] | None) -> list[str]:
    if given is None:
        return classnames_from_items(splits, source)
    for items in splits:
        for d in items:
            if not 0 <= d.label < len(given) or given[d.label] != d.classname:
                raise DataError(f"{source}: item {d.relpath!r} has label {d.label} / class {d.classname!r}, "
                                f"which does not match the {len(given)} class names")
    return list(given)


def load_dataset(name: str, root: str | Path | None, *, cache_dir: str | Path | None = None,
                 template: str | None = None, split_seed: int = 1) -> DatasetSplits:
    """Full train/val/test of a dataset (no few-shot, no base/novel).

    `split_seed` only matters when a split must be built from raw data
    (missing split file, folder/manifest data). Test-only datasets (the
    ImageNet variants) have empty train and val.
    """
    loc = locate(name, root, template=template)
    train, val, test, given = loc.read(resolve_cache_dir(cache_dir), split_seed)
    classnames = _checked_classnames(loc.name, (train, val, test), given)
    return DatasetSplits(loc.name, loc.image_dir, train, val, test, classnames, loc.template, loc.test_only)


def prepare_splits(name: str, root: str | Path | None, *, shots: int, seed: int, subsample: str = "all",
                   split_file: str | Path | None = None, cache_dir: str | Path | None = None,
                   template: str | None = None, split_seed: int = 1, noise_type: str = "none",
                   noise_shots: int = 0, imbalance_type: str = "none", imbalance_ratio: float = 1.0,
                   imbalance_order: str = "label") -> DatasetSplits:
    """The splits a run uses, in CoOp's order: full splits -> few-shot train -> few-shot val -> base/novel
    (-> class imbalance).

    Few-shot draws from `random.Random(seed)` (the same numbers as CoOp's
    `random.seed(seed)`): train with `shots`, then val with min(shots, 4)
    (ImageNet: val = test, not sampled). `shots <= 0` keeps everything.
    With `split_file` (a file written by `mmrl data split`) its lists are
    used as they are: no few-shot and no base/novel are applied to them.
    Test-only datasets ignore `shots`; base/novel does not apply to them.

    `noise_type` symflip / pairflip draws the training shots as JoAPR does instead, `noise_shots`
    of them per class with another class's image (:func:`mmrl.data.noise.noisy_fewshot`; the
    same Python stream then draws val). For base/novel the noise is drawn among the kept classes
    only, so no image of the other half enters training (JoAPR draws before subsampling). Then
    `imbalance_type` exp / step cuts the training shots to the long-tailed profile
    (:mod:`mmrl.data.imbalance`) over the training classes.
    """
    if subsample not in vocab.SUBSAMPLES:
        raise ValueError(f"subsample={subsample!r}; expected one of {', '.join(vocab.SUBSAMPLES)}")
    corrupted = noise_type != "none" or imbalance_type != "none"
    if split_file is not None:
        if corrupted:
            LOG.warning("%s: the split file %s is used as it is; the label noise and class imbalance settings do "
                        "not apply to it (its training rows carry their true labels if it was drawn with noise)",
                        name, split_file)
        loc = locate(name, root, template=template)
        train, val, test = read_split_file(split_file, loc.image_dir)
        classnames = classnames_from_items((train, val, test), str(split_file))
        return DatasetSplits(loc.name, loc.image_dir, train, val, test, classnames, loc.template, loc.test_only)
    splits = load_dataset(name, root, cache_dir=cache_dir, template=template, split_seed=split_seed)
    if splits.test_only:
        if subsample != "all":
            raise DataError(f"{splits.name} is test-only: base/novel (subsample={subsample}) does not apply")
        if corrupted:
            raise DataError(f"{splits.name} is test-only: label noise and class imbalance apply to training sets")
        return splits
    if noise_type != "none" and shots <= 0:
        raise DataError(f"{splits.name}: label noise needs a few-shot sample (shots >= 1), got shots = {shots}")
    selected = None
    if shots > 0:
        rng = random.Random(seed)
        if noise_type == "none":
            train = fewshot(splits.train, shots, rng)
        else:
            selected = subsample_labels(splits.train, subsample, splits.name)
            kept = set(selected)
            train = noisy_fewshot([d for d in splits.train if d.label in kept], shots, noise_shots, noise_type,
                                  seed, rng, splits.name)
        val = splits.test if splits.name == "ImageNet" else fewshot(splits.val, min(shots, 4), rng)
        splits = dataclasses.replace(splits, train=train, val=val)
    splits = subsample_classes(splits, subsample, selected)
    if imbalance_type != "none":
        k = shots if shots > 0 else max(splits.train_counts(), default=0)
        splits.train = imbalanced(splits.train, splits.num_classes, k, imbalance_type, imbalance_ratio,
                                  imbalance_order, seed)
    return splits


def corruption_options(data_cfg: Any) -> dict[str, Any]:
    """`prepare_splits`' noise and imbalance arguments from a run's ``data`` config section."""
    return {"noise_type": data_cfg.noise.type, "noise_shots": data_cfg.noise.shots,
            "imbalance_type": data_cfg.imbalance.type, "imbalance_ratio": data_cfg.imbalance.ratio,
            "imbalance_order": data_cfg.imbalance.order}


def corruption_record(splits: DatasetSplits, data_cfg: Any) -> dict[str, Any]:
    """run.json's record of the label noise and class imbalance of a training split (empty when
    neither is drawn nor read from a split file with true labels): the settings, the realised
    noise rate and the classes' realised counts."""
    out: dict[str, Any] = {}
    if data_cfg.noise.type != "none" or any(d.true_label is not None for d in splits.train):  # or a noisy split file
        wrong = sum(d.true_label is not None and d.true_label != d.label for d in splits.train)
        out["noise"] = {"type": data_cfg.noise.type, "shots": data_cfg.noise.shots,
                        "rate": noise_rate(splits.train), "wrong_images": wrong, "images": len(splits.train)}
    if data_cfg.imbalance.type != "none":
        counts = splits.train_counts()
        out["imbalance"] = {"type": data_cfg.imbalance.type, "ratio": data_cfg.imbalance.ratio,
                            "order": data_cfg.imbalance.order, "min": min(counts, default=0),
                            "max": max(counts, default=0), "per_class": counts}
    return out
