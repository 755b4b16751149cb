"""`mmrl report` on fake sweep folders: numbers against hand-computed means/HM, CSV, PNG, missing runs."""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from fake_runs import md_row
from mmrl import report
from mmrl import sweep
from mmrl.sweep import DATASETS
from mmrl.fileio import write_json_atomic

# Values are written with many digits and compared after the same float arithmetic in another
# order, so only rounding differences (~1e-12) remain.
TOL = 1e-9


def write_run(output: Path, protocol: str, method: str, dataset: str, shots: int, seed: int,
              acc: dict[str, float], status: str = "finished") -> Path:
    """A run folder in the format of `mmrl train` (run.json + eval/<key>.json)."""
    rd = sweep.run_dir_for(output, protocol, method, dataset, shots, seed)
    (rd / "eval").mkdir(parents=True, exist_ok=True)
    (rd / "run.json").write_text(json.dumps({"version": 1, "method": method, "dataset": dataset,
                                             "protocol": protocol, "shots": shots, "seed": seed,
                                             "backbone": "ViT-B-16", "status": status}))
    for key, a in acc.items():
        ds, sub = key.rsplit("-", 1)
        (rd / "eval" / f"{key}.json").write_text(json.dumps(
            {"dataset": ds, "subsample": sub, "accuracy": a, "macro_accuracy": a - 1, "per_class": {}, "n": 100,
             "logits": None}))
    return rd


def b2n_values(i: int, seed: int) -> tuple[float, float]:
    """Deterministic fake Base/Novel accuracy for dataset index i and a seed (irregular on purpose)."""
    return 60.0 + 2.5 * i + 0.37 * seed ** 2 - 0.11 * i * seed, 55.0 + 1.75 * i - 0.9 * seed + 0.05 * i * i


def hm(b, n):
    return 2 * b * n / (b + n)


@pytest.fixture
def full_b2n(tmp_path):
    out = tmp_path / "sweep"
    for i, d in enumerate(DATASETS):
        for s in (1, 2, 3):
            b, n = b2n_values(i, s)
            write_run(out, "base2novel", "mmrl", d, 16, s, {f"{d}-base": b, f"{d}-new": n})
    return out


