"""`mmrl report DIR` over runs in any layout: ad-hoc `--output` folders, sweeps at any depth (with
their grid files), converted official weights, zero-shot results, user datasets, duplicates; every
output file written and naming the datasets; the command does not import torch; published.yaml."""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from fake_runs import md_row, write_run, write_zeroshot
from mmrl import report
from mmrl.vocab import CROSS_TARGETS, DATASETS, VARIANTS, harmonic_mean, sweep_run_dir

TOL = 1e-9  # same arithmetic in another order: rounding only
PNG = b"\x89PNG\r\n\x1a\n"


def run_cli_without_torch(*args: str) -> subprocess.CompletedProcess:
    """`mmrl report ...` in a fresh interpreter that fails if torch got imported."""
    code = ("import sys; from mmrl.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]; "
            "sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, "report", *args], capture_output=True, text=True,
                          env=dict(os.environ))


def assert_all_outputs(out: Path, figures: list[str], names: list[str]) -> None:
    """Every report file is there, the figures are PNGs, the HTML holds them inlined, and every
    dataset name appears in the Markdown, the HTML, the JSON and the CSV files."""
    for f in ("report.md", "report.html", "report.json", "runs.csv"):
        assert (out / f).is_file(), f
    for f in figures:
        assert (out / f).read_bytes()[:8] == PNG and (out / f).stat().st_size > 5000, f
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(figures)
    assert "<table>" in html and html.count("<img ") == len(figures)
    csvs = "".join(p.read_text() for p in out.glob("*.csv"))
    for text in ((out / "report.md").read_text(), html, (out / "report.json").read_text(), csvs):
        for name in names:
            assert name in text, name


@pytest.fixture
def adhoc(tmp_path):
    """Runs where a user put them: `--output` folders at different depths, a converted official
    checkpoint evaluated with `mmrl eval`, a folder: dataset, zero-shot results."""
    root = tmp_path / "runs"
    dtd = "DescribableTextures"
    vals = {1: (80.125, 61.5), 2: (82.5, 58.25)}
    write_run(root / "mmrl-seed1", "base2novel", "mmrl", dtd, 16, 1, {(dtd, "base"): 80.125, (dtd, "new"): 61.5})
    write_run(root / "exp" / "jan" / "second", "base2novel", "mmrl", dtd, 16, 2,
              {(dtd, "base"): 82.5, (dtd, "new"): 58.25})
    write_run(root / "official" / "eurosat", "base2novel", "mmrl", "EuroSAT", 16, 1,
              {("EuroSAT", "base"): 95.5, ("EuroSAT", "new"): 80.0}, official=True)
    write_run(root / "pets-2shot", "fewshot", "mmrl++", "folder:/data/pets", 2, 1,
              {("folder:pets", "all"): 71.25}, name="folder:pets")
    write_run(root / "pets-4shot", "fewshot", "mmrl++", "folder:/data/pets", 4, 1,
              {("folder:pets", "all"): 77.75}, name="folder:pets")
    write_zeroshot(root / "zs", {(dtd, "base"): 53.24, (dtd, "new"): 59.90, ("folder:pets", "all"): 40.5})
    return root, vals


