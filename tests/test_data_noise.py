"""Label noise of the training shots (data.noise.*): JoAPR's protocol, image for image.

tests/data/joapr_noise_expected.json holds two small datasets in CoOp's split-file layout and, for
both noise types, three seeds and several (shots, wrong shots), the training and validation lists
that JoAPR's own functions drew from them (generate_fewshot_dataset_with_{symflip,pairflip}_noise,
then Dassl's generate_fewshot_dataset(val, min(shots, 4)), called as JoAPR's datasets/dtd.py calls
them). They were produced once, outside this project, by tests/data/make_joapr_expected.py; the
project holds none of JoAPR's code.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fixtures_data import as_tuples, write_split
from mmrl.cli import main as cli_main
from mmrl.config import (
    IMBALANCE_ORDERS,
    IMBALANCE_TYPES,
    NOISE_TYPES,
    ConfigError,
    resolve_config,
)
from mmrl.data import DataError, corruption_record, prepare_splits, read_split_file, write_split_file
from mmrl.data import imbalance as imbalance_mod
from mmrl.data import noise as noise_mod

EXPECTED = json.loads((Path(__file__).parent / "data" / "joapr_noise_expected.json").read_text())
CASES = EXPECTED["cases"]


def _case_id(c: dict) -> str:
    return f"{c['dataset']}-{c['type']}-seed{c['seed']}-{c['shots']}shots-{c['wrong']}wrong"


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    """Each stored dataset as dtd/split_zhou_DescribableTextures.json under its own root (sampling
    reads the split file only, so no image is written)."""
    out = {}
    for name, entries in EXPECTED["datasets"].items():
        root = tmp_path_factory.mktemp(name)
        write_split(root / "dtd", "DescribableTextures", entries)
        out[name] = root
    return out


def _noisy(root, *, shots=16, wrong=4, kind="symflip", seed=1, subsample="all"):
    return prepare_splits("dtd", root, shots=shots, seed=seed, subsample=subsample, noise_type=kind,
                          noise_shots=wrong)


def _halves(entries: dict) -> tuple[dict[str, int], dict[str, int]]:
    """{relpath: label} of each class's first ceil(n / 2) training images (in list order) and of the rest."""
    by_class: dict[int, list[str]] = {}
    for rel, y, _ in entries["train"]:
        by_class.setdefault(y, []).append(rel)
    first, second = {}, {}
    for y, rels in by_class.items():
        h = math.ceil(len(rels) / 2)
        first.update({r: y for r in rels[:h]})
        second.update({r: y for r in rels[h:]})
    return first, second


# --------------------------------------------------------------------------- JoAPR, image for image

def test_expected_lists_cover_both_types_several_seeds_and_levels():
    assert {c["type"] for c in CASES} == {"symflip", "pairflip"}
    assert {c["seed"] for c in CASES} == {1, 2, 3}
    assert {c["wrong"] for c in CASES} >= {0, 2, 4, 8, 12}
    assert set(EXPECTED["datasets"]) == {"interleaved", "grouped"}


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_joapr(roots, case):
    s = _noisy(roots[case["dataset"]], shots=case["shots"], wrong=case["wrong"], kind=case["type"],
               seed=case["seed"])
    assert [[d.relpath, d.label, d.true_label] for d in s.train] == case["train"]
    assert [[d.relpath, d.label] for d in s.val] == case["val"]  # the same Python stream continues


# --------------------------------------------------------------------------- the sampler's properties

@pytest.mark.parametrize("kind", ["symflip", "pairflip"])
@pytest.mark.parametrize("wrong", [0, 3, 8])
def test_counts_sources_and_recorded_labels(roots, kind, wrong):
    entries = EXPECTED["datasets"]["interleaved"]
    first, second = _halves(entries)
    s = _noisy(roots["interleaved"], shots=8, wrong=wrong, kind=kind, seed=2)
    C = s.num_classes
    assert len(s.train) == 8 * C and s.train_counts() == [8] * C
    for y in range(C):
        rows = [d for d in s.train if d.label == y]
        assert all(d.classname == s.classnames[y] for d in rows)
        bad, good = rows[:wrong], rows[wrong:]  # JoAPR puts the wrong shots first
        assert all(d.true_label != y and second[d.relpath] == d.true_label for d in bad)
        assert all(d.true_label == y and first[d.relpath] == y for d in good)  # own shots: first half only
        if kind == "pairflip":
            assert all(d.true_label == (y + 1) % C for d in bad)
    if kind == "symflip":  # no image lent to two classes
        lent = {}
        for d in s.train:
            if d.true_label != d.label:
                assert lent.setdefault(d.relpath, d.label) == d.label
    assert noise_mod.noise_rate(s.train) == pytest.approx(wrong / 8)


