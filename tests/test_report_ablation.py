"""`mmrl report` on ablations (`mmrl reproduce --vary`) and explicit-logits evaluations: the per-key
tables against averages computed here from the inputs, the default mark, others-at-default per
dataset, missing cells from grid files, the figures, the decoupled-inference section, and how
evaluation files are told apart."""
from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from pathlib import Path

import pytest

from fake_runs import md_row, write_grid, write_logit_eval, write_run
from mmrl import report
from mmrl.report.scan import read_evals
from mmrl.vocab import ABLATION_DIR, eval_file_name, harmonic_mean, sweep_run_dir

TOL = 1e-9  # the same arithmetic in another order: rounding only
PNG = b"\x89PNG\r\n\x1a\n"
K, J = "method.n_rep_tokens", "method.first_rep_block"
DS = ("EuroSAT", "DescribableTextures")
SEEDS = (1, 2)


def b2n(d: str, k: int, j: int, s: int) -> tuple[float, float]:
    """Fake Base/Novel accuracy of dataset d at K=k, J=j, seed s (irregular on purpose)."""
    i = DS.index(d)
    return (70.0 + 3.1 * k - 0.45 * j + 0.37 * s * s + 6.0 * i - 0.2 * k * j,
            60.0 - 1.3 * k + 0.8 * j - 0.9 * s + 2.5 * i + 0.05 * k * j * s)


def point_dir(out: Path, k: int, j: int) -> Path:
    # the folder name is the sweep's business; the report must never parse it
    return out / ABLATION_DIR / f"p{k}{j}"


def mean_b2n(datasets_points: dict[str, tuple[int, int]], seeds_of=lambda d: SEEDS) -> tuple[float, float, float]:
    """Base, Novel, HM as the papers: per dataset the mean over seeds, then the mean over datasets, HM of those."""
    bs = [statistics.mean(b2n(d, k, j, s)[0] for s in seeds_of(d)) for d, (k, j) in datasets_points.items()]
    ns = [statistics.mean(b2n(d, k, j, s)[1] for s in seeds_of(d)) for d, (k, j) in datasets_points.items()]
    b, n = statistics.mean(bs), statistics.mean(ns)
    return b, n, harmonic_mean(b, n)


@pytest.fixture
def study(tmp_path):
    """A 2x2 ablation (K in {1, 2} x J in {3, 6}) on two datasets, seeds 1-2, with grid files. Defaults:
    K = 2 everywhere, J = 6 on EuroSAT and 3 on DTD (a per-dataset default). Point (K=1, J=6) has
    its grid file but no runs yet. A plain (non-ablation) run sits beside it."""
    out = tmp_path / "sweep"
    defaults = {"EuroSAT": {K: 2, J: 6}, "DescribableTextures": {K: 2, J: 3}}
    for k in (1, 2):
        for j in (3, 6):
            base = point_dir(out, k, j)
            write_grid(base, "base2novel", "mmrl", DS, [16], SEEDS, values={K: k, J: j}, defaults=defaults)
            if (k, j) == (1, 6):
                continue
            for d in DS:
                for s in SEEDS:
                    b, n = b2n(d, k, j, s)
                    write_run(sweep_run_dir(base, "base2novel", "mmrl", d, 16, s), "base2novel", "mmrl", d, 16, s,
                              {(d, "base"): b, (d, "new"): n}, ablation={K: k, J: j})
    write_run(sweep_run_dir(out, "base2novel", "mmrl", "EuroSAT", 16, 1), "base2novel", "mmrl", "EuroSAT", 16, 1,
              {("EuroSAT", "base"): 91.0, ("EuroSAT", "new"): 72.0})
    return out


