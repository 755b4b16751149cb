"""Readers of the 15 benchmark datasets, split building, names, templates, paths, cache."""
from __future__ import annotations

import json
import logging
import os
import random
import stat
import sys
import types

import numpy as np
import pytest

from fixtures_data import (
    IMAGENET_NAMES,
    IMAGENET_WNIDS,
    as_tuples,
    snapshot,
    write_class_folders,
    write_fgvc,
    write_image,
    write_imagenet,
    write_imagenetv2,
    write_pets_raw,
    write_split,
    write_split_dataset,
    write_sun397_raw,
    write_ucf101_raw,
    write_wnid_variant,
)
from mmrl.data import (
    ALL_DATASETS,
    BENCHMARK_11,
    IMAGENET_VARIANTS,
    DataError,
    MissingDataError,
    canonical_name,
    dataset_template,
    default_cache_dir,
    load_dataset,
    prepare_splits,
    read_split_file,
)
from mmrl.data.datasets import BENCHMARKS

# (canonical name, folder, image subfolder, class names) of the datasets read from a split_zhou file
SPLIT_DATASETS = [
    ("Caltech101", "caltech-101", "101_ObjectCategories", ["accordion", "face", "airplane"]),
    ("OxfordPets", "oxford_pets", "images", ["abyssinian", "american_bulldog", "beagle"]),
    ("StanfordCars", "stanford_cars", "", ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 BMW M3"]),
    ("OxfordFlowers", "oxford_flowers", "jpg", ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]),
    ("Food101", "food-101", "images", ["apple_pie", "baby_back_ribs", "baklava"]),
    ("SUN397", "sun397", "SUN397", ["abbey", "outdoor apartment_building", "shop bakery"]),
    ("DescribableTextures", "dtd", "images", ["banded", "blotchy", "braided"]),
    ("EuroSAT", "eurosat", "2750", ["Annual Crop Land", "Forest", "Sea or Lake"]),
    ("UCF101", "ucf101", "UCF-101-midframes", ["Apply_Eye_Makeup", "Yo_Yo", "Playing_Daf"]),
]