def test_zero_wrong_shots_is_joapr_clean_sampling_not_coop(roots):
    clean = prepare_splits("dtd", roots["interleaved"], shots=16, seed=1)
    for kind in ("symflip", "pairflip"):
        s = _noisy(roots["interleaved"], shots=16, wrong=0, kind=kind)
        assert all(d.true_label == d.label for d in s.train) and noise_mod.noise_rate(s.train) == 0
        assert as_tuples(s.train) != as_tuples(clean.train)
    assert all(d.true_label is None for d in clean.train)  # `none` keeps CoOp's sampling, no extra column


def test_deterministic_and_seeded(roots):
    a = _noisy(roots["grouped"], seed=5)
    b = _noisy(roots["grouped"], seed=5)
    c = _noisy(roots["grouped"], seed=6)
    assert a.train == b.train and a.val == b.val
    assert a.train != c.train


@pytest.mark.parametrize("kind", ["symflip", "pairflip"])
def test_val_and_test_clean(roots, kind):
    clean = prepare_splits("dtd", roots["interleaved"], shots=16, seed=3)
    s = _noisy(roots["interleaved"], shots=16, wrong=12, kind=kind, seed=3)
    assert s.test == clean.test
    assert all(d.true_label is None for d in s.val + s.test)
    entries = EXPECTED["datasets"]["interleaved"]
    val_truth = {r: y for r, y, _ in entries["val"]}
    assert all(val_truth[d.relpath] == d.label for d in s.val)
    assert len(s.val) == 4 * s.num_classes


@pytest.mark.parametrize("kind", ["symflip", "pairflip"])
@pytest.mark.parametrize("subsample", ["base", "new"])
def test_base_to_novel_noise_stays_among_the_training_classes(roots, kind, subsample):
    entries = EXPECTED["datasets"]["interleaved"]  # 7 classes: base 0..3, novel 4..6
    labels = sorted({y for _, y, _ in entries["train"]})
    m = math.ceil(len(labels) / 2)
    kept = labels[:m] if subsample == "base" else labels[m:]
    kept_images = {r for r, y, _ in entries["train"] if y in kept}
    s = _noisy(roots["interleaved"], shots=16, wrong=8, kind=kind, seed=1, subsample=subsample)
    assert s.num_classes == len(kept) and s.train_counts() == [16] * len(kept)
    assert {d.relpath for d in s.train} <= kept_images  # no image of the other half enters training
    assert all(0 <= d.true_label < len(kept) for d in s.train)
    assert sum(d.true_label != d.label for d in s.train) == 8 * len(kept)
    truth = {r: y for r, y, _ in entries["train"]}
    relabel = {y: i for i, y in enumerate(kept)}
    assert all(relabel[truth[d.relpath]] == d.true_label for d in s.train)
    # val and test: the kept classes, clean
    clean = prepare_splits("dtd", roots["interleaved"], shots=16, seed=1, subsample=subsample)
    assert s.test == clean.test and s.classnames == clean.classnames


def test_split_file_records_given_and_true_labels(roots, tmp_path):
    s = _noisy(roots["interleaved"], shots=8, wrong=3, kind="pairflip", seed=2)
    out = tmp_path / "split.json"
    write_split_file(s, out)
    obj = json.loads(out.read_text())
    assert all(len(row) == 4 for row in obj["train"])  # path, given label, class name, true label
    assert [row[3] for row in obj["train"]] == [d.true_label for d in s.train]
    assert all(len(row) == 3 for row in obj["val"] + obj["test"])
    train, val, test = read_split_file(out, s.image_dir)
    assert (train, val, test) == (s.train, s.val, s.test)
    again = prepare_splits("dtd", roots["interleaved"], shots=1, seed=9, split_file=out)  # verbatim
    assert again.train == s.train