def test_ablation_tables(study):
    out = report.write_report(study)
    data = json.loads((out / "report.json").read_text())

    # the ablation runs are not in the regular table: only the plain run is, expecting only itself (no grid file)
    e = data["protocols"]["base2novel"]["methods"]["mmrl"]
    assert list(e["datasets"]) == ["EuroSAT"] and e["datasets"]["EuroSAT"]["seeds"] == [1]
    assert (e["n_finished"], e["n_expected"]) == (1, 1)
    assert all("ablation" not in m["run"] for m in data["protocols"]["base2novel"]["missing"])

    [st] = data["ablations"]
    assert st["keys"] == [J, K] and st["values"] == {K: [1, 2], J: [3, 6]}
    assert (st["n_finished"], st["n_expected"]) == (12, 16)
    tk = next(t for t in st["tables"] if t["key"] == K)
    tj = next(t for t in st["tables"] if t["key"] == J)

    # K table: J at each dataset's default (6 on EuroSAT, 3 on DTD); K=1 on EuroSAT is the missing point
    r1, r2 = tk["rows"]
    b, n, h = mean_b2n({"DescribableTextures": (1, 3)})
    assert r1["columns"] == pytest.approx({"Base": b, "Novel": n, "HM": h}, abs=TOL)
    assert (r1["runs_done"], r1["runs_expected"]) == (2, 4)
    assert r1["others"] == {"EuroSAT": {J: 6}, "DescribableTextures": {J: 3}}
    b, n, h = mean_b2n({"EuroSAT": (2, 6), "DescribableTextures": (2, 3)})
    assert r2["columns"] == pytest.approx({"Base": b, "Novel": n, "HM": h}, abs=TOL)
    assert r2["value"] == pytest.approx(h, abs=TOL) and r2["metric"] == "HM"
    hm_eu = harmonic_mean(*(statistics.mean(b2n("EuroSAT", 2, 6, s)[i] for s in SEEDS) for i in (0, 1)))
    assert r2["per_dataset"]["EuroSAT"] == pytest.approx(hm_eu, abs=TOL)
    assert (r2["runs_done"], r2["runs_expected"]) == (4, 4)
    assert [r["is_default"] for r in tk["rows"]] == [False, True]

    # J table: K at its default 2 on both; J's default differs per dataset -> no row marked
    for row, j in zip(tj["rows"], (3, 6)):
        b, n, h = mean_b2n({d: (2, j) for d in DS})
        assert row["columns"] == pytest.approx({"Base": b, "Novel": n, "HM": h}, abs=TOL)
    assert not any(r["is_default"] for r in tj["rows"]) and tj["default"]["varies"]

    # heat map: every point itself; the point without runs is missing
    [hmap] = st["heatmaps"]
    assert hmap["keys"] == [J, K] and hmap["rows"] == [3, 6] and hmap["cols"] == [1, 2]
    for i, j in enumerate((3, 6)):
        for c, k in enumerate((1, 2)):
            cell = hmap["cells"][i][c]
            if (k, j) == (1, 6):
                assert cell["value"] is None and cell["runs_done"] == 0 and cell["runs_expected"] == 4
            else:
                assert cell["value"] == pytest.approx(mean_b2n({d: (k, j) for d in DS})[2], abs=TOL)
    missing = {m["run"] for m in st["missing"]}
    assert missing == {str((point_dir(study, 1, 6) / "base2novel" / "mmrl" / d / "shots_16" / f"seed_{s}")
                           .relative_to(study)) for d in DS for s in SEEDS}

    md = (out / "report.md").read_text()
    b2, n2, h2 = mean_b2n({"EuroSAT": (2, 6), "DescribableTextures": (2, 3)})
    assert md_row(md, "**2 (default)**", after="#### K (method.n_rep_tokens)") == \
        ["**2 (default)**", f"{b2:.2f}", f"{n2:.2f}", f"**{h2:.2f}**", "4/4"]
    b1, n1, h1 = mean_b2n({"DescribableTextures": (1, 3)})
    assert md_row(md, "1", after="#### K (method.n_rep_tokens)") == \
        ["1", f"{b1:.2f} (2/4)", f"{n1:.2f} (2/4)", f"{h1:.2f} (2/4)", "2/4"]  # bold: the default's row only
    assert "differs per dataset (DescribableTextures 3, EuroSAT 6): no row is marked" in md
    assert "J at each dataset's default: 3 on DescribableTextures, 6 on EuroSAT." in md
    assert "K = 2 (its default)." in md
    assert md_row(md, "6", after="#### HM over J × K")[1] == "missing"
    assert md_row(md, "3", after="#### HM over J × K")[2] == f"{mean_b2n({d: (2, 3) for d in DS})[2]:.2f}"
    assert "ablation/p16/base2novel/mmrl/EuroSAT/shots_16/seed_1`: missing" in md
    assert md_row(md, "Base-to-novel generalisation (ablation)")[1:] == ["MMRL: J × K", "12/16"]

    # figures: one line plot per key, one heat map for the pair; valid PNGs, shown in the report
    figs = sorted(p.name for p in out.glob("ablation-*.png"))
    assert figs == ["ablation-base2novel-mmrl-method.first_rep_block-x-method.n_rep_tokens.png",
                    "ablation-base2novel-mmrl-method.first_rep_block.png",
                    "ablation-base2novel-mmrl-method.n_rep_tokens.png"]
    for f in figs:
        assert (out / f).read_bytes()[:8] == PNG and (out / f).stat().st_size > 5000
        assert f"]({f})" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 1 + 3  # base2novel.png too

    rows = list(csv.DictReader(io.StringIO((out / "ablation.csv").read_text())))
    assert [(r["key"], r["value"], r["is_default"]) for r in rows] == \
        [(J, "3", "false"), (J, "6", "false"), (K, "1", "false"), (K, "2", "true")]
    assert float(rows[3]["HM"]) == pytest.approx(h2, abs=TOL) and rows[3]["metric"] == "HM"
    assert float(rows[3]["per_dataset:EuroSAT"]) == pytest.approx(hm_eu, abs=TOL)
    assert rows[2]["per_dataset:EuroSAT"] == "" and rows[2]["runs_done"] == "2"
    runs = list(csv.DictReader(io.StringIO((out / "runs.csv").read_text())))
    ab = [r for r in runs if r["ablation"]]
    assert len(ab) == 12 * 2 + 4  # two evaluations per finished run, one row per missing run
    assert {json.loads(r["ablation"])[K] for r in ab} == {1, 2}

    # a second report without the study deletes its figures and CSV
    shutil.rmtree(study / ABLATION_DIR)
    report.write_report(study)
    assert not list(out.glob("ablation-*.png")) and not (out / "ablation.csv").exists()
    assert "## Ablations" not in (out / "report.md").read_text()