def test_registry_lists_and_templates():
    assert BENCHMARK_11 == ["ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                            "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101"]
    assert IMAGENET_VARIANTS == ["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"]
    assert set(BENCHMARKS) == set(ALL_DATASETS) and len(ALL_DATASETS) == 15
    # the templates of docs/protocols.md#the-15-datasets
    assert dataset_template("dtd") == "{} texture."
    assert dataset_template("eurosat") == "a centered satellite photo of {}."
    assert dataset_template("food101") == "a photo of {}, a type of food."
    assert dataset_template("aircraft") == "a photo of a {}, a type of aircraft."
    assert dataset_template("ucf101") == "a photo of a person doing {}."
    assert dataset_template("pets") == "a photo of a {}, a type of pet."
    assert dataset_template("flowers") == "a photo of a {}, a type of flower."
    for n in ("ImageNet", "Caltech101", "StanfordCars", "SUN397", *IMAGENET_VARIANTS):
        assert dataset_template(n) == "a photo of a {}."


@pytest.mark.parametrize("alias,canon", [
    ("dtd", "DescribableTextures"), ("DTD", "DescribableTextures"), ("describabletextures", "DescribableTextures"),
    ("eurosat", "EuroSAT"), ("imagenet-a", "ImageNetA"), ("ImageNet_A", "ImageNetA"), ("caltech101", "Caltech101"),
    ("caltech-101", "Caltech101"), ("pets", "OxfordPets"), ("oxford_pets", "OxfordPets"), ("cars", "StanfordCars"),
    ("flowers", "OxfordFlowers"), ("food101", "Food101"), ("food-101", "Food101"), ("aircraft", "FGVCAircraft"),
    ("fgvc_aircraft", "FGVCAircraft"), ("sun397", "SUN397"), ("ucf101", "UCF101"), ("imagenet-v2", "ImageNetV2"),
    ("imagenet-sketch", "ImageNetSketch"), ("imagenet-r", "ImageNetR"), ("IMAGENET", "ImageNet"),
    ("imagenet-adversarial", "ImageNetA"), ("imagenet-rendition", "ImageNetR"),
])
def test_aliases(alias, canon):
    assert canonical_name(alias) == canon


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        canonical_name("mnist")
    assert "mnist" in str(e.value) and "DescribableTextures" in str(e.value) and "folder:" in str(e.value)


@pytest.mark.parametrize("name,folder,sub,classes", SPLIT_DATASETS)
def test_split_file_readers(tmp_path, name, folder, sub, classes):
    entries = write_split_dataset(tmp_path, folder, sub, name, classes)
    s = load_dataset(name.lower(), tmp_path)
    assert s.name == name and not s.test_only
    img = tmp_path / folder / sub if sub else tmp_path / folder
    assert s.image_dir == img
    assert s.classnames == classes
    for key in ("train", "val", "test"):
        got = getattr(s, key)
        # split order, labels and names exactly as the file says
        assert [[d.relpath, d.label, d.classname] for d in got] == entries[key]
        assert all(d.impath == os.path.join(str(img), d.relpath) and os.path.isfile(d.impath) for d in got)
    assert s.template == BENCHMARKS[name].template


def test_stanford_cars_paths_relative_to_dataset_folder(tmp_path):
    entries = write_split_dataset(tmp_path, "stanford_cars", "", "StanfordCars", ["2012 BMW M3", "2000 Hummer"],
                                  layout="cars_train/{i:05d}")
    s = load_dataset("StanfordCars", tmp_path)
    assert s.train[0].relpath == entries["train"][0][0] and s.train[0].relpath.startswith("cars_train/")
    assert s.train[0].impath == str(tmp_path / "stanford_cars" / entries["train"][0][0])


def test_imagenet(tmp_path):
    write_imagenet(tmp_path)
    s = load_dataset("imagenet", tmp_path)
    wnids = sorted(IMAGENET_WNIDS)  # label = index among the sorted train folders
    assert s.classnames == [IMAGENET_NAMES[w] for w in wnids]
    assert s.classnames[2] == "great white shark"  # names with spaces from classnames.txt
    assert len(s.train) == 15 and len(s.test) == 6
    assert s.val == s.test  # ImageNet: val = test
    for d in s.train:
        w = d.relpath.split("/")[1]
        assert d.relpath.startswith("train/") and d.label == wnids.index(w) and d.classname == IMAGENET_NAMES[w]
    assert all(d.relpath.startswith("val/") for d in s.test)
    assert [d.relpath for d in s.train] == sorted(d.relpath for d in s.train)  # sorted listings
    # few-shot applies to train only, val stays the test split
    p = prepare_splits("imagenet", tmp_path, shots=2, seed=1)
    assert len(p.train) == 6 and p.val == p.test == s.test


def test_imagenet_listing_cache(tmp_path, isolated_cache, monkeypatch):
    d = write_imagenet(tmp_path)
    first = load_dataset("imagenet", tmp_path)
    assert list((isolated_cache / "listings").glob("imagenet-*.json"))
    import mmrl.data.datasets as ds

    calls = []
    real = ds.list_images
    monkeypatch.setattr(ds, "list_images", lambda p: calls.append(p) or real(p))
    again = load_dataset("imagenet", tmp_path)
    assert again.train == first.train and calls == []  # served from the cache
    write_image(d / "images" / "train" / IMAGENET_WNIDS[0] / "zz_new.JPEG")
    third = load_dataset("imagenet", tmp_path)  # folder changed -> listing redone
    assert calls and len(third.train) == len(first.train) + 1


def test_fgvc_aircraft(tmp_path):
    d, variants = write_fgvc(tmp_path)
    s = load_dataset("FGVCAircraft", tmp_path)
    assert s.classnames == variants  # file order, names with spaces
    assert (len(s.train), len(s.val), len(s.test)) == (9, 6, 6)
    first = s.train[0]
    assert first.classname == "Cessna 172" and first.label == 0 and first.relpath == "1000000.jpg"
    assert {d.classname: d.label for d in s.test} == {v: i for i, v in enumerate(variants)}


def test_imagenetv2_folder_number_is_label(tmp_path):
    write_imagenetv2(tmp_path, n_classes=11)
    s = load_dataset("imagenet-v2", tmp_path)
    assert s.test_only and s.train == [] and s.val == []
    assert len(s.classnames) == 11 and s.classnames[10] == "class number 10"
    for d in s.test:
        folder = int(d.relpath.split("/")[0])
        assert d.label == folder and d.classname == f"class number {folder}"
    assert [d.label for d in s.test] == list(range(11))  # numeric, not string, folder order


@pytest.mark.parametrize("name,folder,sub", [("ImageNetA", "imagenet-adversarial", "imagenet-a"),
                                             ("ImageNetR", "imagenet-rendition", "imagenet-r"),
                                             ("ImageNetSketch", "imagenet-sketch", "images")])
def test_wnid_variants(tmp_path, name, folder, sub):
    all_wnids = ["n09", "n01", "n05", "n03", "n07"]
    present = ["n07", "n01", "n05"]  # a subset, like A/R's 200 of 1000
    write_wnid_variant(tmp_path, folder, sub, present, all_wnids)
    s = load_dataset(name, tmp_path)
    assert s.test_only and s.classnames == ["name of n01", "name of n05", "name of n07"]  # README.txt not a class
    assert {d.relpath.split("/")[0]: d.label for d in s.test} == {"n01": 0, "n05": 1, "n07": 2}
    # shots are ignored, base/novel does not apply
    assert prepare_splits(name, tmp_path, shots=1, seed=1).test == s.test
    with pytest.raises(DataError, match="test-only"):
        prepare_splits(name, tmp_path, shots=1, seed=1, subsample="base")


def test_variant_classnames_fall_back_to_imagenet(tmp_path):
    write_imagenet(tmp_path)
    d = write_wnid_variant(tmp_path, "imagenet-sketch", "images", IMAGENET_WNIDS[:2], IMAGENET_WNIDS)
    (d / "classnames.txt").unlink()
    s = load_dataset("ImageNetSketch", tmp_path)
    assert s.classnames == [IMAGENET_NAMES[w] for w in sorted(IMAGENET_WNIDS[:2])]


# --------------------------------------------------------------------------- building splits from raw data

def _coop_read_and_split(image_dir, ignored=(), renames=None, seed=1):
    """CoOp's DTD.read_and_split_data with the global random module (listings sorted, per docs/protocols.md#reader-details)."""
    state = random.getstate()
    random.seed(seed)
    try:
        cats = sorted(c for c in os.listdir(image_dir) if not c.startswith(".") and c not in ignored)
        out = ([], [], [])
        for label, cat in enumerate(cats):
            ims = [f"{cat}/{f}" for f in sorted(os.listdir(image_dir / cat)) if not f.startswith(".")]
            random.shuffle(ims)
            n_tr, n_va = round(len(ims) * 0.5), round(len(ims) * 0.2)
            name = (renames or {}).get(cat, cat)
            for dst, part in zip(out, (ims[:n_tr], ims[n_tr:n_tr + n_va], ims[n_tr + n_va:])):
                dst.extend((p, label, name) for p in part)
        return out
    finally:
        random.setstate(state)


def test_caltech101_built_from_folders(tmp_path, isolated_cache, caplog):
    img = tmp_path / "caltech-101" / "101_ObjectCategories"
    counts = {"BACKGROUND_Google": 5, "Faces": 5, "Faces_easy": 4, "Leopards": 4, "Motorbikes": 4,
              "airplanes": 5, "accordion": 6}
    write_class_folders(img, counts)
    with caplog.at_level(logging.WARNING, logger="mmrl.data"):
        s = load_dataset("Caltech101", tmp_path)
    assert "split_zhou_Caltech101.json" in caplog.text and "built" in caplog.text
    # labels from the ORIGINAL sorted names (uppercase first), renames after labelling
    assert s.classnames == ["face", "leopard", "motorbike", "accordion", "airplane"]
    by_class = {c: [0, 0, 0] for c in s.classnames}
    for k, items in enumerate((s.train, s.val, s.test)):
        for d in items:
            by_class[d.classname][k] += 1
    assert by_class["face"] == [2, 1, 2]  # 5 images -> round(2.5)=2 / 1 / 2
    assert by_class["leopard"] == [2, 1, 1] and by_class["accordion"] == [3, 1, 2]
    assert not any("BACKGROUND" in d.relpath or "Faces_easy" in d.relpath for d in s.train + s.val + s.test)
    ref = _coop_read_and_split(img, ("BACKGROUND_Google", "Faces_easy"),
                               {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard",
                                "Motorbikes": "motorbike"})
    assert (as_tuples(s.train), as_tuples(s.val), as_tuples(s.test)) == ref
    # the built split went to the cache, in the split-file format, and reads back identically
    built = list((isolated_cache / "splits").rglob("split_zhou_Caltech101.json"))
    assert len(built) == 1
    assert read_split_file(built[0], img) == (s.train, s.val, s.test)
    assert not (tmp_path / "caltech-101" / "split_zhou_Caltech101.json").exists()


def test_eurosat_built_renames(tmp_path):
    originals = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                 "PermanentCrop", "Residential", "River", "SeaLake"]
    write_class_folders(tmp_path / "eurosat" / "2750", {c: 4 for c in originals})
    s = load_dataset("EuroSAT", tmp_path)
    assert s.classnames == ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
                            "Industrial Buildings", "Pasture Land", "Permanent Crop Land", "Residential Buildings",
                            "River", "Sea or Lake"]
    assert (len(s.train), len(s.val), len(s.test)) == (20, 10, 10)