def test_run_json_record(roots):
    from mmrl.config import RunConfig, set_key

    cfg = RunConfig()
    set_key(cfg, "data.noise", {"type": "symflip", "shots": 4})
    s = _noisy(roots["grouped"], shots=16, wrong=4, kind="symflip")
    rec = corruption_record(s, cfg.data)
    assert rec == {"noise": {"type": "symflip", "shots": 4, "rate": 0.25, "wrong_images": 20, "images": 80}}
    assert corruption_record(prepare_splits("dtd", roots["grouped"], shots=16, seed=1), RunConfig().data) == {}


def test_too_few_images_to_lend(tmp_path):
    rows = {"train": [["a/0.jpg", 0, "a"], ["a/1.jpg", 0, "a"], ["b/0.jpg", 1, "b"]],
            "val": [["a/v.jpg", 0, "a"], ["b/v.jpg", 1, "b"]], "test": [["a/t.jpg", 0, "a"], ["b/t.jpg", 1, "b"]]}
    write_split(tmp_path / "dtd", "DescribableTextures", rows)
    with pytest.raises(DataError, match="pairflip noise: class 'b' has 1 training image"):
        _noisy(tmp_path, shots=2, wrong=1, kind="pairflip")
    with pytest.raises(DataError, match="symflip noise: no image of another class"):
        _noisy(tmp_path, shots=2, wrong=1, kind="symflip")
    assert len(_noisy(tmp_path, shots=2, wrong=0, kind="symflip").train) == 4  # short pools: with replacement


# --------------------------------------------------------------------------- mmrl data split

def test_cli_split_writes_the_noisy_list(roots, tmp_path, capsys):
    out = tmp_path / "split.json"
    rc = cli_main(["data", "split", "--dataset", "dtd", "--root", str(roots["grouped"]), "--shots", "16",
                   "--seed", "2", "--out", str(out), "--set", "data.noise.type=pairflip",
                   "--set", "data.noise.shots=6"])
    assert rc == 0
    assert "30 of 80 training labels wrong (37.5%)" in capsys.readouterr().out
    case = next(c for c in CASES if (c["dataset"], c["type"], c["seed"], c["shots"], c["wrong"])
                == ("grouped", "pairflip", 2, 16, 6))
    obj = json.loads(out.read_text())
    assert [[r[0], r[1], r[3]] for r in obj["train"]] == case["train"]
    assert [[r[0], r[1]] for r in obj["val"]] == case["val"]


