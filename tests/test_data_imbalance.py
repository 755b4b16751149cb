"""Class imbalance of the training shots (data.imbalance.*): the CIFAR-LT profile over a few-shot sample."""
from __future__ import annotations

import json
import math

import pytest

from fixtures_data import as_tuples, write_split_dataset
from mmrl.cli import main as cli_main
from mmrl.config import ConfigError, resolve_config
from mmrl.data import prepare_splits
from mmrl.data.imbalance import class_budgets

CLASSES = [f"tex{i}" for i in range(7)]


@pytest.fixture
def root(tmp_path):
    write_split_dataset(tmp_path, "dtd", "images", "DescribableTextures", CLASSES, counts=(20, 6, 3))
    return tmp_path


def _expected_counts(C: int, shots: int, kind: str, rho: float) -> list[int]:
    """The profile as the issue states it (label order), written from the formula, not the code."""
    if kind == "exp":
        return [shots if C == 1 else max(1, math.floor(shots * rho ** (c / (C - 1)))) for c in range(C)]
    return [shots if c < math.ceil(C / 2) else max(1, math.floor(shots * rho)) for c in range(C)]


@pytest.mark.parametrize("C", [1, 2, 7, 10, 100])
@pytest.mark.parametrize("shots", [1, 4, 16])
@pytest.mark.parametrize("rho", [1.0, 0.5, 0.1, 0.02, 0.01])
@pytest.mark.parametrize("kind", ["exp", "step"])
def test_profile_formula(C, shots, rho, kind):
    assert class_budgets(C, shots, kind, rho, "label", 1) == _expected_counts(C, shots, kind, rho)


def test_profile_examples():
    assert class_budgets(5, 16, "exp", 0.1, "label", 1) == [16, 8, 5, 2, 1]  # 16 * 0.1^(c/4)
    assert class_budgets(5, 16, "step", 0.25, "label", 1) == [16, 16, 16, 4, 4]
    assert class_budgets(4, 16, "step", 0.02, "label", 1) == [16, 16, 1, 1]


@pytest.mark.parametrize("kind", ["exp", "step"])
def test_counts_subset_and_clean_val_test(root, kind):
    clean = prepare_splits("dtd", root, shots=16, seed=1)
    s = prepare_splits("dtd", root, shots=16, seed=1, imbalance_type=kind, imbalance_ratio=0.1)
    assert s.train_counts() == _expected_counts(7, 16, kind, 0.1)
    # a subset of the few-shot sample, in its order; val, test and classes untouched
    pos = {d: i for i, d in enumerate(clean.train)}
    assert all(d in pos for d in s.train) and [pos[d] for d in s.train] == sorted(pos[d] for d in s.train)
    assert (s.val, s.test, s.classnames) == (clean.val, clean.test, clean.classnames)
    assert all(d.true_label is None for d in s.train)


def test_deterministic_and_seeded(root):
    a = prepare_splits("dtd", root, shots=16, seed=1, imbalance_type="exp", imbalance_ratio=0.1)
    b = prepare_splits("dtd", root, shots=16, seed=1, imbalance_type="exp", imbalance_ratio=0.1)
    c = prepare_splits("dtd", root, shots=16, seed=2, imbalance_type="exp", imbalance_ratio=0.1)
    assert a.train == b.train and a.train != c.train
    assert a.train_counts() == c.train_counts()  # label order: the same classes are rare for every seed


def test_shuffled_order(root):
    label = class_budgets(7, 16, "exp", 0.1, "label", 1)
    runs = [prepare_splits("dtd", root, shots=16, seed=s, imbalance_type="exp", imbalance_ratio=0.1,
                           imbalance_order="shuffled") for s in (1, 2, 3)]
    counts = [r.train_counts() for r in runs]
    assert all(sorted(c) == sorted(label) for c in counts)  # the same profile, permuted over the classes
    assert counts[0] == class_budgets(7, 16, "exp", 0.1, "shuffled", 1)
    assert len({tuple(c) for c in counts}) > 1 and any(c != label for c in counts)
    again = prepare_splits("dtd", root, shots=16, seed=1, imbalance_type="exp", imbalance_ratio=0.1,
                           imbalance_order="shuffled")
    assert again.train == runs[0].train


def test_base_to_novel_profile_over_the_base_classes(root):
    s = prepare_splits("dtd", root, shots=8, seed=1, subsample="base", imbalance_type="exp", imbalance_ratio=0.25)
    assert s.num_classes == 4 and s.train_counts() == _expected_counts(4, 8, "exp", 0.25)


def test_with_label_noise(root):
    noisy = prepare_splits("dtd", root, shots=8, seed=1, noise_type="symflip", noise_shots=2)
    s = prepare_splits("dtd", root, shots=8, seed=1, noise_type="symflip", noise_shots=2,
                       imbalance_type="step", imbalance_ratio=0.5)
    assert s.train_counts() == [8, 8, 8, 8, 4, 4, 4]
    remaining = list(noisy.train)
    for d in s.train:  # a sub-list of the noisy sample, labels recorded
        remaining = remaining[remaining.index(d) + 1:]
    assert all(d.true_label is not None for d in s.train)


def test_cli_split(root, tmp_path, capsys):
    out = tmp_path / "split.json"
    rc = cli_main(["data", "split", "--dataset", "dtd", "--root", str(root), "--shots", "16", "--out", str(out),
                   "--set", "data.imbalance.type=exp", "--set", "data.imbalance.ratio=0.1"])
    assert rc == 0 and "exp imbalance: 16 .. 1 training images per class" in capsys.readouterr().out
    expected = prepare_splits("dtd", root, shots=16, seed=1, imbalance_type="exp", imbalance_ratio=0.1)
    assert [tuple(r) for r in json.loads(out.read_text())["train"]] == as_tuples(expected.train)


@pytest.mark.parametrize("sets, message", [
    (["data.imbalance.type=exp", "data.imbalance.ratio=0"], "data.imbalance.ratio = 0.0: expected rho"),
    (["data.imbalance.type=step", "data.imbalance.ratio=1.5"], "data.imbalance.ratio = 1.5: expected rho"),
    (["data.imbalance.type=exp", "data.imbalance.ratio=-0.1"], "expected rho = n_min / n_max in (0, 1]"),
    (["data.imbalance.type=linear"], "data.imbalance.type = 'linear': expected one of none, exp, step"),
    (["data.imbalance.type=exp", "data.imbalance.order=random"], "data.imbalance.order = 'random': expected one "
                                                                 "of label, shuffled"),
])
def test_bad_values_refused_in_one_line(root, tmp_path, capsys, sets, message):
    with pytest.raises(ConfigError) as e:
        resolve_config("mmrl", "fewshot", "dtd", overrides=sets)
    assert message in str(e.value) and "\n" not in str(e.value)
    out = tmp_path / "split.json"
    rc = cli_main(["data", "split", "--dataset", "dtd", "--root", str(root), "--out", str(out)]
                  + [a for s in sets for a in ("--set", s)])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and err.count("\n") == 1 and not out.exists()


def test_config_keys():
    cfg = resolve_config("mmrl", "fewshot", "dtd", overrides=["data.imbalance.type=step",
                                                                "data.imbalance.ratio=0.1",
                                                                "data.imbalance.order=shuffled"])
    assert (cfg.data.imbalance.type, cfg.data.imbalance.ratio, cfg.data.imbalance.order) == ("step", 0.1, "shuffled")