def test_base2novel_finished(full_b2n):
    out = report.write_report(full_b2n)
    data = json.loads((out / "report.json").read_text())
    e = data["protocols"]["base2novel"]["methods"]["mmrl"]
    for i, d in enumerate(DATASETS):
        bs = [b2n_values(i, s)[0] for s in (1, 2, 3)]
        ns = [b2n_values(i, s)[1] for s in (1, 2, 3)]
        hs = [hm(b, n) for b, n in zip(bs, ns)]
        r = e["datasets"][d]
        assert r["seeds"] == [1, 2, 3]
        assert r["base"]["mean"] == pytest.approx(statistics.mean(bs), abs=TOL)
        assert r["base"]["std"] == pytest.approx(statistics.pstdev(bs), abs=TOL)
        assert r["novel"]["mean"] == pytest.approx(statistics.mean(ns), abs=TOL)
        assert r["hm"]["mean"] == pytest.approx(statistics.mean(hs), abs=TOL)
        assert r["hm"]["std"] == pytest.approx(statistics.pstdev(hs), abs=TOL)
        assert r["hm_of_means"] == pytest.approx(hm(statistics.mean(bs), statistics.mean(ns)), abs=TOL)
    # papers' average: mean Base and mean Novel over datasets first, then HM of the two
    avg_b = statistics.mean(statistics.mean(b2n_values(i, s)[0] for s in (1, 2, 3)) for i in range(11))
    avg_n = statistics.mean(statistics.mean(b2n_values(i, s)[1] for s in (1, 2, 3)) for i in range(11))
    a = e["average"]
    assert a["complete"] and len(a["datasets"]) == 11
    assert a["base"]["mean"] == pytest.approx(avg_b, abs=TOL)
    assert a["novel"]["mean"] == pytest.approx(avg_n, abs=TOL)
    assert a["hm_of_means"] == pytest.approx(hm(avg_b, avg_n), abs=TOL)
    per_seed_b = [statistics.mean(b2n_values(i, s)[0] for i in range(11)) for s in (1, 2, 3)]
    assert a["base"]["std"] == pytest.approx(statistics.pstdev(per_seed_b), abs=TOL)
    assert data["protocols"]["base2novel"]["missing"] == []

    md = (out / "report.md").read_text()
    assert "HM of the mean Base and mean Novel" in md  # the caption says which HM is which
    bs = [b2n_values(1, s)[0] for s in (1, 2, 3)]
    row = md_row(md, "Caltech101")
    assert row[1] == "3/3"
    assert row[2] == f"{statistics.mean(bs):.2f} ± {statistics.pstdev(bs):.2f}"
    avg = md_row(md, "**Average (11 datasets)**")
    assert avg[5] == f"**{hm(avg_b, avg_n):.2f}**"
    assert avg[6] == "85.68/77.16/81.20"  # published MMRL average beside ours
    cmp = md_row(md, "MMRL", after="vs published")
    assert cmp[1:4] == [f"{avg_b:.2f}", f"{avg_n:.2f}", f"{hm(avg_b, avg_n):.2f}"]
    assert cmp[4:7] == ["85.68", "77.16", "81.20"]
    assert cmp[7] == f"{hm(avg_b, avg_n) - 81.20:.2f}"
    assert md_row(md, "CoOp", after="vs published")[1:] == ["—", "—", "—", "82.69", "63.22", "71.66", "—"]

    rows = list(csv.DictReader(io.StringIO((out / "base2novel.csv").read_text())))
    assert len(rows) == 12
    r = next(r for r in rows if r["dataset"] == "Caltech101")
    assert float(r["base_mean"]) == pytest.approx(statistics.mean(bs), abs=TOL)
    r = next(r for r in rows if r["dataset"] == "Average")
    assert float(r["hm_of_means"]) == pytest.approx(hm(avg_b, avg_n), abs=TOL)
    assert float(r["published_hm"]) == 81.20
    runs = list(csv.DictReader(io.StringIO((out / "runs.csv").read_text())))
    assert len(runs) == 11 * 3 * 2
    png = out / "base2novel.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_base2novel_partial(tmp_path):
    out = tmp_path / "sweep"
    seeds_of = {d: (1, 2, 3) for d in DATASETS}
    seeds_of["OxfordPets"] = (1, 3)          # 2/3 seeds
    seeds_of["EuroSAT"] = ()                 # missing entirely
    for i, d in enumerate(DATASETS):
        for s in seeds_of[d]:
            b, n = b2n_values(i, s)
            write_run(out, "base2novel", "mmrl", d, 16, s, {f"{d}-base": b, f"{d}-new": n})
    write_run(out, "base2novel", "mmrl", "OxfordPets", 16, 2, {}, status="running")
    rd = write_run(out, "base2novel", "mmrl", "EuroSAT", 16, 1, {}, status="failed")
    (rd / "stdout.log").write_text("Traceback: boom\n")
    claimed = sweep.run_dir_for(out, "base2novel", "mmrl", "EuroSAT", 16, 3)
    claimed.parent.mkdir(parents=True, exist_ok=True)
    claimed.with_name("seed_3.claim").write_text(json.dumps({"host": "node7", "pid": 99, "time_iso": "t0"}))
    out_dir = report.write_report(out, out=tmp_path / "rep")
    data = json.loads((out_dir / "report.json").read_text())
    sec = data["protocols"]["base2novel"]
    e = sec["methods"]["mmrl"]
    assert e["datasets"]["OxfordPets"]["seeds"] == [1, 3]
    assert e["datasets"]["EuroSAT"]["base"] is None
    have = [i for i, d in enumerate(DATASETS) if d != "EuroSAT"]
    avg_b = statistics.mean(statistics.mean(b2n_values(i, s)[0] for s in seeds_of[DATASETS[i]]) for i in have)
    avg_n = statistics.mean(statistics.mean(b2n_values(i, s)[1] for s in seeds_of[DATASETS[i]]) for i in have)
    assert not e["average"]["complete"]
    assert e["average"]["hm_of_means"] == pytest.approx(hm(avg_b, avg_n), abs=TOL)
    states = {m["run"]: m for m in sec["missing"]}
    assert states["base2novel/mmrl/OxfordPets/shots_16/seed_2"]["state"] == "unfinished"
    assert states["base2novel/mmrl/EuroSAT/shots_16/seed_1"]["state"] == "failed"
    assert states["base2novel/mmrl/EuroSAT/shots_16/seed_1"]["log"].endswith("stdout.log")
    assert states["base2novel/mmrl/EuroSAT/shots_16/seed_2"]["state"] == "missing"
    assert states["base2novel/mmrl/EuroSAT/shots_16/seed_3"]["state"] == "claimed"
    assert "node7 pid 99" in states["base2novel/mmrl/EuroSAT/shots_16/seed_3"]["detail"]
    assert len(sec["missing"]) == 1 + 3

    md = (out_dir / "report.md").read_text()
    assert md_row(md, "OxfordPets")[1] == "2/3"
    assert md_row(md, "EuroSAT")[1:6] == ["0/3", "missing", "missing", "missing", "missing"]
    assert "**Average (10/11 datasets, incomplete)**" in md
    assert "**Runs: 29/33 finished.**" in md
    assert "`base2novel/mmrl/EuroSAT/shots_16/seed_1`: failed" in md and "stdout.log" in md
    rows = list(csv.DictReader(io.StringIO((out_dir / "base2novel.csv").read_text())))
    euro = next(r for r in rows if r["dataset"] == "EuroSAT")
    assert euro["seeds_done"] == "0" and euro["base_mean"] == ""
    assert (out_dir / "base2novel.png").stat().st_size > 5000