def test_ablation_without_grid_files(tmp_path):
    """Ad-hoc ablation runs (no grid file: no default known): the other key takes its first value, the
    caption says so; a run known only by its config.yaml (vary + values) counts as unfinished."""
    out = tmp_path / "adhoc"
    for k in (1, 2):
        for j in (3, 6):
            for s in SEEDS:
                b, n = b2n("EuroSAT", k, j, s)
                write_run(out / f"k{k}-j{j}-s{s}", "base2novel", "mmrl", "EuroSAT", 16, s,
                          {("EuroSAT", "base"): b, ("EuroSAT", "new"): n}, ablation={K: k, J: j})
    write_run(out / "k2-j3-s3", "base2novel", "mmrl", "EuroSAT", 16, 3, {}, ablation={K: 2, J: 3}, config_only=True)
    data = report.collect(out)
    assert "base2novel" not in data["protocols"]
    [st] = data["ablations"]
    tk = next(t for t in st["tables"] if t["key"] == K)
    for row, k in zip(tk["rows"], (1, 2)):
        assert row["others"] == {"EuroSAT": {J: 3}}  # J's first value
        seeds = (1, 2, 3) if k == 2 else SEEDS
        assert row["runs_expected"] == len(seeds) and row["runs_done"] == 2
        assert row["value"] == pytest.approx(mean_b2n({"EuroSAT": (k, 3)})[2], abs=TOL)
    assert not any(r["is_default"] for t in st["tables"] for r in t["rows"])
    out_dir = report.write_report(out, plots=False)
    md = (out_dir / "report.md").read_text()
    assert "J = 3 (no default known) for EuroSAT" in md and "No default known" in md
    assert not list(out_dir.glob("*.png"))
    assert [m["state"] for m in st["missing"]] == ["unfinished"]


