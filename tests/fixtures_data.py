"""Tiny on-disk datasets in the exact CoOp layouts, for the data tests.

Every writer takes a root folder (pytest's tmp_path) and returns what the
test needs to know about what it wrote. Images are 8x8 (or as asked)
PNG/JPEG files whose pixels depend on the file name, so they are distinct.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = int.from_bytes(hashlib.md5(str(path.name).encode()).digest()[:4], "little")
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.fromarray(arr).save(path, format=fmt)
    return path


def write_split(dataset_dir: Path, name: str, entries: dict[str, list[list]]) -> Path:
    path = dataset_dir / f"split_zhou_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def split_entries(classes: list[str], counts=(4, 2, 3), prefix: str = "", ext: str = ".jpg",
                  layout: str = "{cls}/{cls}_{i}") -> dict[str, list[list]]:
    """Split-file entries with `counts` (train, val, test) images per class; labels = list index.

    Train entries are interleaved across classes (class order 1, 0, 2, ...
    in places) so that first-appearance order differs from label order.
    """
    out: dict[str, list[list]] = {}
    i = 0
    for key, n in zip(("train", "val", "test"), counts):
        rows = []
        for k in range(n):
            for y, c in enumerate(classes):
                rows.append([prefix + layout.format(cls=c.replace(" ", "_"), i=i) + ext, y, c])
                i += 1
        if key == "train" and len(rows) > 2:
            rows[0], rows[1] = rows[1], rows[0]  # label 1 appears first
        out[key] = rows
    return out


def write_split_dataset(root: Path, folder: str, image_subdir: str, name: str, classes: list[str],
                        counts=(4, 2, 3), prefix: str = "", layout: str = "{cls}/{cls}_{i}", ext: str = ".jpg"):
    """A dataset with a split_zhou file and the images it lists; returns the entries."""
    d = root / folder
    img = d / image_subdir if image_subdir else d
    entries = split_entries(classes, counts, prefix, ext, layout)
    for rows in entries.values():
        for rel, _, _ in rows:
            write_image(img / rel)
    write_split(d, name, entries)
    return entries


def stable_parts(relpaths_by_class: dict[str, list[str]], seed: int = 1) -> dict[str, str]:
    """Ground truth of the user-data split (written from the rule in docs, not from the code):
    u = first 8 bytes (big-endian) of SHA-256("<seed>:<relpath>") / 2**64; u < 0.5 train,
    u < 0.7 val, else test -- except in a class where a part would be empty, which takes CoOp's
    counts round(0.5 n) / round(0.2 n) / rest over its images sorted by u. -> {relpath: part}."""
    out = {}
    for paths in relpaths_by_class.values():
        u = {p: int.from_bytes(hashlib.sha256(f"{seed}:{p}".encode()).digest()[:8], "big") / 2 ** 64 for p in paths}
        parts = {p: "train" if x < 0.5 else "val" if x < 0.7 else "test" for p, x in u.items()}
        if len(set(parts.values())) < 3:
            ranked = sorted(paths, key=lambda p: (u[p], p))
            n_tr, n_va = round(len(paths) * 0.5), round(len(paths) * 0.2)
            parts = {p: "train" if i < n_tr else "val" if i < n_tr + n_va else "test" for i, p in enumerate(ranked)}
        out.update(parts)
    return out


def parts_of(splits) -> dict[str, str]:
    """{relpath: "train" | "val" | "test"} of a DatasetSplits."""
    return {d.relpath: part for part in ("train", "val", "test") for d in getattr(splits, part)}


def write_class_folders(image_dir: Path, counts: dict[str, int], ext: str = ".jpg") -> None:
    for c, n in counts.items():
        for i in range(n):
            write_image(image_dir / c / f"{c.lower()}_{i:03d}{ext}")


# --------------------------------------------------------------------------- per-dataset raw layouts

IMAGENET_WNIDS = ["n01443537", "n01440764", "n01484850"]  # classnames.txt order is not sorted order
IMAGENET_NAMES = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def write_imagenet(root: Path, n_train: int = 5, n_val: int = 2) -> Path:
    d = root / "imagenet"
    d.mkdir(parents=True, exist_ok=True)
    lines = [f"{w} {IMAGENET_NAMES[w]}" for w in IMAGENET_WNIDS] + ["n09999999 not present class"]
    (d / "classnames.txt").write_text("\n".join(lines) + "\n")
    for w in IMAGENET_WNIDS:
        for i in range(n_train):
            write_image(d / "images" / "train" / w / f"{w}_{i}.JPEG")
        for i in range(n_val):
            write_image(d / "images" / "val" / w / f"ILSVRC2012_val_{w}_{i}.JPEG")
    (d / "images" / "train" / IMAGENET_WNIDS[0] / ".DS_Store").write_text("x")  # hidden: ignored
    (d / "images" / "train" / IMAGENET_WNIDS[0] / "notes.txt").write_text("x")  # not an image: ignored
    return d


def write_fgvc(root: Path) -> tuple[Path, list[str]]:
    d = root / "fgvc_aircraft"
    variants = ["Cessna 172", "707-320", "A300B4"]  # label = line index, not sorted order
    (d / "images").mkdir(parents=True)
    (d / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for split, per in (("train", 3), ("val", 2), ("test", 2)):
        lines = []
        for k in range(per):
            for v in variants:
                img_id = f"{1000000 + n:07d}"
                n += 1
                write_image(d / "images" / f"{img_id}.jpg")
                lines.append(f"{img_id} {v}")
        (d / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return d, variants


def write_imagenetv2(root: Path, n_classes: int = 11) -> Path:
    d = root / "imagenetv2"
    img = d / "imagenetv2-matched-frequency-format-val"
    img.mkdir(parents=True)
    (d / "classnames.txt").write_text("".join(f"n{i:08d} class number {i}\n" for i in range(n_classes)))
    for i in range(n_classes):
        write_image(img / str(i) / f"img{i}.jpeg")
    return d


def write_wnid_variant(root: Path, folder: str, image_subdir: str, present: list[str], all_wnids: list[str]) -> Path:
    d = root / folder
    img = d / image_subdir
    img.mkdir(parents=True)
    (d / "classnames.txt").write_text("".join(f"{w} name of {w}\n" for w in all_wnids))
    for w in present:
        for i in range(2):
            write_image(img / w / f"{w}_{i}.jpg")
    (img / "README.txt").write_text("not a class")
    return d


def write_pets_raw(root: Path) -> Path:
    d = root / "oxford_pets"
    breeds = [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Great_Pyrenees", 3, 2)]
    tv, te = [], []
    for name, cid, species in breeds:
        for i in range(1, 9):
            stem = f"{name}_{i}"
            write_image(d / "images" / f"{stem}.jpg")
            (tv if i <= 5 else te).append(f"{stem} {cid} {species} {i}")
    (d / "annotations").mkdir(parents=True)
    # interleave classes so that label order != first-appearance order
    tv = tv[5:10] + tv[:5] + tv[10:]
    (d / "annotations" / "trainval.txt").write_text("\n".join(tv) + "\n")
    (d / "annotations" / "test.txt").write_text("\n".join(te) + "\n")
    return d


def write_sun397_raw(root: Path) -> Path:
    d = root / "sun397"
    classes = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop"]
    (d / "SUN397").mkdir(parents=True)
    (d / "ClassName.txt").write_text("\n".join(classes) + "\n")
    tr, te = [], []
    for c in classes:
        for i in range(7):
            rel = f"{c}/sun_{c.replace('/', '')}{i}.jpg"
            write_image(d / "SUN397" / rel[1:])
            (tr if i < 5 else te).append(rel)
    (d / "Training_01.txt").write_text("\n".join(tr) + "\n")
    (d / "Testing_01.txt").write_text("\n".join(te) + "\n")
    return d


def write_ucf101_raw(root: Path) -> Path:
    d = root / "ucf101"
    lists = d / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    actions = ["ApplyEyeMakeup", "YoYo", "PlayingDaf"]
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {a}\r\n" for i, a in enumerate(actions)))
    tr, te = [], []
    for i, a in enumerate(actions):
        for g in range(6):
            video = f"v_{a}_g{g:02d}_c01"
            renamed = {"ApplyEyeMakeup": "Apply_Eye_Makeup", "YoYo": "Yo_Yo", "PlayingDaf": "Playing_Daf"}[a]
            write_image(d / "UCF-101-midframes" / renamed / f"{video}.jpg")
            (tr if g < 4 else te).append(f"{a}/{video}.avi {i + 1}" if g < 4 else f"{a}/{video}.avi")
    (lists / "trainlist01.txt").write_text("\n".join(tr) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(te) + "\n")
    return d


# --------------------------------------------------------------------------- independent references

def dassl_fewshot(train: list, val: list, shots: int, seed: int, val_is_test: bool = False):
    """Dassl's generate_fewshot_dataset as CoOp calls it, with the GLOBAL random module.

    Items are (path, label, classname) tuples. The caller's global random
    state is restored afterwards so the test suite is not disturbed.
    """
    state = random.getstate()
    try:
        random.seed(seed)

        def generate(data_source, num_shots):
            tracker = defaultdict(list)
            for item in data_source:
                tracker[item[1]].append(item)
            dataset = []
            for label, items in tracker.items():
                if len(items) >= num_shots:
                    sampled_items = random.sample(items, num_shots)
                else:
                    sampled_items = items
                dataset.extend(sampled_items)
            return dataset

        new_train = generate(train, shots)
        new_val = val if val_is_test else generate(val, min(shots, 4))
        return new_train, new_val
    finally:
        random.setstate(state)


def coop_subsample(train: list, val: list, test: list, subsample: str):
    """CoOp's OxfordPets.subsample_classes on (path, label, classname) tuples."""
    if subsample == "all":
        return train, val, test
    labels = sorted({item[1] for item in train})
    m = -(-len(labels) // 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    return tuple([(p, relabeler[y], c) for p, y, c in items if y in selected] for items in (train, val, test))


def as_tuples(items) -> list[tuple]:
    return [(d.relpath, d.label, d.classname) for d in items]


def snapshot(folder: Path) -> dict[str, int]:
    """{relative path: size} of everything under `folder` (to prove nothing was written there)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}
