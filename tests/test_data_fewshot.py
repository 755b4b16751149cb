"""Few-shot sampling vs Dassl, base/novel, and split-file export/import (incl. the CLI)."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from fixtures_data import (
    as_tuples,
    coop_subsample,
    dassl_fewshot,
    write_imagenet,
    write_split_dataset,
)
from mmrl.cli import main as cli_main
from mmrl.data import (
    DatasetSplits,
    Datum,
    fewshot,
    load_dataset,
    prepare_splits,
    read_split_file,
    set_random_seed,
    subsample_classes,
    write_split_file,
)


def _items(label_counts: list[tuple[int, int]], prefix: str = "x") -> list[Datum]:
    """Items in an interleaved order: round-robin over (label, count) so groups appear out of label order."""
    pending = [[(y, i) for i in range(n)] for y, n in label_counts]
    out = []
    while any(pending):
        for q in pending:
            if q:
                y, i = q.pop(0)
                out.append(Datum(f"/d/{prefix}{y}_{i}.jpg", y, f"class{y}", f"{prefix}{y}_{i}.jpg"))
    return out


# classes with many, exactly-k and fewer-than-k items; first appearance 3, 0, 5, 1, 2, 4
TRAIN_COUNTS = [(3, 20), (0, 16), (5, 9), (1, 3), (2, 1), (4, 8)]
VAL_COUNTS = [(0, 6), (3, 4), (1, 2), (2, 5), (5, 3), (4, 4)]


@pytest.mark.parametrize("seed", [1, 2, 3, 17])
@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
def test_fewshot_matches_dassl(seed, shots):
    train, val = _items(TRAIN_COUNTS, "t"), _items(VAL_COUNTS, "v")
    rng = random.Random(seed)
    got_train = fewshot(train, shots, rng)
    got_val = fewshot(val, min(shots, 4), rng)  # same stream continues
    ref_train, ref_val = dassl_fewshot(as_tuples(train), as_tuples(val), shots, seed)
    assert as_tuples(got_train) == ref_train
    assert as_tuples(got_val) == ref_val


def test_fewshot_fewer_than_k_keeps_all_and_consumes_nothing():
    items = _items([(0, 2), (1, 3)])
    rng = random.Random(5)
    assert fewshot(items, 4, rng) == sorted(items, key=lambda d: (d.label, d.relpath))  # all kept, list order
    assert rng.random() == random.Random(5).random()  # no randomness consumed
    rng = random.Random(5)
    exact = fewshot(_items([(0, 4)]), 4, rng)  # exactly k: still through sample (a permutation)
    assert sorted(d.relpath for d in exact) == sorted(d.relpath for d in _items([(0, 4)]))
    assert rng.random() != random.Random(5).random()
    assert fewshot(items, 0, random.Random(1)) == items and fewshot(items, -1, random.Random(1)) == items


def test_fewshot_does_not_touch_global_rngs():
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    fewshot(_items(TRAIN_COUNTS), 4, random.Random(1))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_set_random_seed_seeds_all_three():
    set_random_seed(7)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_random_seed(7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    random.seed(7)
    assert a[0] == random.random()


def _splits(train, val, test, n_classes) -> DatasetSplits:
    return DatasetSplits("T", None, train, val, test, [f"class{i}" for i in range(n_classes)], "{}")


@pytest.mark.parametrize("n_classes", [5, 6])
def test_base_novel(n_classes):
    train = _items([(y, 3) for y in range(n_classes)][::-1], "t")
    test = _items([(y, 2) for y in range(n_classes)], "e")
    s = _splits(train, [], test, n_classes)
    m = -(-n_classes // 2)
    base = subsample_classes(s, "base")
    new = subsample_classes(s, "new")
    assert base.classnames == [f"class{i}" for i in range(m)]
    assert new.classnames == [f"class{i}" for i in range(m, n_classes)]
    for sub, got in (("base", base), ("new", new)):
        ref = coop_subsample(as_tuples(train), [], as_tuples(test), sub)
        assert (as_tuples(got.train), as_tuples(got.val), as_tuples(got.test)) == ref
        assert all(got.classnames[d.label] == d.classname for d in got.train + got.test)
    assert subsample_classes(s, "all").train == train
    with pytest.raises(ValueError, match="subsample"):
        subsample_classes(s, "novel")


def test_base_novel_uses_labels_present_in_train():
    # label 2 absent from the few-shot train: n = 3 present labels -> base {0, 1}, novel {3}
    train = _items([(0, 1), (1, 1), (3, 1)])
    test = _items([(y, 1) for y in range(4)])
    s = _splits(train, [], test, 4)
    new = subsample_classes(s, "new")
    assert new.classnames == ["class3"] and [d.label for d in new.test] == [0]


@pytest.mark.parametrize("seed,shots,sub", [(1, 1, "all"), (2, 2, "base"), (3, 4, "new"), (1, 16, "base")])
def test_prepare_splits_matches_coop_pipeline(tmp_path, seed, shots, sub):
    entries = write_split_dataset(tmp_path, "dtd", "images", "DescribableTextures",
                                  [f"tex{i}" for i in range(5)], counts=(6, 3, 2))
    got = prepare_splits("dtd", tmp_path, shots=shots, seed=seed, subsample=sub)
    tr, va = dassl_fewshot([tuple(e) for e in entries["train"]], [tuple(e) for e in entries["val"]], shots, seed)
    ref = coop_subsample(tr, va, [tuple(e) for e in entries["test"]], sub)
    assert (as_tuples(got.train), as_tuples(got.val), as_tuples(got.test)) == ref


def test_prepare_splits_imagenet_val_is_test(tmp_path):
    write_imagenet(tmp_path, n_train=5, n_val=2)
    full = load_dataset("imagenet", tmp_path)
    got = prepare_splits("imagenet", tmp_path, shots=3, seed=2, subsample="new")
    tr, _ = dassl_fewshot(as_tuples(full.train), None, 3, 2, val_is_test=True)
    ref = coop_subsample(tr, as_tuples(full.test), as_tuples(full.test), "new")
    assert (as_tuples(got.train), as_tuples(got.val), as_tuples(got.test)) == ref


def test_split_file_round_trip_via_cli(tmp_path, capsys):
    write_split_dataset(tmp_path, "dtd", "images", "DescribableTextures", [f"tex{i}" for i in range(4)],
                        counts=(5, 3, 2))
    out = tmp_path / "out" / "split.json"
    rc = cli_main(["data", "split", "--dataset", "dtd", "--root", str(tmp_path), "--shots", "2", "--seed", "3",
                   "--subsample", "base", "--out", str(out)])
    assert rc == 0 and out.is_file()
    obj = json.loads(out.read_text())
    expected = prepare_splits("DescribableTextures", tmp_path, shots=2, seed=3, subsample="base")
    for key in ("train", "val", "test"):
        assert [tuple(e) for e in obj[key]] == as_tuples(getattr(expected, key))
    assert {e[1] for e in obj["train"]} == {0, 1}  # relabelled base classes
    # the engine's --split-file: used as is, nothing re-sampled
    again = prepare_splits("dtd", tmp_path, shots=1, seed=99, subsample="new", split_file=out)
    assert (again.train, again.val, again.test) == (expected.train, expected.val, expected.test)
    assert again.classnames == expected.classnames == ["tex0", "tex1"]
    # write_split_file / read_split_file round trip
    p2 = tmp_path / "again.json"
    write_split_file(again, p2)
    assert read_split_file(p2, again.image_dir) == (again.train, again.val, again.test)
    assert json.loads(p2.read_text()) == obj
    assert not list(p2.parent.glob(".again.json.*"))  # no temporary file left behind


def test_cli_split_errors(tmp_path, capsys):
    rc = cli_main(["data", "split", "--dataset", "nonexistent", "--root", str(tmp_path), "--out",
                   str(tmp_path / "x.json")])
    assert rc == 1 and "unknown dataset" in capsys.readouterr().err
    rc = cli_main(["data", "split", "--dataset", "dtd", "--root", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert rc == 1 and "dtd" in capsys.readouterr().err
