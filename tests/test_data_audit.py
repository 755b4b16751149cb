"""`mmrl data audit`: planted wrong labels, duplicates and a rare class are found; no file of the
dataset changes. The scores come from the packaged toy CLIP (`--backbone toy-clip`), whose
zero-shot on its own pretraining world (plain large shapes) is nearly perfect."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from fixtures_data import snapshot
from mmrl.cli import main as cli_main
from mmrl.data.audit import duplicate_groups, rank_suspects, rare_classes
from mmrl.data.core import Datum
from mmrl.toyworld.render import render, sample_scene

CLASSES = [("red", "circle"), ("blue", "square"), ("green", "star"), ("yellow", "heart"), ("purple", "moon"),
           ("orange", "arrow")]


def _read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """folder:shapes/<colour shape>/*.png, 14 images a class; image 0 of each class is filed under
    the NEXT class (a wrong label), one image is copied into another class (two labels for one
    image) and one within its class; class 'white cross' has 4 images (rare)."""
    root = tmp_path_factory.mktemp("audit") / "shapes"
    rng = np.random.default_rng(0)
    planted = {}  # relpath -> true class
    for k, (c, s) in enumerate(CLASSES + [("white", "cross")]):
        for i in range(14 if k < len(CLASSES) else 4):
            folder = f"{c} {s}" if i or k == len(CLASSES) else " ".join(CLASSES[(k + 1) % len(CLASSES)])
            p = root / folder / f"{c}_{s}_{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(render(sample_scene(rng, s, c, "large", "plain"))).save(p)
            if folder != f"{c} {s}":
                planted[p.relative_to(root).as_posix()] = f"{c} {s}"
    shutil.copy(root / "red circle" / "red_circle_3.png", root / "blue square" / "copy_of_red_circle_3.png")
    shutil.copy(root / "green star" / "green_star_5.png", root / "green star" / "again_green_star_5.png")
    return root, planted


def test_audit_finds_planted_labels_duplicates_and_rare_class(shapes, tmp_path, capsys):
    root, planted = shapes
    before = snapshot(root)
    out = tmp_path / "audit"
    for split in ("train", "val", "test"):
        rc = cli_main(["data", "audit", f"folder:{root}", "--backbone", "toy-clip", "--out", str(out / split),
                       "--split", split, "--top", "5"])
        assert rc == 0
    printed = capsys.readouterr().out
    assert snapshot(root) == before  # no file of the dataset changed
    # every planted wrong label, in whichever split it fell, ranks above every correct one
    found = 0
    for split in ("train", "val", "test"):
        rows = _read(out / split / "suspects.csv")
        wrong = [r for r in rows if r["path"] in planted]
        assert sorted(int(r["rank"]) for r in wrong) == list(range(1, len(wrong) + 1))
        assert all(r["preferred_class"] == planted[r["path"]] for r in wrong)
        found += len(wrong)
    assert found == len(planted) == len(CLASSES)
    assert "labels least likely under the model" in printed
    # duplicates: one across classes, one within a class
    groups: dict[str, list[dict]] = {}
    for r in _read(out / "train" / "duplicates.csv"):
        groups.setdefault(r["group"], []).append(r)
    pairs = sorted(sorted(r["path"] for r in g) for g in groups.values())
    assert pairs == [["blue square/copy_of_red_circle_3.png", "red circle/red_circle_3.png"],
                     ["green star/again_green_star_5.png", "green star/green_star_5.png"]]
    assert "duplicate images: 2 group(s) of identical files, 1 with two labels" in printed
    # the rare class
    classes = {r["class"]: r for r in _read(out / "train" / "classes.csv")}
    assert [c for c, r in classes.items() if r["rare"] == "1"] == ["white cross"]
    assert "rare classes (under half the median" in printed and "white cross" in printed


def test_audit_refuses_to_write_into_the_dataset(shapes, capsys):
    root, _ = shapes
    before = snapshot(root)
    rc = cli_main(["data", "audit", f"folder:{root}", "--backbone", "toy-clip", "--out", str(root / "audit")])
    err = capsys.readouterr().err
    assert rc == 1 and "inside the dataset's image folder" in err and err.count("\n") == 1
    assert snapshot(root) == before


def test_audit_with_a_run(tmp_path, capsys):
    """--run scores with the adapted model (fused logits on the run's own classes)."""
    import torch

    from helpers import make_benchmark_dataset, tiny_train_argv, write_tiny_clip

    torch.set_num_threads(1)
    clip = write_tiny_clip(tmp_path / "clip.pt")
    make_benchmark_dataset(tmp_path / "data", "DescribableTextures", per_class=8)
    run = tmp_path / "run"
    assert cli_main(tiny_train_argv(clip, tmp_path / "data", run)) == 0
    rc = cli_main(["data", "audit", "dtd", "--root", str(tmp_path / "data"), "--run", str(run), "--out",
                   str(tmp_path / "audit")])
    assert rc == 0
    rows = _read(tmp_path / "audit" / "suspects.csv")
    assert len(rows) == 4 * 4 and [int(r["rank"]) for r in rows] == list(range(1, 17))
    p = [float(r["p_given"]) for r in rows]
    assert p == sorted(p) and all(0 <= x <= 1 for x in p)


def test_ranking_rare_and_duplicates_units(tmp_path):
    items = [Datum(str(tmp_path / f"{i}.png"), y, f"c{y}", f"{i}.png") for i, y in enumerate([0, 1, 1, 0])]
    probs = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]]
    ranked = rank_suspects(items, probs, ["c0", "c1"])
    assert [(s.relpath, s.p_given, s.preferred) for s in ranked] == [
        ("3.png", 0.1, "c1"), ("1.png", 0.2, "c0"), ("2.png", 0.7, "c1"), ("0.png", 0.9, "c0")]
    assert rare_classes([10, 10, 4, 10, 1]) == [4, 2]  # under half the median (10 / 2 = 5)
    for i, content in enumerate([b"a", b"b", b"a", b"a"]):
        (tmp_path / f"{i}.png").write_bytes(content)
    groups = duplicate_groups({"train": items[:2], "test": items[2:]})
    assert [[(s, d.relpath) for s, d in g] for g in groups] == [[("train", "0.png"), ("test", "2.png"),
                                                                 ("test", "3.png")]]