def test_adhoc_runs_without_torch(adhoc, tmp_path):
    root, vals = adhoc
    res = run_cli_without_torch(str(root), "--out", str(tmp_path / "rep"))
    assert res.returncode == 0, res.stderr
    out = tmp_path / "rep"
    data = json.loads((out / "report.json").read_text())
    assert data["n_run_folders"] == 6
    b2n = data["protocols"]["base2novel"]
    assert list(b2n["methods"]) == ["mmrl", "mmrl (official weights)"]
    r = b2n["methods"]["mmrl"]["datasets"]["DescribableTextures"]
    assert r["seeds"] == [1, 2] and r["expected_seeds"] == [1, 2]  # ad-hoc: just what is there
    assert r["base"]["mean"] == pytest.approx(statistics.mean(v[0] for v in vals.values()), abs=TOL)
    assert r["novel"]["std"] == pytest.approx(statistics.pstdev(v[1] for v in vals.values()), abs=TOL)
    assert r["hm"]["mean"] == pytest.approx(statistics.mean(harmonic_mean(*v) for v in vals.values()), abs=TOL)
    assert b2n["missing"] == []
    official = b2n["methods"]["mmrl (official weights)"]
    assert official["label"] == "MMRL (official weights)" and official["datasets"]["EuroSAT"]["base"]["mean"] == 95.5
    fs = data["protocols"]["fewshot"]["methods"]["mmrl++"]
    assert fs["grid"]["shots"] == [2, 4]
    assert fs["datasets"]["folder:pets"]["4"]["acc"]["mean"] == 77.75
    assert data["protocols"]["fewshot"]["zeroshot"] == {"folder:pets": {"mean": 40.5, "std": 0.0, "n": 1,
                                                                        "values": [40.5]}}
    assert "crossdataset" not in data["protocols"]
    md = (out / "report.md").read_text()
    assert md_row(md, "DescribableTextures", after="### MMRL — 16 shots")[1] == "2/2"
    assert md_row(md, "EuroSAT", after="### MMRL (official weights)")[2:4] == ["95.50", "80.00"]
    assert md_row(md, "EuroSAT", after="### MMRL (official weights)")[6] == "95.60/80.17/87.21"  # published
    zrow = md_row(md, "DescribableTextures", after="### CLIP zero-shot (ours)")
    assert zrow[2:4] == ["53.24", "59.90"]
    assert md_row(md, "folder:pets", after="### MMRL++") == ["folder:pets", "71.25", "77.75", "40.50"]
    assert "**Average**" not in md[md.index("### MMRL++"):]  # one dataset, and not a benchmark one
    assert_all_outputs(out, ["base2novel.png", "fewshot.png"], ["DescribableTextures", "EuroSAT", "folder:pets"])
    assert not (out / "crossdataset.png").exists()
    rows = list(csv.DictReader(io.StringIO((out / "runs.csv").read_text())))
    assert {(r["dataset"], r["eval"]) for r in rows if r["protocol"] == "fewshot"} == \
        {("folder:pets", "folder:pets-all")}


def test_sweep_anywhere_with_grid_and_adhoc_beside(tmp_path):
    """A sweep two folders deep with its grid file: missing and claimed cells are marked; an ad-hoc
    run of another method beside it is shown without any expectation."""
    root = tmp_path / "all"
    base = root / "2026" / "sweep-a"
    grid = {"protocol": "fewshot", "method": "mmrl", "datasets": ["EuroSAT", "DescribableTextures"],
            "targets": [], "shots": [1, 4], "seeds": [1, 2]}
    (base / "fewshot" / "mmrl").mkdir(parents=True)
    (base / "fewshot" / "mmrl" / "grid-abc.json").write_text(json.dumps(grid))

    def acc(d, k, s):
        return {"EuroSAT": 70.0, "DescribableTextures": 50.0}[d] + 2.5 * k + 0.75 * s
    for d in grid["datasets"]:
        for k in grid["shots"]:
            for s in grid["seeds"]:
                if (d, k, s) in (("EuroSAT", 4, 2), ("DescribableTextures", 1, 2)):
                    continue
                write_run(sweep_run_dir(base, "fewshot", "mmrl", d, k, s), "fewshot", "mmrl", d, k, s,
                          {(d, "all"): acc(d, k, s)})
    claimed = sweep_run_dir(base, "fewshot", "mmrl", "DescribableTextures", 1, 2)
    claimed.parent.mkdir(parents=True, exist_ok=True)
    claimed.with_name("seed_2.claim").write_text(json.dumps({"host": "node3", "pid": 42, "time_iso": "t"}))
    write_run(root / "mine" / "try1", "fewshot", "mmrl++", "EuroSAT", 4, 7, {("EuroSAT", "all"): 88.0})
    out = report.write_report(root)
    data = json.loads((out / "report.json").read_text())
    sec = data["protocols"]["fewshot"]
    e = sec["methods"]["mmrl"]
    assert (e["n_finished"], e["n_expected"]) == (6, 8)
    assert e["datasets"]["EuroSAT"]["4"]["seeds"] == [1]
    assert e["average"]["1"]["acc"] == pytest.approx(
        statistics.mean([statistics.mean([acc("EuroSAT", 1, 1), acc("EuroSAT", 1, 2)]),
                         acc("DescribableTextures", 1, 1)]), abs=TOL)
    assert not e["average"]["1"]["complete"]
    states = {m["run"]: (m["state"], m["detail"]) for m in sec["missing"]}
    assert states == {"2026/sweep-a/fewshot/mmrl/DescribableTextures/shots_1/seed_2":
                      ("claimed", "claimed by node3 pid 42 since t"),
                      "2026/sweep-a/fewshot/mmrl/EuroSAT/shots_4/seed_2": ("missing", "")}
    plus = sec["methods"]["mmrl++"]
    assert (plus["n_finished"], plus["n_expected"]) == (1, 1) and plus["datasets"]["EuroSAT"]["4"]["seeds"] == [7]
    md = (out / "report.md").read_text()
    assert md_row(md, "EuroSAT", after="### MMRL\n")[2] == f"{acc('EuroSAT', 4, 1):.2f} (1/2)"
    assert md_row(md, "EuroSAT", after="### MMRL++")[1:] == ["88.00"]
    assert "**Runs: 7/9 finished.**" in md
    assert_all_outputs(out, ["fewshot.png"], ["EuroSAT", "DescribableTextures"])


