"""User data: folder:, manifest: (CSV/JSON) and a folder with dataset.json."""
from __future__ import annotations

import csv
import json

import pytest

from fixtures_data import (
    as_tuples,
    coop_subsample,
    dassl_fewshot,
    parts_of,
    stable_parts,
    write_class_folders,
    write_image,
    write_split_dataset,
)
from mmrl.cli import main as cli_main
from mmrl.data import DataError, MissingDataError, canonical_name, dataset_template, load_dataset, prepare_splits


def test_folder_dataset(tmp_path, isolated_cache):
    data = tmp_path / "my_data"
    write_class_folders(data, {"cat": 5, "dog": 6, "Zebra_fish": 4}, ext=".png")
    (data / "dog" / "readme.txt").write_text("not an image")
    (data / "loose.jpg").write_bytes(b"")  # files beside the class folders are not classes
    s = load_dataset(f"folder:{data}", None)
    assert s.name == "folder:my_data" and s.image_dir == data
    assert s.classnames == ["Zebra_fish", "cat", "dog"]  # sorted folder names, kept as is
    assert s.template == "a photo of a {}."
    files = {c: [f"{c}/{c.lower()}_{i:03d}.png" for i in range(n)]
             for c, n in {"cat": 5, "dog": 6, "Zebra_fish": 4}.items()}
    assert parts_of(s) == stable_parts(files)  # each image's part from its path's hash
    assert all({d.classname for d in part} == set(s.classnames) for part in (s.train, s.val, s.test))
    assert all(d.relpath.split("/")[0] == s.classnames[d.label] for d in s.train + s.val + s.test)
    assert load_dataset(f"folder:{data}", None).train == s.train  # deterministic
    other = load_dataset(f"folder:{data}", None, split_seed=2)
    assert {d.relpath for d in other.train} != {d.relpath for d in s.train}
    assert list(isolated_cache.rglob("split-seed1.json")) and list(isolated_cache.rglob("split-seed2.json"))
    assert load_dataset(f"folder:{data}", None, template="a {} in the wild.").template == "a {} in the wild."


def test_folder_split_stays_put_when_images_come_and_go(tmp_path):
    """Adding or removing images moves no other image between train, val and test (folder: and
    manifest:), and each part follows the documented hash rule."""
    data = tmp_path / "grow"
    write_class_folders(data, {"ant": 30, "bee": 40})
    before = parts_of(load_dataset(f"folder:{data}", None))
    files = {c: [f"{c}/{c}_{i:03d}.jpg" for i in range(n)] for c, n in (("ant", 30), ("bee", 40))}
    assert before == stable_parts(files)
    write_image(data / "ant" / "ant_new.jpg")
    write_image(data / "bee" / "bee_new.jpg")
    gone = next(p for p, part in before.items() if part == "train")
    (data / gone).unlink()
    after = parts_of(load_dataset(f"folder:{data}", None))
    assert set(after) == set(before) - {gone} | {"ant/ant_new.jpg", "bee/bee_new.jpg"}
    assert all(after[p] == before[p] for p in before if p != gone)
    # a manifest: one more row leaves every other row where it was
    base = tmp_path / "m"
    rows = _write_manifest_images(base, 25)
    (base / "a.json").write_text(json.dumps(rows))
    write_image(base / "imgs" / "red_extra.jpg")
    (base / "b.json").write_text(json.dumps(rows + [{"path": "imgs/red_extra.jpg", "label": "red car"}]))
    m1, m2 = (parts_of(load_dataset(f"manifest:{base / n}", None)) for n in ("a.json", "b.json"))
    assert set(m2) - set(m1) == {"imgs/red_extra.jpg"} and all(m2[p] == m1[p] for p in m1)