@pytest.mark.parametrize("name,folder,sub", [("DescribableTextures", "dtd", "images"),
                                             ("Food101", "food-101", "images")])
def test_folder_builds_and_too_few_images(tmp_path, name, folder, sub):
    img = tmp_path / folder / sub
    write_class_folders(img, {"b_class": 5, "a_class": 7})
    (img / "a_class" / ".hidden.jpg").write_bytes(b"")  # hidden files are not images of the dataset
    s = load_dataset(name, tmp_path)
    assert s.classnames == ["a_class", "b_class"]
    assert (len(s.train), len(s.val), len(s.test)) == (4 + 2, 1 + 1, 2 + 2)  # 7 -> 4/1/2 (round 3.5 = 4), 5 -> 2/1/2
    assert (as_tuples(s.train), as_tuples(s.val), as_tuples(s.test)) == _coop_read_and_split(img)
    # reading again gives the identical split (seeded, sorted listings)
    assert load_dataset(name, tmp_path).train == s.train
    write_class_folders(img, {"c_small": 3})
    with pytest.raises(DataError, match=r"'c_small' has 3 image\(s\).*at least 4"):
        load_dataset(name, tmp_path)


def test_oxford_pets_built_from_annotations(tmp_path):
    write_pets_raw(tmp_path)
    s = load_dataset("OxfordPets", tmp_path)
    assert s.classnames == ["abyssinian", "american_bulldog", "great_pyrenees"]  # id - 1, lowercased stem
    assert len(s.val) == 3 and len(s.train) == 12 and len(s.test) == 9  # round(0.2 * 5) = 1 per class
    # trainval -> train/val grouped by first appearance (american_bulldog listed first)
    assert s.val[0].classname == "american_bulldog" and s.train[0].classname == "american_bulldog"
    assert all(d.relpath.split("_")[0].lower() in d.classname for d in s.train)