def test_default_not_in_grid_and_fewshot(tmp_path):
    """A default outside the grid marks no row; few-shot rows: a column per shot count and their mean."""
    out = tmp_path / "fs"
    acc = {}
    for k in (1, 4):
        base = out / ABLATION_DIR / f"k{k}"
        write_grid(base, "fewshot", "mmrl", DS, [1, 2], [1], values={K: k},
                   defaults={d: {K: 5} for d in DS})
        for d in DS:
            for shots in (1, 2):
                acc[(d, k, shots)] = 40.0 + 10 * DS.index(d) + 2.5 * k + 7.25 * shots
                write_run(sweep_run_dir(base, "fewshot", "mmrl", d, shots, 1), "fewshot", "mmrl", d, shots, 1,
                          {(d, "all"): acc[(d, k, shots)]}, ablation={K: k})
    out_dir = report.write_report(out)
    data = json.loads((out_dir / "report.json").read_text())
    [st] = data["ablations"]
    [t] = st["tables"]
    assert st["metric"] == "Mean over shots" and st["heatmaps"] == []
    for row, k in zip(t["rows"], (1, 4)):
        cols = {f"{x} shot{'s' if x > 1 else ''}": statistics.mean(acc[(d, k, x)] for d in DS) for x in (1, 2)}
        assert row["columns"] == pytest.approx({**cols, "Mean over shots": statistics.mean(cols.values())}, abs=TOL)
        assert row["per_dataset"]["EuroSAT"] == pytest.approx(statistics.mean(acc[("EuroSAT", k, x)] for x in (1, 2)))
        assert not row["is_default"]
    md = (out_dir / "report.md").read_text()
    assert "The default, K = 5, is not in the grid." in md
    assert (out_dir / "ablation-fewshot-mmrl-method.n_rep_tokens.png").read_bytes()[:8] == PNG


# ------------------------------------------------------------------------------------------------
# Explicit logits
# ------------------------------------------------------------------------------------------------

def test_read_evals_tells_explicit_logits_apart(tmp_path):
    run = write_run(tmp_path / "r", "base2novel", "mmrl", "EuroSAT", 16, 1,
                    {("EuroSAT", "base"): 90.0, ("EuroSAT", "new"): 70.0})
    write_logit_eval(run, "EuroSAT", "base", "class", 85.5)
    # an older evaluation file, without logits_requested: the protocol's own
    old = json.loads((run / "eval" / "EuroSAT-new.json").read_text())
    del old["logits_requested"]
    (run / "eval" / "EuroSAT-new.json").write_text(json.dumps(old))
    # a file named as an explicit evaluation whose fields do not say: its name does
    (run / "eval" / eval_file_name("EuroSAT", "new", "rep")).write_text(json.dumps({"accuracy": 66.0}))
    auto, chosen = read_evals(run)
    assert {k: e.accuracy for k, e in auto.items()} == {"EuroSAT-base": 90.0, "EuroSAT-new": 70.0}
    assert auto["EuroSAT-base"].logits == "fused" and auto["EuroSAT-new"].logits == "class"
    assert {k: (e.accuracy, e.choice) for k, e in chosen.items()} == \
        {("EuroSAT", "base", "class"): (85.5, "class"), ("EuroSAT", "new", "rep"): (66.0, "rep")}
    # the protocol table keeps the protocol's own evaluations
    data = report.collect(tmp_path)
    r = data["protocols"]["base2novel"]["methods"]["mmrl"]["datasets"]["EuroSAT"]
    assert (r["base"]["mean"], r["novel"]["mean"]) == (90.0, 70.0)


