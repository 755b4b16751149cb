"""Ablations in `mmrl reproduce`: --vary (grid points, placement, checks before any work, defaults),
--logits (evaluations without retraining), --dry-run, user datasets, and a tiny 2x2 ablation end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmrl import sweep
from mmrl.config import dump_config, resolve_config
from mmrl.sweep.ablation import parse_vary, point_dir, point_sets, points
from mmrl.sweep.reproduce import reproduce

from fixtures_data import write_image

sys.path.insert(0, str(Path(__file__).parent))
from test_sweep_reproduce import FakeTrain, finish, quiet  # noqa: E402


@pytest.fixture(autouse=True)
def _benchmark_folders(tmp_path):
    """The tests pass tmp_path as --root: reproduce checks that each dataset's folder is there."""
    from helpers import make_benchmark_folders

    make_benchmark_folders(tmp_path)


def test_parse_vary_types_orders_and_rejects():
    v = parse_vary(["method.n_rep_tokens=10,1,5", "method.alpha=0.5,1", "data.template=a {}.,the {}"])
    assert [x.key for x in v] == ["data.template", "method.alpha", "method.n_rep_tokens"]  # keys sorted
    assert v[2].values == (1, 5, 10) and all(type(x) is int for x in v[2].values)
    assert v[1].values == (0.5, 1.0) and all(type(x) is float for x in v[1].values)  # typed as the key holds it
    assert v[0].values == ("a {}.", "the {}")  # strings keep the given order
    assert parse_vary(["optim.betas=[0.9, 0.99],[0.8,0.9]"])[0].values == ([0.9, 0.99], [0.8, 0.9])
    # the same grid (and shards) whatever the order of the arguments
    assert points(parse_vary(["method.alpha=1,0.5", "method.n_rep_tokens=2,1"])) == \
        points(parse_vary(["method.n_rep_tokens=1,2", "method.alpha=0.5,1"]))
    for items, words in ((["seed=1,2"], "--seeds"), (["data.shots=1,2"], "--shots"),
                         (["method.name=mmrl,mmrl++"], "--method"), (["method.n_rep_toks=1,2"], "n_rep_tokens"),
                         (["method.n_rep_tokens=1,2.5"], "expected an integer"),
                         (["method.n_rep_tokens=1,1"], "twice"), (["method.alpha=0.5"], "at least two"),
                         (["method.alpha=0.5,,1"], "expected a number"), (["method.alpha"], "KEY=V1,V2"),
                         (["method.alpha=0.5,1", "method.alpha=0.2,0.3"], "given twice")):
        with pytest.raises(ValueError, match=words):
            parse_vary(items)


def test_points_are_placed_apart_and_plain_sweeps_keep_their_layout(tmp_path):
    out = tmp_path / "sweep"
    plain = sweep.build_grid("base2novel", "mmrl", out, datasets=["dtd", "eurosat"], seeds=[1])
    assert plain[0].run_dir == out / "base2novel" / "mmrl" / "DescribableTextures" / "shots_16" / "seed_1"
    k_only = sweep.build_grid("base2novel", "mmrl", out, datasets=["dtd", "eurosat"], seeds=[1],
                              points=points(parse_vary(["method.n_rep_tokens=1,5"])))
    k_and_j = sweep.build_grid("base2novel", "mmrl", out, datasets=["dtd", "eurosat"], seeds=[1],
                               points=points(parse_vary(["method.n_rep_tokens=1,5", "method.first_rep_block=3,6"])))
    assert len(k_only) == 4 and len(k_and_j) == 8
    dirs = [{c.run_dir for c in g} for g in (plain, k_only, k_and_j)]
    assert all(len(d) == n for d, n in zip(dirs, (2, 4, 8)))
    assert not (dirs[0] & dirs[1]) and not (dirs[0] & dirs[2]) and not (dirs[1] & dirs[2])
    c = k_and_j[0]
    assert c.point == (("method.first_rep_block", 3), ("method.n_rep_tokens", 1))
    assert c.run_dir == (out / "ablation" / "method.first_rep_block=3,method.n_rep_tokens=1" / "base2novel" / "mmrl"
                         / "DescribableTextures" / "shots_16" / "seed_1")
    assert c.name == "ablation/method.first_rep_block=3,method.n_rep_tokens=1/base2novel/mmrl/DescribableTextures/" \
                     "shots_16/seed_1"
    cmd = sweep.SubprocessRunner(["py", "fake.py"]).train_command(c)
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets == ["method.first_rep_block=3", "method.n_rep_tokens=1",
                    'vary=["method.first_rep_block", "method.n_rep_tokens"]']
    # names that a file system would not keep apart stay apart
    a, b = ((("data.template", "a/b {}"),), (("data.template", "a_b {}"),))
    assert point_dir(a) != point_dir(b) and "/" not in point_dir(a)