def test_sun397_built_from_partitions(tmp_path):
    write_sun397_raw(tmp_path)
    s = load_dataset("sun397", tmp_path)
    assert s.classnames == ["abbey", "outdoor apartment_building", "shop bakery"]
    assert (len(s.train), len(s.val), len(s.test)) == (12, 3, 6)
    d = next(d for d in s.test if d.label == 1)
    assert d.relpath.startswith("a/apartment_building/outdoor/")


def test_ucf101_built_from_lists(tmp_path):
    write_ucf101_raw(tmp_path)
    s = load_dataset("ucf101", tmp_path)
    assert s.classnames == ["Apply_Eye_Makeup", "Yo_Yo", "Playing_Daf"]  # classInd order, CamelCase split
    assert (len(s.train), len(s.val), len(s.test)) == (9, 3, 6)
    assert all(d.relpath.endswith(".jpg") and os.path.isfile(d.impath) for d in s.train + s.val + s.test)
    assert s.test[0].relpath == "Apply_Eye_Makeup/v_ApplyEyeMakeup_g04_c01.jpg"


def _fake_scipy(monkeypatch, mats: dict):
    """scipy.io.loadmat stand-in returning arrays shaped like scipy's for the given file names."""
    io = types.ModuleType("scipy.io")
    io.loadmat = lambda path: mats[os.path.basename(path)]
    pkg = types.ModuleType("scipy")
    pkg.io = io
    monkeypatch.setitem(sys.modules, "scipy", pkg)
    monkeypatch.setitem(sys.modules, "scipy.io", io)


def _mat_records(rows):
    rec = np.zeros((1, len(rows)), dtype=[("fname", "O"), ("class", "O")])
    for i, (fname, cls) in enumerate(rows):
        rec[0, i] = (np.array([fname]), np.array([[cls]]))
    return rec