def test_decoupled_section(tmp_path):
    """Per logit kind: the explicit evaluation, else the protocol's own when it used that kind, else missing."""
    out = tmp_path / "runs"
    auto = {("EuroSAT", 1): (90.0, 70.0), ("EuroSAT", 2): (92.0, 68.0),
            ("DescribableTextures", 1): (80.0, 55.0), ("DescribableTextures", 2): (78.0, 57.0)}
    runs = {}
    for (d, s), (b, n) in auto.items():
        runs[(d, s)] = write_run(sweep_run_dir(out, "base2novel", "mmrl", d, 16, s), "base2novel", "mmrl", d, 16, s,
                                 {(d, "base"): b, (d, "new"): n})
    explicit = {("EuroSAT", 1): {("base", "class"): 85.0, ("new", "fused"): 72.5, ("base", "rep"): 60.0,
                                 ("new", "rep"): 50.0, ("base", "fused"): 90.5},  # equal kind: explicit wins
                ("EuroSAT", 2): {("base", "class"): 86.0, ("new", "fused"): 69.5}}
    for (d, s), per in explicit.items():
        for (sub, kind), a in per.items():
            write_logit_eval(runs[(d, s)], d, sub, kind, a)
    out_dir = report.write_report(out, plots=False)
    data = json.loads((out_dir / "report.json").read_text())
    rows = data["decoupled"]["base2novel"]["mmrl"]["rows"]

    def bnh(pairs):  # [(base, novel) per seed] of one dataset
        b, n = statistics.mean(p[0] for p in pairs), statistics.mean(p[1] for p in pairs)
        return {"Base": b, "Novel": n, "HM": harmonic_mean(b, n)}
    # fused: EuroSAT only (DTD has no fused novel); seed 1 base from its explicit file, seed 2 from the auto one
    assert rows["fused"]["columns"] == pytest.approx(bnh([(90.5, 72.5), (92.0, 69.5)]), abs=TOL)
    assert (rows["fused"]["runs_done"], rows["fused"]["runs_expected"]) == (2, 4)
    # class: explicit base, the auto evaluation of the novel classes (it used class logits)
    assert rows["class"]["columns"] == pytest.approx(bnh([(85.0, 70.0), (86.0, 68.0)]), abs=TOL)
    assert rows["rep"]["columns"] == pytest.approx(bnh([(60.0, 50.0)]), abs=TOL)
    assert (rows["rep"]["runs_done"], rows["rep"]["runs_expected"]) == (1, 4)
    # the protocol's choice is the main table's average
    b = statistics.mean(statistics.mean(auto[(d, s)][0] for s in SEEDS) for d in DS)
    n = statistics.mean(statistics.mean(auto[(d, s)][1] for s in SEEDS) for d in DS)
    assert rows["auto"]["columns"] == pytest.approx({"Base": b, "Novel": n, "HM": harmonic_mean(b, n)}, abs=TOL)
    main = data["protocols"]["base2novel"]["methods"]["mmrl"]["average"]
    assert main["hm_of_means"] == pytest.approx(rows["auto"]["value"], abs=TOL)

    md = (out_dir / "report.md").read_text()
    assert "## Decoupled inference" in md
    f = bnh([(90.5, 72.5), (92.0, 69.5)])
    assert md_row(md, "fused", after="## Decoupled inference") == \
        ["fused", f"{f['Base']:.2f} (2/4)", f"{f['Novel']:.2f} (2/4)", f"**{f['HM']:.2f}** (2/4)", "2/4"]
    assert md_row(md, "protocol's choice (main table)")[-1] == "4/4"
    rows_csv = list(csv.DictReader(io.StringIO((out_dir / "decoupled.csv").read_text())))
    assert [r["logits"] for r in rows_csv] == ["fused", "class", "rep", "auto"]
    assert float(rows_csv[2]["per_dataset:EuroSAT"]) == pytest.approx(harmonic_mean(60.0, 50.0), abs=TOL)
    assert rows_csv[2]["per_dataset:DescribableTextures"] == ""
    runs_rows = list(csv.DictReader(io.StringIO((out_dir / "runs.csv").read_text())))
    assert sorted(r["logits"] for r in runs_rows if r["dataset"] == "EuroSAT" and r["seed"] == "1") == \
        ["auto", "auto", "class", "fused", "fused", "rep", "rep"]


