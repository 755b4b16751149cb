"""`mmrl report`'s robustness section on fake sweeps: accuracy against the noise rate (one panel per
noise type, a line per method, the remedy apart and dashed) and against the imbalance ratio, the
seed range, zero-shot as the flat reference, the table and robustness.csv -- the points checked
against averages computed here from the inputs."""
from __future__ import annotations

import csv
import io
import json
import statistics

import pytest

from fake_runs import write_grid, write_run, write_zeroshot
from mmrl import report
from mmrl.vocab import ABLATION_DIR, sweep_run_dir

TOL = 1e-9  # the same arithmetic in another order: rounding only
PNG = b"\x89PNG\r\n\x1a\n"
DS = ("EuroSAT", "DescribableTextures")
SEEDS = (1, 2, 3)
SHOTS = 8
NOISE = [0, 2, 4, 6]


def acc_noise(method: str, d: str, typ: str, wrong: int, loss: str, seed: int) -> float:
    base = 80.0 - 5 * DS.index(d) + (3 if method == "mmrl++" else 0)
    drop = (4.0 if typ == "pairflip" else 3.0) * wrong * (0.5 if loss == "gce" else 1.0)
    return base - drop + 0.7 * seed


@pytest.fixture
def noise_sweep(tmp_path):
    out = tmp_path / "sweep"
    for method in ("mmrl", "mmrl++"):
        for typ in ("symflip", "pairflip"):
            for wrong in NOISE:
                for loss in ("ce", "gce"):
                    values = {"data.noise.type": typ, "data.noise.shots": wrong, "optim.loss": loss}
                    base = out / ABLATION_DIR / f"{typ}-{wrong}-{loss}"
                    write_grid(base, "fewshot", method, DS, [SHOTS], SEEDS, values=values,
                               defaults={d: {"data.noise.type": "none", "data.noise.shots": 0, "optim.loss": "ce"}
                                         for d in DS})
                    for d in DS:
                        for s in SEEDS:
                            write_run(sweep_run_dir(base, "fewshot", method, d, SHOTS, s), "fewshot", method, d,
                                      SHOTS, s, {(d, "all"): acc_noise(method, d, typ, wrong, loss, s)},
                                      ablation=values)
    write_zeroshot(out / "zeroshot", {(d, "all"): 50.0 + DS.index(d) for d in DS})
    return out


def test_noise_figure_data(noise_sweep):
    out_dir = report.write_report(noise_sweep)
    data = json.loads((out_dir / "report.json").read_text())
    [fig] = data["robustness"]
    assert fig["axis"] == "data.noise.shots" and fig["remedy_key"] == "optim.loss"
    assert fig["panel_keys"] == ["data.noise.type"] and fig["shots"] == [SHOTS]
    assert fig["zeroshot"] == pytest.approx(statistics.mean(50.0 + DS.index(d) for d in DS), abs=TOL)
    panels = {p["label"]: p for p in fig["panels"]}
    assert set(panels) == {"data.noise.type symflip", "data.noise.type pairflip"}
    for typ in ("symflip", "pairflip"):
        lines = {(ln["method"], ln["remedy"]): ln for ln in panels[f"data.noise.type {typ}"]["lines"]}
        assert set(lines) == {(m, r) for m in ("MMRL", "MMRL++") for r in ("ce", "gce")}
        for (label, loss), ln in lines.items():
            method = "mmrl" if label == "MMRL" else "mmrl++"
            assert ln["dashed"] == (loss == "gce")
            assert [p["x"] for p in ln["points"]] == [100.0 * w / SHOTS for w in NOISE]  # the noise rate in %
            for p, wrong in zip(ln["points"], NOISE):
                per_seed = [statistics.mean(acc_noise(method, d, typ, wrong, loss, s) for d in DS) for s in SEEDS]
                assert p["value"] == pytest.approx(statistics.mean(per_seed), abs=TOL)
                assert (p["low"], p["high"]) == pytest.approx((min(per_seed), max(per_seed)), abs=TOL)
                assert (p["runs_done"], p["runs_expected"]) == (len(DS) * len(SEEDS),) * 2
    assert (out_dir / fig["figure"]).read_bytes()[:8] == PNG
    md = (out_dir / "report.md").read_text()
    assert "## Robustness" in md and f"]({fig['figure']})" in md and "Zero-shot CLIP: 50.50." in md
    rows = list(csv.DictReader(io.StringIO((out_dir / "robustness.csv").read_text())))
    assert len(rows) == 2 * 4 * len(NOISE)  # panels x lines x points
    one = next(r for r in rows if r["method"] == "MMRL++" and r["remedy"] == "gce" and r["value_of_key"] == "4"
               and r["panel"] == "data.noise.type pairflip")
    want = statistics.mean(acc_noise("mmrl++", d, "pairflip", 4, "gce", s) for d in DS for s in SEEDS)
    assert float(one["x"]) == 50.0 and float(one["value"]) == pytest.approx(want, abs=1e-6)


def test_imbalance_axis_without_remedy_and_no_zeroshot(tmp_path):
    out = tmp_path / "imb"
    ratios = [1, 0.1, 0.02]
    for r in ratios:
        base = out / ABLATION_DIR / f"rho{r}"
        write_grid(base, "fewshot", "mmrl", ["EuroSAT"], [SHOTS], [1], values={"data.imbalance.ratio": r},
                   defaults={"EuroSAT": {"data.imbalance.ratio": 1}})
        write_run(sweep_run_dir(base, "fewshot", "mmrl", "EuroSAT", SHOTS, 1), "fewshot", "mmrl", "EuroSAT", SHOTS, 1,
                  {("EuroSAT", "all"): 70.0 + 10 * r}, ablation={"data.imbalance.ratio": r})
    out_dir = report.write_report(out)
    data = json.loads((out_dir / "report.json").read_text())
    [fig] = data["robustness"]
    assert fig["kind"] == "imbalance" and fig["remedy_key"] is None and fig["zeroshot"] is None
    [panel] = fig["panels"]
    [ln] = panel["lines"]
    assert not ln["dashed"] and [p["x"] for p in ln["points"]] == [0.02, 0.1, 1.0]
    assert [p["value"] for p in ln["points"]] == pytest.approx([70.2, 71.0, 80.0], abs=TOL)
    assert all(p["low"] is None for p in ln["points"])  # one seed: no range
    md = (out_dir / "report.md").read_text()
    assert "Zero-shot CLIP: not found" in md
    assert (out_dir / fig["figure"]).exists()


def test_no_robustness_section_for_other_ablations(tmp_path):
    out = tmp_path / "other"
    for k in (1, 4):
        base = out / ABLATION_DIR / f"k{k}"
        write_grid(base, "fewshot", "mmrl", ["EuroSAT"], [SHOTS], [1], values={"method.n_rep_tokens": k})
        write_run(sweep_run_dir(base, "fewshot", "mmrl", "EuroSAT", SHOTS, 1), "fewshot", "mmrl", "EuroSAT", SHOTS, 1,
                  {("EuroSAT", "all"): 70.0 + k}, ablation={"method.n_rep_tokens": k})
    out_dir = report.write_report(out)
    data = json.loads((out_dir / "report.json").read_text())
    assert data["robustness"] == [] and "## Robustness" not in (out_dir / "report.md").read_text()
    assert not (out_dir / "robustness.csv").exists() and not list(out_dir.glob("robustness-*.png"))