def test_stable_split_proportions_and_small_classes():
    """50/20/30 in expectation on a large class (binomial: within 4 standard deviations), and every
    part non-empty in small classes (the CoOp counts where the per-image rule leaves one empty)."""
    from mmrl.data.splits import split_groups_stable

    n = 3000
    tr, va, te = split_groups_stable([(0, "c", [f"c/{i}.jpg" for i in range(n)])], "/img", 7, "test")
    for got, p in ((len(tr), 0.5), (len(va), 0.2), (len(te), 0.3)):
        assert abs(got - p * n) < 4 * (n * p * (1 - p)) ** 0.5, (got, p)
    groups = [(y, f"k{y}", [f"k{y}/{i}.png" for i in range(4 + y)]) for y in range(9)]  # 4..12 images
    tr, va, te = split_groups_stable(groups, "/img", 1, "test")
    for y, _, paths in groups:
        counts = [sum(d.label == y for d in part) for part in (tr, va, te)]
        assert min(counts) >= 1 and sum(counts) == len(paths), (y, counts)
    assert {(d.relpath, part) for part, items in (("train", tr), ("val", va), ("test", te)) for d in items} == \
        set(stable_parts({c: p for _, c, p in groups}).items())


def test_folder_path_relative_to_root_and_errors(tmp_path):
    write_class_folders(tmp_path / "mine", {"a": 4, "b": 4})
    assert load_dataset("folder:mine", tmp_path).classnames == ["a", "b"]
    with pytest.raises(MissingDataError):
        load_dataset("folder:does_not_exist", tmp_path)
    write_class_folders(tmp_path / "small", {"a": 4, "b": 2})
    with pytest.raises(DataError, match="'b' has 2 image"):
        load_dataset("folder:small", tmp_path)


def _write_manifest_images(base, n_per_class=5):
    rows = []
    for c in ("red car", "blue car"):
        for i in range(n_per_class):
            rel = f"imgs/{c.split()[0]}_{i}.jpg"
            write_image(base / rel)
            rows.append({"path": rel, "label": c})
    return rows


def test_manifest_csv_and_json(tmp_path):
    base = tmp_path / "m"
    rows = _write_manifest_images(base)
    with open(base / "list.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label"])
        w.writeheader()
        w.writerows(rows[::-1])  # manifest order does not matter for a built split
    (base / "list.json").write_text(json.dumps(rows))
    a = load_dataset(f"manifest:{base / 'list.csv'}", None)
    b = load_dataset(f"manifest:{base / 'list.json'}", None)
    assert a.classnames == b.classnames == ["blue car", "red car"]
    assert as_tuples(a.train) == as_tuples(b.train) and as_tuples(a.test) == as_tuples(b.test)
    assert parts_of(a) == stable_parts({c: [r["path"] for r in rows if r["label"] == c] for c in a.classnames})
    assert a.image_dir == base and a.train[0].impath == str(base / a.train[0].relpath)
    assert a.name == "manifest:list"


def test_manifest_with_split_column_and_bad_entries(tmp_path):
    base = tmp_path / "m"
    rows = _write_manifest_images(base, 3)
    for i, r in enumerate(rows):
        r["split"] = ["train", "val", "test"][i % 3]
    (base / "s.json").write_text(json.dumps(rows))
    s = load_dataset(f"manifest:{base / 's.json'}", None)
    assert [d.relpath for d in s.train] == [r["path"] for r in rows if r["split"] == "train"]
    (base / "bad.json").write_text(json.dumps([{"path": "../x.jpg", "label": "a"}]))
    with pytest.raises(DataError, match=r"bad.json: entry 0.*escapes"):
        load_dataset(f"manifest:{base / 'bad.json'}", None)
    (base / "noheader.csv").write_text("file,class\na.jpg,x\n")
    with pytest.raises(DataError, match="path,label"):
        load_dataset(f"manifest:{base / 'noheader.csv'}", None)


def _write_task(tmp_path, with_json=True):
    task = tmp_path / "task"
    entries = write_split_dataset(tmp_path, "task", "images", "unused", [f"shape{i}" for i in range(4)],
                                  counts=(5, 3, 2))
    (task / "split_zhou_unused.json").rename(task / "split.json")
    if with_json:
        (task / "dataset.json").write_text(json.dumps({"name": "toy_shapes", "template": "a {} shape.",
                                                       "image_dir": "images", "split_file": "split.json"}))
    return task, entries