def test_crossdataset_user_target_and_duplicates(tmp_path):
    """Cross-dataset runs evaluated on a user dataset too (listed, not averaged), a second copy of a
    seed (counted once, noted), an interrupted run known only by its config.yaml."""
    root = tmp_path / "x"
    targets = {"ImageNet": 70.0, "Caltech101": 93.0, "EuroSAT": 48.0, "ImageNetV2": 63.0, "folder:birds": 33.0}
    for s in (1, 2):
        write_run(root / f"cd-{s}", "crossdataset", "mmrl", "ImageNet", 16, s,
                  {(t, "all"): a + s for t, a in targets.items()})
    write_run(root / "copy-of-1", "crossdataset", "mmrl", "ImageNet", 16, 1, {("ImageNet", "all"): 10.0})
    (root / "copy-of-1" / "run.json").write_text(
        (root / "copy-of-1" / "run.json").read_text().replace("2026-01-01T00:01:00", "2025-01-01T00:00:00"))
    stopped = root / "stopped"
    stopped.mkdir()
    (stopped / "config.yaml").write_text("protocol: crossdataset\nseed: 3\nbackbone: ViT-B-16\nmethod:\n  name: mmrl\n"
                                         "data:\n  dataset: ImageNet\n  shots: 16\n")
    out = report.write_report(root, out=tmp_path / "rep")
    data = json.loads((out / "report.json").read_text())
    t = data["protocols"]["crossdataset"]["methods"]["mmrl"]["shots"]["16"]
    assert t["targets"]["ImageNet"]["acc"]["mean"] == pytest.approx(71.5, abs=TOL)  # the copy is not counted
    assert t["targets"]["folder:birds"]["acc"]["mean"] == pytest.approx(34.5, abs=TOL)
    assert t["average"]["crossdataset"]["acc"] == pytest.approx((94.5 + 49.5) / 2, abs=TOL)
    assert t["average"]["dg"]["acc"] == pytest.approx(64.5, abs=TOL)
    assert any("copy-of-1" in n and "not counted" in n for n in data["notes"])
    missing = data["protocols"]["crossdataset"]["missing"]
    assert [(m["run"], m["state"]) for m in missing] == [("stopped", "unfinished")]
    md = (out / "report.md").read_text()
    row = md_row(md, "MMRL", after="### Cross-dataset")
    assert row[1] == "71.50 ± 0.50 (2/3)" and row[-1] == "**72.00 (2/10 targets)**"  # seed 3 unfinished
    pub = md_row(md, "MMRL (published)", after="### Cross-dataset")
    assert pub[1:4] == ["72.03", "94.67", "53.10"] and pub[-2] == "—"  # no published number on user data
    assert md_row(md, "MMRL (published)", after="### Domain generalisation")[1:] == ["72.03", "64.47",
                                                                                      "60.59 (4 targets)"]
    assert_all_outputs(out, ["crossdataset.png"], ["Caltech101", "ImageNetV2", "folder:birds"])