def test_the_sets_of_a_point_resolve_to_its_values():
    point = points(parse_vary(["method.alpha=0.5,1", "optim.betas=[0.9,0.99],[0.8,0.9]"]))[1]
    cfg = resolve_config("mmrl", "base2novel", "dtd", overrides=point_sets(point))
    assert cfg.ablation() == {"method.alpha": 0.5, "optim.betas": [0.8, 0.9]} == dict(point)
    assert cfg.vary == ("method.alpha", "optim.betas")


def test_a_bad_grid_point_fails_before_any_work(tmp_path, capsys):
    from mmrl.cli import main

    out = tmp_path / "sweep"
    train = FakeTrain()
    # the packaged tiny CLIP has 6 blocks per tower: J = 7 cannot be (its depth is read without loading it)
    with pytest.raises(ValueError, match=r"grid point method.first_rep_block=7 on DescribableTextures .*6 vision"):
        reproduce("base2novel", "mmrl", out, datasets=["dtd"], seeds=[1], backbone="toy-clip",
                  vary=["method.first_rep_block=4,7"], run_train=train, log=quiet)
    assert train.calls == [] and not out.exists()
    with pytest.raises(ValueError, match=r"grid point method.alpha=1.5 on DescribableTextures: .*\[0, 1\]"):
        reproduce("base2novel", "mmrl", out, datasets=["dtd"], seeds=[1], vary=["method.alpha=0.5,1.5"],
                  run_train=train, log=quiet)
    with pytest.raises(ValueError, match="optim.lrr"):  # a fixed --set is checked before work too
        reproduce("base2novel", "mmrl", out, datasets=["dtd"], seeds=[1], sets=["optim.lrr=1"],
                  run_train=train, log=quiet)
    assert train.calls == [] and not out.exists()
    rc = main(["reproduce", "base2novel", "--method", "mmrl", "--root", str(tmp_path), "--output", str(out),
               "--datasets", "dtd", "--backbone", "toy-clip", "--vary", "method.first_rep_block=4,7"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "method.first_rep_block=7" in err
    assert "Traceback" not in err and not out.exists()


def test_grid_files_record_each_point_and_its_defaults(tmp_path):
    out = tmp_path / "sweep"
    res = reproduce("base2novel", "mmrl", out, datasets=["ImageNet", "EuroSAT"], seeds=[1],
                    vary=["method.reg_weight=0.5,1"], run_train=FakeTrain(), write_report=False, log=quiet)
    assert [o.status for o in res.outcomes] == ["done"] * 4
    for value in (0.5, 1.0):
        base = out / "ablation" / f"method.reg_weight={value}"
        (grid,) = (base / "base2novel" / "mmrl").glob("grid-*.json")
        spec = json.loads(grid.read_text())
        # lambda's default differs per dataset (docs/protocols.md#per-dataset: MMRL ImageNet 0.5, EuroSAT 0.01)
        assert spec["ablation"] == {"values": {"method.reg_weight": value},
                                    "defaults": {"ImageNet": {"method.reg_weight": 0.5},
                                                 "EuroSAT": {"method.reg_weight": 0.01}}}
        assert spec["datasets"] == ["ImageNet", "EuroSAT"] and spec["seeds"] == [1]
    # a --set of a varied key is the default the ablation compares with
    out2 = tmp_path / "sweep2"
    reproduce("base2novel", "mmrl", out2, datasets=["EuroSAT"], seeds=[1], sets=["method.reg_weight=2"],
              vary=["method.reg_weight=0.5,1"], run_train=FakeTrain(), write_report=False, log=quiet)
    spec = json.loads(next((out2 / "ablation").glob("*/base2novel/mmrl/grid-*.json")).read_text())
    assert spec["ablation"]["defaults"] == {"EuroSAT": {"method.reg_weight": 2.0}}


def _finished_with_config(cell: sweep.Cell, overrides: list) -> None:
    finish(cell)
    cfg = resolve_config(cell.method, cell.protocol, cell.dataset, overrides=overrides,
                         flags={"data.shots": cell.shots, "seed": cell.seed, "output": str(cell.run_dir)})
    (cell.run_dir / "config.yaml").write_text(dump_config(cfg))


def test_a_finished_run_of_other_settings_is_not_counted(tmp_path):
    out = tmp_path / "sweep"
    (cell,) = sweep.build_grid("fewshot", "mmrl", out, datasets=["dtd"], seeds=[1], shots=[4],
                               sets=["optim.lr=0.01"])
    _finished_with_config(cell, ["optim.lr=0.01", "data.num_workers=3"])
    assert sweep.cell_state(cell).kind == "finished"
    # the same folder asked with another learning rate: not skipped as finished, not retrained silently
    (other,) = sweep.build_grid("fewshot", "mmrl", out, datasets=["dtd"], seeds=[1], shots=[4],
                                sets=["optim.lr=0.02", "data.num_workers=0"])
    state = sweep.cell_state(other)
    assert state.kind == "mismatch" and "optim.lr: 0.01 -> 0.02" in state.detail
    assert "num_workers" not in state.detail  # where and how it ran may differ, as on resume
    train = FakeTrain()
    res = reproduce("fewshot", "mmrl", out, datasets=["dtd"], seeds=[1], shots=[4], sets=["optim.lr=0.02"],
                    run_train=train, write_report=False, log=quiet)
    assert train.calls == [] and res.outcomes[0].status == "failed" and "optim.lr" in res.outcomes[0].detail
    # an ablation run whose run.json records other values
    (pt,) = [c for c in sweep.build_grid("fewshot", "mmrl", out, datasets=["dtd"], seeds=[1], shots=[4],
                                         points=points(parse_vary(["method.alpha=0.5,1"])))
             if c.point == (("method.alpha", 0.5),)]
    finish(pt, ablation={"method.alpha": 1.0})
    state = sweep.cell_state(pt)
    assert state.kind == "mismatch" and "ablation" in state.detail


def test_logits_add_evaluations_without_retraining(tmp_path):
    out = tmp_path / "sweep"
    (b2n,) = sweep.build_grid("base2novel", "mmrl", out, datasets=["dtd"], seeds=[1], logits=["rep", "fused", "class"])
    jobs = {(j.dataset, j.subsample, j.logits) for j in b2n.eval_jobs}
    # the protocol's own choice (fused on base, class on novel) exists after training: not evaluated again
    assert jobs == {("DescribableTextures", "base", "class"), ("DescribableTextures", "base", "rep"),
                    ("DescribableTextures", "new", "fused"), ("DescribableTextures", "new", "rep")}
    (cross,) = sweep.build_grid("crossdataset", "mmrl", out, datasets=["EuroSAT"], seeds=[1], logits=["fused"])
    assert [(j.dataset, j.subsample, j.logits) for j in cross.eval_jobs] == \
        [("EuroSAT", "all", "auto"), ("EuroSAT", "all", "fused")]
    runner = sweep.SubprocessRunner(["py", "fake.py"])
    job = next(j for j in b2n.eval_jobs if j.logits == "rep" and j.subsample == "new")
    assert runner.eval_command(b2n, job) == ["py", "fake.py", "eval", str(b2n.run_dir), "--dataset",
                                             "DescribableTextures", "--subsample", "new", "--logits", "rep"]
    assert job.file == "DescribableTextures-new-rep.json"
    finish(b2n)
    assert sweep.cell_state(b2n).kind == "evals"  # trained; evaluations missing
    calls = []

    def run_eval(c, j):
        calls.append((j.subsample, j.logits))
        (c.run_dir / "eval" / j.file).write_text(json.dumps({"accuracy": 1.0}))
        return 0
    train = FakeTrain()
    res = reproduce("base2novel", "mmrl", out, datasets=["dtd"], seeds=[1], logits=["rep", "fused", "class"],
                    run_train=train, run_eval=run_eval, write_report=False, log=quiet)
    assert train.calls == [] and res.outcomes[0].status == "done" and len(calls) == 4
    assert sweep.cell_state(b2n).kind == "finished"


def test_dry_run_prints_the_cost_and_writes_nothing(tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "mmrl", "reproduce", "base2novel", "--method", "mmrl", "--root",
                           str(tmp_path), "--output", str(out), "--datasets", "dtd", "eurosat", "--seeds", "1", "2",
                           "--vary", "method.n_rep_tokens=1,3,5,10", "--vary", "method.first_rep_block=3,6,9",
                           "--logits", "rep", "--dry-run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert "48 runs = 3 values of method.first_rep_block x 4 values of method.n_rep_tokens x 2 datasets x " \
           "1 shot count x 2 seeds" in first
    assert "0 already finished, 48 to run or resume" in first and "96 evaluations after training" in first
    assert "vary method.n_rep_tokens: 1, 3, 5, 10" in proc.stdout
    assert not out.exists()


def test_config_file_and_fixed_settings_of_a_sweep(tmp_path, capsys):
    from mmrl.cli import main
    from mmrl.config import file_overrides

    cfg = tmp_path / "settings.yaml"
    cfg.write_text("method:\n  alpha: 0.5\noptim.lr: 0.01\ndata.template: 'a {} photo.'\n")
    assert file_overrides(cfg) == ["method.alpha=0.5", "optim.lr=0.01", 'data.template="a {} photo."']
    out = tmp_path / "sweep"
    base = ["reproduce", "base2novel", "--method", "mmrl", "--root", str(tmp_path), "--output", str(out),
            "--datasets", "dtd", "--seeds", "1"]
    assert main(base + ["--config", str(cfg), "--dry-run"]) == 0
    assert "1 runs = 1 dataset x 1 shot count x 1 seed" in capsys.readouterr().out
    (cell,) = sweep.build_grid("base2novel", "mmrl", out, datasets=["dtd"], seeds=[1], sets=file_overrides(cfg))
    cfg_of_run = resolve_config("mmrl", "base2novel", "dtd", overrides=list(cell.sets))
    assert (cfg_of_run.method.alpha, cfg_of_run.optim.lr, cfg_of_run.data.template) == (0.5, 0.01, "a {} photo.")
    cfg.write_text("method:\n  alpah: 0.5\n")
    for extra, words in ((["--config", str(cfg)], "alpha"), (["--config", str(tmp_path / "none.yaml")], "not found"),
                         (["--set", "seed=3"], "--seeds"), (["--set", "data.shots=4"], "--shots"),
                         (["--logits", ","], "expected some of fused, class, rep"),
                         (["--logits", "fused,logit"], "--logits logit")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
    no_root = [a for a in base if a not in ("--root", str(tmp_path))]
    assert main(no_root) == 2 and "--root is needed" in capsys.readouterr().err


def test_progress_lines_estimate_the_time_left():
    from mmrl.sweep.runner import _eta

    assert _eta(60.0, 6, 6) == "; 6 left, about 60 s"       # 10 s per run so far
    assert _eta(60.0, 6, 30) == "; 30 left, about 5 min"
    assert _eta(6000.0, 1, 10) == "; 10 left, about 16.7 h"
    assert _eta(60.0, 0, 12) == "" and _eta(60.0, 6, 0) == ""


def _user_task(folder: Path, name: str) -> Path:
    classes = ["circle", "square", "star", "cross"]
    rows = {part: [[f"{c}/{part}{i}.png", y, c] for y, c in enumerate(classes) for i in range(n)]
            for part, n in (("train", 3), ("val", 1), ("test", 2))}
    for entries in rows.values():
        for rel, _, _ in entries:
            write_image(folder / "images" / rel)
    (folder / "split.json").write_text(json.dumps(rows))
    (folder / "dataset.json").write_text(json.dumps({"name": name, "image_dir": "images", "split_file": "split.json"}))
    return folder


def test_user_datasets_in_a_sweep(tmp_path):
    task = _user_task(tmp_path / "tasks" / "t1", "shapes")
    out = tmp_path / "sweep"
    (cell,) = sweep.build_grid("base2novel", "mmrl", out, datasets=[f"dataset:{task}"], seeds=[1])
    assert cell.dataset == f"dataset:{task}" and cell.table_name == "shapes"
    assert cell.run_dir == out / "base2novel" / "mmrl" / "shapes" / "shots_16" / "seed_1"
    assert cell.train_evals == ("shapes-base.json", "shapes-new.json")
    # a folder holding dataset.json is named as `mmrl train` records it
    (same,) = sweep.build_grid("base2novel", "mmrl", out, datasets=[str(task)], seeds=[1])
    assert same.dataset == f"dataset:{task}" and same.run_dir == cell.run_dir
    with pytest.raises(ValueError, match="not found|no dataset.json"):
        sweep.build_grid("base2novel", "mmrl", out, datasets=[f"dataset:{tmp_path / 'nope'}"])
    with pytest.raises(ValueError, match="base2novel or fewshot"):
        sweep.build_grid("crossdataset", "mmrl", out, datasets=[f"dataset:{task}"])


def test_tiny_2x2_ablation_end_to_end(tmp_path):
    """The real `mmrl train` / `mmrl eval` command lines of the sweep (run in this process for speed) on the
    tiny CLIP and two tiny user tasks: 2 values of K x 2 of J, then the report's ablation tables; then a
    plain sweep with every logit kind and the report's decoupled-inference table."""
    helpers = pytest.importorskip("helpers")
    from mmrl.cli import main

    clip = helpers.write_tiny_clip(tmp_path / "clip.pt")
    tasks = [f"dataset:{_user_task(tmp_path / 'tasks' / t, t)}" for t in ("shapes", "signs")]
    runner = sweep.SubprocessRunner(["mmrl"])
    kw = dict(seeds=[1], shots=[2], backbone=str(clip), sets=helpers.tiny_method_overrides("mmrl"), log=quiet,
              run_train=lambda c: main(runner.train_command(c)[1:] + ["--progress", "lines"]),
              run_eval=lambda c, j: main(runner.eval_command(c, j)[1:] + ["--progress", "lines"]))
    out = tmp_path / "sweep"
    # the tiny overrides set K = 2 and J = 2: the defaults the ablation compares with
    res = reproduce("base2novel", "mmrl", out, datasets=tasks, vary=["method.n_rep_tokens=1,2",
                                                                     "method.first_rep_block=2,3"], **kw)
    assert [o.status for o in res.outcomes] == ["done"] * 8, [o.detail for o in res.outcomes]
    results = {}
    for c in res.cells:
        info = json.loads((c.run_dir / "run.json").read_text())
        assert info["status"] == "finished" and info["ablation"] == dict(c.point)
        assert sorted(p.name for p in (c.run_dir / "eval").glob("*.json")) == \
            [f"{c.table_name}-base.json", f"{c.table_name}-new.json"]
        results[(c.point, c.table_name)] = json.loads((c.run_dir / "results.json").read_text())
    data = json.loads((res.report_dir / "report.json").read_text())
    assert "base2novel" not in data["protocols"]  # ablation runs are another experiment
    (study,) = data["ablations"]
    assert study["keys"] == ["method.first_rep_block", "method.n_rep_tokens"] and study["n_finished"] == 8
    tables = {t["key"]: t for t in study["tables"]}
    for key, other in (("method.n_rep_tokens", "method.first_rep_block"), ("method.first_rep_block", "method.n_rep_tokens")):
        rows = tables[key]["rows"]
        assert [r["values"][key] for r in rows] == ([1, 2] if key == "method.n_rep_tokens" else [2, 3])
        for r in rows:  # the other key at its default (2), averaged over the two tasks as the papers do
            point = tuple(sorted({key: r["values"][key], other: 2}.items()))
            base = sum(results[(point, t)]["base"] for t in ("shapes", "signs")) / 2
            novel = sum(results[(point, t)]["novel"] for t in ("shapes", "signs")) / 2
            assert r["columns"]["Base"] == pytest.approx(base) and r["columns"]["Novel"] == pytest.approx(novel)
            assert r["runs_done"] == r["runs_expected"] == 2
    assert tables["method.n_rep_tokens"]["default"]["value"] == 2
    md = (res.report_dir / "report.md").read_text()
    assert "## Ablations" in md and "**2 (default)**" in md
    figures = sorted(p.name for p in res.report_dir.glob("ablation-*.png"))
    assert len(figures) == 3 and any("-x-" in f for f in figures)  # a line plot per key and the heat map
    assert "method.n_rep_tokens" in (res.report_dir / "ablation.csv").read_text()

    plain = reproduce("base2novel", "mmrl", out, datasets=tasks[:1], logits=["fused", "class", "rep"], **kw)
    (cell,) = plain.cells
    assert sorted(p.name for p in (cell.run_dir / "eval").glob("*.json")) == \
        ["shapes-base-class.json", "shapes-base-rep.json", "shapes-base.json", "shapes-new-fused.json",
         "shapes-new-rep.json", "shapes-new.json"]
    rep = json.loads((cell.run_dir / "eval" / "shapes-new-rep.json").read_text())
    assert rep["logits"] == rep["logits_requested"] == "rep"
    data = json.loads((plain.report_dir / "report.json").read_text())
    rows = data["decoupled"]["base2novel"]["mmrl"]["rows"]
    acc = {f.stem: json.loads(f.read_text())["accuracy"] for f in (cell.run_dir / "eval").glob("*.json")}
    assert rows["rep"]["columns"]["Base"] == acc["shapes-base-rep"] and rows["rep"]["columns"]["Novel"] == acc["shapes-new-rep"]
    assert rows["fused"]["columns"]["Base"] == acc["shapes-base"]     # the protocol's own fused evaluation
    assert rows["class"]["columns"]["Novel"] == acc["shapes-new"]     # the protocol's own class evaluation
    assert rows["auto"]["columns"]["Base"] == acc["shapes-base"] and rows["auto"]["columns"]["Novel"] == acc["shapes-new"]