def test_stanford_cars_built_from_mat(tmp_path, monkeypatch):
    d = tmp_path / "stanford_cars"
    (d / "devkit").mkdir(parents=True)
    for f in ("devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat", "devkit/cars_meta.mat"):
        (d / f).write_bytes(b"")
    train_rows = [(f"{i:05d}.jpg", 1 + i % 2) for i in range(10)]
    test_rows = [(f"{i:05d}.jpg", 1 + i % 2) for i in range(4)]
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = np.array(["AM General Hummer SUV 2000"]), np.array(["Acura RL Sedan 2012"])
    _fake_scipy(monkeypatch, {"cars_train_annos.mat": {"annotations": _mat_records(train_rows)},
                              "cars_test_annos_withlabels.mat": {"annotations": _mat_records(test_rows)},
                              "cars_meta.mat": {"class_names": names}})
    s = load_dataset("cars", tmp_path)
    assert s.classnames == ["2000 AM General Hummer SUV", "2012 Acura RL Sedan"]  # year moved first
    assert (len(s.train), len(s.val), len(s.test)) == (8, 2, 4)
    assert s.test[0].relpath == "cars_test/00000.jpg" and s.train[0].relpath.startswith("cars_train/")


def test_oxford_flowers_built_from_mat(tmp_path, monkeypatch):
    d = tmp_path / "oxford_flowers"
    d.mkdir()
    (d / "imagelabels.mat").write_bytes(b"")
    (d / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "globe thistle"}))
    _fake_scipy(monkeypatch, {"imagelabels.mat": {"labels": np.array([[2, 1, 2, 1, 2, 1, 2, 1, 2]])}})
    s = load_dataset("flowers", tmp_path)
    assert s.classnames == ["pink primrose", "globe thistle"]
    assert (len(s.train), len(s.val), len(s.test)) == (2 + 2, 1 + 1, 2 + 1)  # 5 -> 2/1/2, 4 -> 2/1/1
    assert s.train[0].label == 1  # label 2 appears first in the label file, visited first
    assert {d.relpath for d in s.train + s.val + s.test} == {f"image_{i:05d}.jpg" for i in range(1, 10)}


def _savemat(path, data: dict) -> None:
    scipy_io = pytest.importorskip("scipy.io")  # a dependency (pyproject); skipped only where it is absent
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(str(path), data)


def _cars_annotations(rows) -> np.ndarray:
    """A 1 x N MATLAB struct array laid out as in the Stanford Cars devkit (bbox_*, class, fname)."""
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    rec = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (fname, cls) in enumerate(rows):
        box = [np.array([[v]], dtype=np.uint16) for v in (3, 5, 120, 90)]
        rec[0, i] = (*box, np.array([[cls]], dtype=np.uint8), fname)
    return rec


def test_stanford_cars_built_from_real_mat_files(tmp_path):
    """The .mat files written by scipy itself, in the devkit's layout: the reader needs scipy (a dependency)."""
    d = tmp_path / "stanford_cars"
    train_rows = [(f"{i:05d}.jpg", 1 + i % 2) for i in range(10)]
    test_rows = [(f"{i:05d}.jpg", 1 + i % 2) for i in range(4)]
    names = np.empty((1, 2), dtype=object)
    names[0, 0], names[0, 1] = "AM General Hummer SUV 2000", "Acura RL Sedan 2012"  # a 1 x 196 cell array
    _savemat(d / "devkit" / "cars_train_annos.mat", {"annotations": _cars_annotations(train_rows)})
    _savemat(d / "cars_test_annos_withlabels.mat", {"annotations": _cars_annotations(test_rows)})
    _savemat(d / "devkit" / "cars_meta.mat", {"class_names": names})
    s = load_dataset("cars", tmp_path)
    assert s.classnames == ["2000 AM General Hummer SUV", "2012 Acura RL Sedan"]  # year moved first
    assert (len(s.train), len(s.val), len(s.test)) == (8, 2, 4)
    assert [(d.relpath, d.label) for d in s.test] == [(f"cars_test/{f}", c - 1) for f, c in test_rows]
    assert sorted(d.relpath for d in s.train + s.val) == [f"cars_train/{f}" for f, _ in train_rows]