@pytest.mark.parametrize("sets, message", [
    (["data.noise.type=symflip", "data.noise.shots=5"], "data.noise.shots = 5: expected at most data.shots (4)"),
    (["data.noise.type=symflop", "data.noise.shots=1"], "data.noise.type = 'symflop': expected one of none, "
                                                        "symflip, pairflip (did you mean 'symflip'?)"),
    (["data.noise.shots=2"], "data.noise.shots = 2 with data.noise.type none"),
    (["data.noise.type=pairflip", "data.noise.shots=-1"], "data.noise.shots = -1: expected an integer >= 0"),
    (["optim.lr=0.1"], "--set optim.lr: mmrl data split takes the data.noise.* and data.imbalance.* keys"),
    (["data.noise.wrong=2"], "unknown config key 'data.noise.wrong'"),
])
def test_cli_split_refuses_bad_values_in_one_line(roots, tmp_path, capsys, sets, message):
    out = tmp_path / "split.json"
    args = ["data", "split", "--dataset", "dtd", "--root", str(roots["grouped"]), "--shots", "4", "--out", str(out)]
    rc = cli_main(args + [a for s in sets for a in ("--set", s)])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and err.count("\n") == 1
    assert not out.exists()


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize("overrides, message", [
    (["data.noise.type=symflip", "data.noise.shots=17"], "data.noise.shots = 17: expected at most data.shots (16)"),
    (["data.shots=4", "data.noise.type=pairflip", "data.noise.shots=8"], "expected at most data.shots (4)"),
    (["data.noise.type=gaussian"], "data.noise.type = 'gaussian': expected one of none, symflip, pairflip"),
    (["data.noise.shots=3"], "with data.noise.type none"),
])
def test_config_refuses_bad_noise_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        resolve_config("mmrl", "fewshot", "dtd", overrides=overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_keys():
    cfg = resolve_config("mmrl", "fewshot", "dtd", overrides=["data.noise.type=symflip", "data.noise.shots=8"])
    assert (cfg.data.noise.type, cfg.data.noise.shots) == ("symflip", 8)
    default = resolve_config("mmrl", "fewshot", "dtd")
    assert (default.data.noise.type, default.data.noise.shots) == ("none", 0)
    # the config's names are the samplers' names
    assert NOISE_TYPES == noise_mod.NOISE_TYPES
    assert (IMBALANCE_TYPES, IMBALANCE_ORDERS) == (imbalance_mod.IMBALANCE_TYPES, imbalance_mod.IMBALANCE_ORDERS)


# --------------------------------------------------------------------------- a run

def test_a_run_records_the_noise(tmp_path):
    """`mmrl train` with the noise keys trains on the noisy list; split.json and run.json record it."""
    import torch

    from helpers import make_benchmark_dataset, tiny_train_argv, write_tiny_clip

    torch.set_num_threads(1)
    clip = write_tiny_clip(tmp_path / "clip.pt")
    make_benchmark_dataset(tmp_path / "data", "DescribableTextures", per_class=12)  # 6 train images per class
    out = tmp_path / "run"
    argv = tiny_train_argv(clip, tmp_path / "data", out, shots=4, protocol="base2novel",
                           extra=["--set", "data.noise.type=symflip", "--set", "data.noise.shots=1",
                                  "--set", "data.imbalance.type=step", "--set", "data.imbalance.ratio=0.5"])
    assert cli_main(argv) == 0
    info = json.loads((out / "run.json").read_text())
    split = json.loads((out / "split.json").read_text())
    expected = prepare_splits("dtd", tmp_path / "data", shots=4, seed=1, subsample="base", noise_type="symflip",
                              noise_shots=1, imbalance_type="step", imbalance_ratio=0.5)
    assert [tuple(r) for r in split["train"]] == [(d.relpath, d.label, d.classname, d.true_label)
                                                  for d in expected.train]
    wrong = sum(r[1] != r[3] for r in split["train"])
    assert info["noise"] == {"type": "symflip", "shots": 1, "rate": wrong / len(split["train"]),
                             "wrong_images": wrong, "images": len(split["train"])}
    assert info["imbalance"]["per_class"] == info["shots_realised"]["per_class"] == [4, 2]
    assert "fewer training images than" not in (out / "train.log").read_text()


def test_a_noisy_split_file_used_verbatim_is_still_recorded(roots, tmp_path):
    from mmrl.config import RunConfig

    s = _noisy(roots["grouped"], shots=4, wrong=1, kind="pairflip")
    write_split_file(s, tmp_path / "split.json")
    again = prepare_splits("dtd", roots["grouped"], shots=4, seed=1, split_file=tmp_path / "split.json")
    rec = corruption_record(again, RunConfig().data)
    assert rec["noise"]["rate"] == 0.25 and rec["noise"]["type"] == "none"


def test_config_yaml_round_trip_and_resume_difference(tmp_path):
    from mmrl.config import config_differences, dump_config, load_config

    cfg = resolve_config("mmrl", "fewshot", "dtd", overrides=["data.noise.type=pairflip", "data.noise.shots=4",
                                                                "data.imbalance.type=exp"])
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    back = load_config(tmp_path / "config.yaml")
    assert back == cfg
    other = resolve_config("mmrl", "fewshot", "dtd", overrides=["data.noise.type=pairflip", "data.noise.shots=8",
                                                                  "data.imbalance.type=exp"])
    assert config_differences(cfg, other) == ["data.noise.shots: 4 -> 8"]