def test_dataset_json_works_like_a_benchmark(tmp_path):
    task, entries = _write_task(tmp_path)
    for spec in (f"dataset:{task}", f"folder:{task}", str(task), f"dataset:{task / 'dataset.json'}"):
        s = load_dataset(spec, None)
        assert s.name == "toy_shapes" and s.template == "a {} shape." and s.image_dir == task / "images"
        assert [[d.relpath, d.label, d.classname] for d in s.train] == entries["train"]
    assert canonical_name(str(task)) == f"dataset:{task}"
    assert dataset_template(f"dataset:{task}") == "a {} shape."
    for seed, shots, sub in ((1, 2, "base"), (2, 4, "new"), (3, 1, "all")):
        got = prepare_splits(f"dataset:{task}", None, shots=shots, seed=seed, subsample=sub)
        tr, va = dassl_fewshot([tuple(e) for e in entries["train"]], [tuple(e) for e in entries["val"]], shots, seed)
        ref = coop_subsample(tr, va, [tuple(e) for e in entries["test"]], sub)
        assert (as_tuples(got.train), as_tuples(got.val), as_tuples(got.test)) == ref


def test_dataset_json_cli_split_round_trip(tmp_path):
    task, _ = _write_task(tmp_path)
    out = tmp_path / "exported.json"
    assert cli_main(["data", "split", "--dataset", f"dataset:{task}", "--shots", "2", "--seed", "1",
                     "--subsample", "new", "--out", str(out)]) == 0
    again = prepare_splits(f"dataset:{task}", None, shots=0, seed=0, split_file=out)
    ref = prepare_splits(f"dataset:{task}", None, shots=2, seed=1, subsample="new")
    assert (again.train, again.val, again.test, again.classnames) == (ref.train, ref.val, ref.test, ref.classnames)


def test_dataset_json_errors(tmp_path):
    task, _ = _write_task(tmp_path)
    (task / "dataset.json").write_text(json.dumps({"name": "x", "split_file": "../elsewhere.json"}))
    with pytest.raises(DataError, match="split_file.*escapes"):
        load_dataset(f"dataset:{task}", None)
    (task / "dataset.json").write_text(json.dumps({"name": "x", "splitfile": "split.json"}))
    with pytest.raises(DataError, match="unknown key"):
        load_dataset(f"dataset:{task}", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match="dataset.json"):
        load_dataset(f"dataset:{tmp_path / 'empty'}", None)


def test_dataset_json_without_split_file_builds_one(tmp_path):
    task = tmp_path / "t"
    write_class_folders(task / "pics", {"x": 4, "y": 5})
    (task / "dataset.json").write_text(json.dumps({"name": "t", "image_dir": "pics"}))
    s = load_dataset(f"dataset:{task}", None)
    assert s.classnames == ["x", "y"]
    assert parts_of(s) == stable_parts({c: [f"{c}/{c}_{i:03d}.jpg" for i in range(n)]
                                        for c, n in (("x", 4), ("y", 5))})


def test_folder_dataset_reads_images_in_sub_folders_of_a_class(tmp_path, isolated_cache):
    """<class>/<sub>/<image> belongs to <class> at any depth (as torchvision's ImageFolder); hidden
    folders and a symlinked folder (which could loop) are not walked."""
    import os

    data = tmp_path / "my_data"
    write_class_folders(data, {"cat": 4, "dog": 4}, ext=".png")
    for rel in ("cat/indoor/a.png", "cat/indoor/deeper/b.png", "dog/outdoor/c.jpg"):
        write_image(data / rel)
    write_image(data / "dog" / ".thumbs" / "hidden.png")
    os.symlink(data / "cat", data / "dog" / "loop")
    s = load_dataset(f"folder:{data}", None)
    got = sorted(d.relpath for d in s.train + s.val + s.test)
    assert "cat/indoor/a.png" in got and "cat/indoor/deeper/b.png" in got and "dog/outdoor/c.jpg" in got
    assert len(got) == 11 and not any(".thumbs" in r or "/loop/" in r for r in got)
    assert all(s.classnames[d.label] == d.relpath.split("/")[0] for d in s.train + s.val + s.test)