def test_fewshot_with_grid_file_and_zeroshot(tmp_path):
    out = tmp_path / "sweep"
    spec = {"protocol": "fewshot", "method": "mmrl++", "datasets": ["Caltech101", "EuroSAT"], "targets": [],
            "shots": [1, 2, 4], "seeds": [1, 2]}
    write_json_atomic(spec, out / "fewshot" / "mmrl++" / "grid-test.json")

    def acc(d, k, s):
        return {"Caltech101": 80.0, "EuroSAT": 50.0}[d] + 3.0 * k + 0.7 * s
    for d in spec["datasets"]:
        for k in spec["shots"]:
            for s in spec["seeds"]:
                if (d, k, s) != ("EuroSAT", 4, 2):
                    write_run(out, "fewshot", "mmrl++", d, k, s, {f"{d}-all": acc(d, k, s)})
    zs = out / "zeroshot" / "Caltech101" / "eval"
    zs.mkdir(parents=True)
    (zs / "Caltech101-all.json").write_text(json.dumps({"accuracy": 90.5}))
    out_dir = report.write_report(out)
    data = json.loads((out_dir / "report.json").read_text())
    e = data["protocols"]["fewshot"]["methods"]["mmrl++"]
    assert e["n_expected"] == 12 and e["n_finished"] == 11
    a = e["datasets"]["Caltech101"]["2"]["acc"]
    assert a["mean"] == pytest.approx(statistics.mean([acc("Caltech101", 2, 1), acc("Caltech101", 2, 2)]), abs=TOL)
    assert e["average"]["1"]["acc"] == pytest.approx(
        statistics.mean(statistics.mean(acc(d, 1, s) for s in (1, 2)) for d in spec["datasets"]), abs=TOL)
    assert e["average"]["1"]["complete"] and not e["average"]["4"]["complete"]
    md = (out_dir / "report.md").read_text()
    row = md_row(md, "EuroSAT")
    assert row[3] == f"{acc('EuroSAT', 4, 1):.2f} (1/2)"
    assert md_row(md, "Caltech101")[-1] == "90.50"  # CLIP zero-shot column
    assert md_row(md, "EuroSAT")[-1] == "—"
    assert "`fewshot/mmrl++/EuroSAT/shots_4/seed_2`: missing" in md
    rows = list(csv.DictReader(io.StringIO((out_dir / "fewshot.csv").read_text())))
    assert {(r["dataset"], r["shots"]) for r in rows if r["method"] == "mmrl++"} == \
        {(d, str(k)) for d in ("Caltech101", "EuroSAT", "Average") for k in (1, 2, 4)}
    assert (out_dir / "fewshot.png").stat().st_size > 5000