def test_oxford_flowers_built_from_real_mat_file(tmp_path):
    d = tmp_path / "oxford_flowers"
    _savemat(d / "imagelabels.mat", {"labels": np.array([[2, 1, 2, 1, 2, 1, 2, 1, 2]], dtype=np.float64)})
    (d / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "globe thistle"}))
    s = load_dataset("flowers", tmp_path)
    assert s.classnames == ["pink primrose", "globe thistle"]
    assert (len(s.train), len(s.val), len(s.test)) == (2 + 2, 1 + 1, 2 + 1)
    assert s.train[0].label == 1  # label 2 appears first in the label file, visited first
    assert {d.relpath for d in s.train + s.val + s.test} == {f"image_{i:05d}.jpg" for i in range(1, 10)}


def test_missing_split_without_raw_data_is_clear(tmp_path):
    (tmp_path / "stanford_cars").mkdir()
    with pytest.raises(MissingDataError, match="split_zhou_StanfordCars.json"):
        load_dataset("StanfordCars", tmp_path)
    with pytest.raises(MissingDataError, match="dataset folder"):
        load_dataset("dtd", tmp_path)


# --------------------------------------------------------------------------- paths, read-only folders, cache

@pytest.mark.parametrize("bad", ["../outside.jpg", "a/../../outside.jpg", "/etc/passwd", "C:\\x.jpg", "..\\x.jpg"])
def test_split_entries_escaping_the_folder_are_rejected(tmp_path, bad):
    entries = {"train": [["banded/ok.jpg", 0, "banded"], [bad, 0, "banded"]], "val": [], "test": []}
    path = write_split(tmp_path / "dtd", "DescribableTextures", entries)
    (tmp_path / "dtd" / "images").mkdir()
    with pytest.raises(DataError) as e:
        load_dataset("dtd", tmp_path)
    assert str(path) in str(e.value) and "train[1]" in str(e.value) and "escapes" in str(e.value)


def test_malformed_split_entry_named(tmp_path):
    path = write_split(tmp_path / "dtd", "DescribableTextures",
                       {"train": [["a.jpg", "0", "x"]], "val": [], "test": []})
    with pytest.raises(DataError, match=r"train\[0\].*expected \[relative path"):
        read_split_file(path, tmp_path)


def test_read_only_dataset_folder_cache_elsewhere(tmp_path, isolated_cache):
    img = tmp_path / "dtd" / "images"
    write_class_folders(img, {"a": 4, "b": 5})
    before = snapshot(tmp_path / "dtd")
    modes = []
    for p in [tmp_path / "dtd", *sorted((tmp_path / "dtd").rglob("*"))]:
        modes.append((p, p.stat().st_mode))
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        s = load_dataset("dtd", tmp_path)
        prepare_splits("dtd", tmp_path, shots=2, seed=1, subsample="base")
    finally:
        for p, m in reversed(modes):
            p.chmod(m)
    assert snapshot(tmp_path / "dtd") == before  # nothing written into the dataset folder
    assert len(s.train) == 4 and list(isolated_cache.rglob("split_zhou_DescribableTextures.json"))


def test_unwritable_cache_still_works(tmp_path, caplog):
    write_class_folders(tmp_path / "dtd" / "images", {"a": 4})
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="mmrl.data"):
        s = load_dataset("dtd", tmp_path, cache_dir=blocker / "cache")
    assert len(s.train) == 2 and "could not write" in caplog.text


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MMRL_CACHE_DIR", str(tmp_path / "m"))
    assert default_cache_dir() == tmp_path / "m"
    monkeypatch.delenv("MMRL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "mmrl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_cache_dir() == tmp_path / "h" / ".cache" / "mmrl"


def test_cache_dir_argument_overrides_env(tmp_path, isolated_cache):
    write_class_folders(tmp_path / "dtd" / "images", {"a": 4})
    load_dataset("dtd", tmp_path, cache_dir=tmp_path / "mine")
    assert list((tmp_path / "mine").rglob("*.json")) and not isolated_cache.exists()


def test_template_override_and_root_required(tmp_path):
    write_split_dataset(tmp_path, "dtd", "images", "DescribableTextures", ["a", "b"])
    assert load_dataset("dtd", tmp_path, template="a {} pattern.").template == "a {} pattern."
    with pytest.raises(DataError, match="exactly once"):
        load_dataset("dtd", tmp_path, template="no placeholder")
    with pytest.raises(DataError, match="root"):
        load_dataset("dtd", None)