def test_no_decoupled_section_without_explicit_evaluations(tmp_path):
    write_run(tmp_path / "r", "base2novel", "mmrl", "EuroSAT", 16, 1, {("EuroSAT", "base"): 90.0,
                                                                        ("EuroSAT", "new"): 70.0})
    out = report.write_report(tmp_path, plots=False)
    assert "Decoupled inference" not in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["decoupled"] == {}
    assert not (out / "decoupled.csv").exists()


def test_crossdataset_and_user_data_ablations(tmp_path):
    """Cross-dataset rows (source, cross-dataset and DG averages at the largest shot count, per target the
    targets of the metric); a study on user data only (the toy world's tasks) is averaged over them."""
    out = tmp_path / "x"
    A = "method.alpha"
    targets = ["Caltech101", "EuroSAT", "ImageNetV2", "ImageNetA"]

    def cd(t, a, s):
        return {"ImageNet": 70 + 3 * a + s, "Caltech101": 93 - a * s, "EuroSAT": 45 + 5 * a, "ImageNetV2": 63 + a * s,
                "ImageNetA": 50 - 2 * a}[t]
    for a in (0.5, 0.7):
        base = out / ABLATION_DIR / f"a{a}"
        write_grid(base, "crossdataset", "mmrl", ["ImageNet"], [16], SEEDS, targets=targets, values={A: a},
                   defaults={"ImageNet": {A: 0.7}})
        for s in SEEDS:
            write_run(sweep_run_dir(base, "crossdataset", "mmrl", "ImageNet", 16, s), "crossdataset", "mmrl",
                      "ImageNet", 16, s, {(t, "all"): cd(t, a, s) for t in ["ImageNet", *targets]}, ablation={A: a})
    for k in (1, 4):
        for task in ("shapes", "colours"):
            b, n = 80.0 + k + len(task), 60.0 - k * len(task) / 3
            write_run(out / "toy" / f"{task}-k{k}", "base2novel", "mmrl", f"folder:/d/{task}", 16, 1,
                      {(f"folder:{task}", "base"): b, (f"folder:{task}", "new"): n}, name=f"folder:{task}",
                      ablation={K: k})
    data = report.collect(out)
    cross = next(st for st in data["ablations"] if st["protocol"] == "crossdataset")
    [t] = cross["tables"]
    for row, a in zip(t["rows"], (0.5, 0.7)):
        acc = {x: statistics.mean(cd(x, a, s) for s in SEEDS) for x in ["ImageNet", *targets]}
        assert row["columns"] == pytest.approx({
            "ImageNet (source)": acc["ImageNet"], "Cross-dataset": (acc["Caltech101"] + acc["EuroSAT"]) / 2,
            "DG": (acc["ImageNetV2"] + acc["ImageNetA"]) / 2}, abs=TOL)
        assert row["per_dataset"] == pytest.approx({"Caltech101": acc["Caltech101"], "EuroSAT": acc["EuroSAT"]},
                                                   abs=TOL)
        assert row["is_default"] == (a == 0.7)
    toy = next(st for st in data["ablations"] if st["protocol"] == "base2novel")
    assert toy["datasets"] == ["folder:colours", "folder:shapes"]
    for row, k in zip(toy["tables"][0]["rows"], (1, 4)):
        b = statistics.mean(80.0 + k + len(x) for x in ("shapes", "colours"))
        n = statistics.mean(60.0 - k * len(x) / 3 for x in ("shapes", "colours"))
        assert row["columns"] == pytest.approx({"Base": b, "Novel": n, "HM": harmonic_mean(b, n)}, abs=TOL)
