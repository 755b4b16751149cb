"""User data: folder:, manifest: (CSV/JSON) and a folder with dataset.json."""
from __future__ import annotations

import csv
import json

import pytest

from fixtures_data import (  # noqa: F401  (isolated_cache is an autouse fixture)
    as_tuples,
    coop_subsample,
    dassl_fewshot,
    isolated_cache,
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
    assert (len(s.train), len(s.val), len(s.test)) == (2 + 2 + 3, 1 + 1 + 1, 1 + 2 + 2)
    assert all(d.relpath.split("/")[0] == s.classnames[d.label] for d in s.train + s.val + s.test)
    assert load_dataset(f"folder:{data}", None).train == s.train  # deterministic
    other = load_dataset(f"folder:{data}", None, split_seed=2)
    assert {d.relpath for d in other.train} != {d.relpath for d in s.train}
    assert list(isolated_cache.rglob("split-seed1.json")) and list(isolated_cache.rglob("split-seed2.json"))
    assert load_dataset(f"folder:{data}", None, template="a {} in the wild.").template == "a {} in the wild."


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
    assert (len(a.train), len(a.val), len(a.test)) == (4, 2, 4)
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
    assert s.classnames == ["x", "y"] and (len(s.train), len(s.val), len(s.test)) == (4, 2, 3)