def test_crossdataset_and_zeroshot_rows(tmp_path):
    out = tmp_path / "sweep"
    spec = {"protocol": "crossdataset", "method": "mmrl", "datasets": ["ImageNet"],
            "targets": ["Caltech101", "EuroSAT", "ImageNetV2", "ImageNetA"], "shots": [16], "seeds": [1, 2]}
    write_json_atomic(spec, out / "crossdataset" / "mmrl" / "grid-test.json")
    vals = {1: {"ImageNet": 72.0, "Caltech101": 94.0, "EuroSAT": 45.0, "ImageNetV2": 64.0, "ImageNetA": 50.0},
            2: {"ImageNet": 72.6, "Caltech101": 93.0, "EuroSAT": 49.0, "ImageNetV2": 65.0}}  # seed 2 lacks A
    for s, v in vals.items():
        write_run(out, "crossdataset", "mmrl", "ImageNet", 16, s, {f"{k}-all": a for k, a in v.items()})
    zdir = out / "zeroshot" / "ImageNet" / "eval"
    zdir.mkdir(parents=True)
    for k, a in {"ImageNet": 66.7, "Caltech101": 93.3, "EuroSAT": 48.0}.items():
        (zdir / f"{k}-all.json").write_text(json.dumps({"accuracy": a}))
    out_dir = report.write_report(out, protocols=["crossdataset"])
    data = json.loads((out_dir / "report.json").read_text())
    t = data["protocols"]["crossdataset"]["methods"]["mmrl"]["shots"]["16"]
    assert t["targets"]["EuroSAT"]["acc"]["mean"] == pytest.approx(47.0, abs=TOL)
    assert t["targets"]["ImageNetA"]["acc"]["n"] == 1
    assert t["average"]["crossdataset"]["acc"] == pytest.approx((93.5 + 47.0) / 2, abs=TOL)
    assert t["average"]["dg"]["acc"] == pytest.approx((64.5 + 50.0) / 2, abs=TOL)
    missing = data["protocols"]["crossdataset"]["missing"]
    assert missing == [{"run": "crossdataset/mmrl/ImageNet/shots_16/seed_2", "state": "missing evals",
                        "detail": "ImageNetA"}]
    md = (out_dir / "report.md").read_text()
    row = md_row(md, "MMRL", after="### Domain generalisation")
    assert row[1:] == ["72.30 ± 0.30", "64.50 ± 0.50", "50.00 (1/2)", "**57.25 (2/4 targets)**"]
    zrow = md_row(md, "CLIP zero-shot (ours)", after="### Cross-dataset")
    assert zrow[1:4] == ["66.70", "93.30", "48.00"]
    assert (out_dir / "crossdataset.png").stat().st_size > 5000
    assert not (out_dir / "base2novel.csv").exists()


def test_base2novel_zeroshot_row_and_cli(tmp_path):
    from mmrl.cli import main

    out = tmp_path / "sweep"
    write_run(out, "base2novel", "mmrl++", "DescribableTextures", 16, 1,
              {"DescribableTextures-base": 80.0, "DescribableTextures-new": 60.0})
    zdir = out / "zeroshot" / "DescribableTextures" / "eval"
    zdir.mkdir(parents=True)
    (zdir / "DescribableTextures-base.json").write_text(json.dumps({"accuracy": 53.24}))
    (zdir / "DescribableTextures-new.json").write_text(json.dumps({"accuracy": 59.90}))
    assert main(["report", str(out), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert md_row(md, "DescribableTextures", after="### MMRL++")[1:3] == ["1/1", "80.00"]  # no grid file: ad hoc
    zrow = md_row(md, "DescribableTextures", after="### CLIP zero-shot (ours)")
    assert zrow[2:4] == ["53.24", "59.90"] and zrow[5] == f"{hm(53.24, 59.90):.2f}"
    # no published MMRL++ numbers in the spec: dash
    assert md_row(md, "MMRL++ (1/11 datasets)", after="vs published")[4:] == ["—", "—", "—", "—"]
    assert md_row(md, "CLIP zero-shot (ours) (1/11 datasets)", after="vs published")[4:7] == \
        ["69.34", "74.22", "71.70"]
    assert not list((tmp_path / "r").glob("*.png"))
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_published_data_matches_spec():
    pub = report.load_published()
    avg = {r["method"]: r for r in pub["base2novel"]["average"]}
    assert set(avg) == {"CLIP zero-shot", "CoOp", "CoCoOp", "MaPLe", "PromptSRC", "MMRL"}
    for r in avg.values():  # the published HM is the HM of the published averages (to rounding)
        assert hm(r["base"], r["novel"]) == pytest.approx(r["hm"], abs=0.011)