def test_empty_folder_and_bad_argument(tmp_path, capsys):
    from mmrl.cli import main

    (tmp_path / "nothing" / "here").mkdir(parents=True)
    assert main(["report", str(tmp_path / "nothing")]) == 0
    out = tmp_path / "nothing" / "report"
    assert "No runs found" in (out / "report.md").read_text() and not list(out.glob("*.png"))
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.strip() == f"mmrl report: error: {tmp_path / 'absent'} is not a folder"


def test_published_numbers_are_consistent():
    """The per-dataset numbers agree with the averages quoted beside them (to the quoted rounding:
    each number is rounded to 0.01, so a mean of them is within 0.005 and an HM within ~0.01)."""
    p = report.load_published()
    assert set(p["sources"]) >= {"spec", "mmrl-cvpr2025"}
    per = p["base2novel"]["datasets"]["MMRL"]
    assert per["source"] in p["sources"] and set(per) - {"source"} == set(DATASETS)
    avg = next(r for r in p["base2novel"]["average"] if r["method"] == "MMRL")
    assert statistics.mean(per[d]["base"] for d in DATASETS) == pytest.approx(avg["base"], abs=0.005)
    assert statistics.mean(per[d]["novel"] for d in DATASETS) == pytest.approx(avg["novel"], abs=0.005)
    for d in DATASETS:
        # DTD's quoted HM (73.82) is 0.1 below 2BN/(B+N) of its quoted B and N (73.92): kept as quoted
        tol = 0.1 if d == "DescribableTextures" else 0.011
        assert harmonic_mean(per[d]["base"], per[d]["novel"]) == pytest.approx(per[d]["hm"], abs=tol), d
    cd = p["crossdataset"]["targets"]["MMRL"]
    assert cd["source"] in p["sources"] and set(cd) - {"source"} == {"ImageNet", *CROSS_TARGETS}
    cavg = p["crossdataset"]["average"]["MMRL"]
    cross = [t for t in CROSS_TARGETS if t not in VARIANTS]
    assert statistics.mean(cd[t] for t in cross) == pytest.approx(cavg["crossdataset"], abs=0.005)
    assert statistics.mean(cd[t] for t in VARIANTS) == pytest.approx(cavg["dg"], abs=0.005)
    assert p["fewshot"] == {} and "MMRL++" not in p["base2novel"]["datasets"]  # none published: dashes


def test_real_run_report(tmp_path):
    """The report of real tiny runs (an `--output` of the user's choice, a folder: dataset, zero-shot)
    shows exactly what the runs wrote."""
    helpers = pytest.importorskip("helpers")
    from mmrl.cli import main

    clip = helpers.write_tiny_clip(tmp_path / "clip.pt")
    helpers.make_benchmark_dataset(tmp_path / "data", "DescribableTextures")
    pets = helpers.make_folder_dataset(tmp_path / "pets")
    runs = tmp_path / "runs"
    assert main(helpers.tiny_train_argv(clip, tmp_path / "data", runs / "mmrl-seed1", protocol="base2novel")) == 0
    assert main(helpers.tiny_train_argv(clip, tmp_path / "data", runs / "pets", dataset=f"folder:{pets}")) == 0
    assert main(["zeroshot", "--dataset", "dtd", "--root", str(tmp_path / "data"), "--backbone", str(clip),
                 "--output", str(runs / "zs"), "--subsample", "base", "--num-workers", "0"]) == 0
    out = report.write_report(runs)
    data = json.loads((out / "report.json").read_text())
    engine = json.loads((runs / "mmrl-seed1" / "results.json").read_text())
    row = data["protocols"]["base2novel"]["methods"]["mmrl"]["datasets"]["DescribableTextures"]
    assert (row["base"]["mean"], row["novel"]["mean"]) == (engine["base"], engine["novel"])
    pets_acc = json.loads((runs / "pets" / "results.json").read_text())["accuracy"]
    assert data["protocols"]["fewshot"]["methods"]["mmrl"]["datasets"]["folder:pets"]["2"]["acc"]["mean"] == pets_acc
    zs = json.loads((runs / "zs" / "eval" / "DescribableTextures-base.json").read_text())["accuracy"]
    assert data["zeroshot"]["DescribableTextures-base"]["mean"] == zs
    assert_all_outputs(out, ["base2novel.png", "fewshot.png"], ["DescribableTextures", "folder:pets"])
