"""`mmrl reproduce`: skip finished runs, resume unfinished ones, parallel workers, concurrent processes, failures.

`mmrl train` / `mmrl eval` are replaced by stand-ins: Python functions (in process) or a tiny script
given with the hidden `--runner` option (real subprocesses), which writes run folders in the
format of the engine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmrl import sweep
from mmrl.sweep.reproduce import reproduce

# Stand-in for `python -m mmrl`: `fake.py train --method ... --output RUN_DIR` / `fake.py eval RUN_DIR ...`.
FAKE_RUNNER = textwrap.dedent('''
    import json, os, sys, time, zlib
    from pathlib import Path

    cmd, args = sys.argv[1], sys.argv[2:]

    def opt(name):
        return args[args.index(name) + 1] if name in args else None

    def acc(key):  # deterministic fake accuracy
        return 50.0 + zlib.crc32(key.encode()) % 4000 / 100.0

    def write(path, data):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    with open(os.environ["FAKE_CALLS"], "a") as f:  # one short O_APPEND write per call
        f.write(json.dumps({"cmd": cmd, "args": args, "pid": os.getpid(),
                            "device": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
    if cmd == "train":
        out = Path(opt("--output"))
        (out / "eval").mkdir(parents=True, exist_ok=True)
        run = {"version": 1, "method": opt("--method"), "dataset": opt("--dataset"), "protocol": opt("--protocol"),
               "shots": int(opt("--shots")), "seed": int(opt("--seed")), "backbone": "fake", "status": "running"}
        write(out / "run.json", run)
        write(out / "config.yaml", {})
        print("training", run["dataset"], "seed", run["seed"], flush=True)
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
        if run["dataset"] == os.environ.get("FAKE_FAIL"):
            print("boom: simulated crash", flush=True)
            run["status"] = "failed"
            write(out / "run.json", run)
            sys.exit(3)
        subs = ["base", "new"] if run["protocol"] == "base2novel" else ["all"]
        for s in subs:
            key = f"{run['dataset']}-{s}"
            write(out / "eval" / f"{key}.json", {"dataset": run["dataset"], "subsample": s, "accuracy": acc(key),
                                                 "macro_accuracy": 0, "per_class": {}, "n": 1, "logits": None})
        run["status"] = "finished"
        write(out / "run.json", run)
    elif cmd == "eval":
        out, ds = Path(args[0]), opt("--dataset")
        write(out / "eval" / f"{ds}-all.json", {"dataset": ds, "subsample": "all", "accuracy": acc(ds),
                                                 "macro_accuracy": 0, "per_class": {}, "n": 1, "logits": None})
    else:
        sys.exit(f"fake runner: unknown command {cmd}")
''')

@pytest.fixture(autouse=True)
def _benchmark_folders(tmp_path):
    """The tests pass tmp_path as --root: reproduce checks that each dataset's folder is there."""
    from helpers import make_benchmark_folders

    make_benchmark_folders(tmp_path)



def finish(cell: sweep.Cell, status: str = "finished", evals: bool = True, **over) -> None:
    """Write the run folder `mmrl train` would leave for `cell`."""
    (cell.run_dir / "eval").mkdir(parents=True, exist_ok=True)
    run = {"version": 1, "method": cell.method, "dataset": cell.dataset, "protocol": cell.protocol,
           "shots": cell.shots, "seed": cell.seed, "backbone": "fake", "status": status,
           **({"ablation": dict(cell.point)} if cell.point else {}), **over}
    (cell.run_dir / "run.json").write_text(json.dumps(run))
    (cell.run_dir / "config.yaml").write_text("{}\n")
    if evals:
        for name in cell.train_evals:
            (cell.run_dir / "eval" / name).write_text(json.dumps({"accuracy": 70.0 + cell.seed}))


class FakeTrain:
    """In-process `run_train`: records the cells and finishes them."""

    def __init__(self, rc: int = 0, write: bool = True):
        self.calls: list[str] = []
        self.rc, self.write = rc, write

    def __call__(self, cell: sweep.Cell) -> int:
        self.calls.append(cell.name)
        if self.write:
            finish(cell)
        return self.rc


def quiet(_msg: str) -> None:
    pass


def test_skip_finished_resume_unfinished(tmp_path):
    out = tmp_path / "sweep"
    grid = {c.name: c for c in sweep.build_grid("base2novel", "mmrl", out, datasets=["Caltech101", "EuroSAT"],
                                                seeds=[1, 2])}
    names = list(grid)
    finish(grid[names[0]])                                  # finished: skipped
    finish(grid[names[1]], status="running", evals=False)   # interrupted: resumed
    finish(grid[names[2]], status="failed", evals=False)    # failed before: retried
    # names[3]: absent -> trained
    train = FakeTrain()
    res = reproduce("base2novel", "mmrl", out, root=tmp_path, datasets=["EuroSAT", "Caltech101"], seeds=[1, 2],
                    run_train=train, run_eval=lambda c, t: 1, log=quiet)
    assert sorted(train.calls) == sorted(names[1:])
    assert [o.status for o in res.outcomes] == ["skipped", "done", "done", "done"] and res.ok
    assert (out / "report" / "report.md").exists() and (out / "base2novel" / "mmrl").glob("grid-*.json")
    assert not list(out.glob("**/*.claim"))  # claims released
    # finished but an eval file lost: not finished, trained again (the engine resumes / re-evaluates)
    (grid[names[0]].run_dir / "eval" / "Caltech101-new.json").unlink()
    train2 = FakeTrain()
    res = reproduce("base2novel", "mmrl", out, datasets=["Caltech101", "EuroSAT"], seeds=[1, 2],
                    run_train=train2, log=quiet, write_report=False)
    assert train2.calls == [names[0]]
    assert [o.status for o in res.outcomes] == ["done", "skipped", "skipped", "skipped"]


def test_train_and_eval_commands(tmp_path):
    cell = sweep.build_grid("fewshot", "mmrl++", tmp_path / "o", datasets=["EuroSAT"], shots=[2], seeds=[3],
                            root=tmp_path / "data", backbone="ViT-B-32", sets=["optim.lr=0.01", "method.beta=0.5"])[0]
    r = sweep.SubprocessRunner()
    cmd = r.train_command(cell)
    assert cmd[:4] == [sys.executable, "-m", "mmrl", "train"]
    text = " ".join(cmd[3:])
    for part in ("--method mmrl++", "--dataset EuroSAT", "--protocol fewshot", "--shots 2", "--seed 3",
                 f"--output {cell.run_dir}", f"--root {tmp_path / 'data'}", "--backbone ViT-B-32",
                 "--set optim.lr=0.01 --set method.beta=0.5"):
        assert part in text
    assert "--resume" not in cmd
    finish(cell, status="running", evals=False)
    assert r.train_command(cell)[-1] == "--resume"
    assert sweep.SubprocessRunner(["py", "fake.py"]).eval_command(cell, sweep.EvalJob("ImageNetA")) == \
        ["py", "fake.py", "eval", str(cell.run_dir), "--dataset", "ImageNetA", "--subsample", "all",
         "--root", str(tmp_path / "data")]


def test_crossdataset_evaluates_only_missing_targets(tmp_path):
    out = tmp_path / "sweep"
    cell = sweep.build_grid("crossdataset", "mmrl", out, seeds=[1])[0]
    finish(cell)
    for t in cell.targets[:10]:
        (cell.run_dir / "eval" / f"{t}-all.json").write_text(json.dumps({"accuracy": 50.0}))
    train, evals = FakeTrain(), []

    def run_eval(c, job):
        evals.append(job.dataset)
        (c.run_dir / "eval" / job.file).write_text(json.dumps({"accuracy": 40.0}))
        return 0
    res = reproduce("crossdataset", "mmrl", out, seeds=[1], run_train=train, run_eval=run_eval, log=quiet)
    assert train.calls == [] and evals == list(cell.targets[10:]) == ["ImageNetV2", "ImageNetSketch",
                                                                        "ImageNetA", "ImageNetR"]
    assert res.outcomes[0].status == "done"
    data = json.loads((out / "report" / "report.json").read_text())
    assert data["protocols"]["crossdataset"]["missing"] == []


def test_inconsistent_runs_fail_with_reason(tmp_path):
    out = tmp_path / "sweep"
    a, b = sweep.build_grid("base2novel", "mmrl", out, datasets=["SUN397"], seeds=[1, 2])
    finish(a, status="running", evals=False, seed=7)          # run.json of another run in this folder
    silent = FakeTrain(rc=0, write=False)                     # exits 0 but leaves no finished run
    res = reproduce("base2novel", "mmrl", out, datasets=["SUN397"], seeds=[1, 2], run_train=silent, log=quiet,
                    write_report=False)
    assert [o.status for o in res.outcomes] == ["failed", "failed"] and not res.ok
    assert "seed=7 in run.json, expected 1" in res.outcomes[0].detail
    assert "not finished" in res.outcomes[1].detail
    assert silent.calls == [b.name]


def test_shards_run_disjoint_parts(tmp_path):
    out = tmp_path / "sweep"
    calls = []
    for i in range(3):
        t = FakeTrain()
        reproduce("fewshot", "mmrl", out, datasets=["EuroSAT", "DescribableTextures"], shots=[1, 4], seeds=[1, 2],
                  shard=(i, 3), run_train=t, log=quiet, write_report=False)
        calls += t.calls
    grid = sweep.build_grid("fewshot", "mmrl", out, datasets=["EuroSAT", "DescribableTextures"], shots=[1, 4],
                            seeds=[1, 2])
    assert sorted(calls) == sorted(c.name for c in grid) and len(calls) == 8


def _cli(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmrl", "reproduce", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def fake_env(tmp_path):
    script = tmp_path / "fake_mmrl.py"
    script.write_text(FAKE_RUNNER)
    env = dict(os.environ, FAKE_CALLS=str(tmp_path / "calls.jsonl"), FAKE_SLEEP="0.25",
               MMRL_REPRODUCE_RUNNER=str(script), PYTHONUNBUFFERED="1")
    return env


def _calls(env) -> list[dict]:
    p = Path(env["FAKE_CALLS"])
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


@pytest.mark.multiprocess
def test_two_concurrent_processes_run_each_cell_once(tmp_path, fake_env):
    out = tmp_path / "sweep"
    args = ["base2novel", "--method", "mmrl", "--root", str(tmp_path), "--output", str(out),
            "--datasets", "Caltech101", "EuroSAT", "OxfordPets", "--seeds", "1", "2", "--jobs", "1"]
    procs = [_cli(args, fake_env, tmp_path), _cli(args, fake_env, tmp_path)]
    logs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trains = [c for c in _calls(fake_env) if c["cmd"] == "train"]
    runs = [(c["args"][c["args"].index("--dataset") + 1], c["args"][c["args"].index("--seed") + 1]) for c in trains]
    assert sorted(runs) == sorted((d, s) for d in ("Caltech101", "EuroSAT", "OxfordPets") for s in "12")
    assert len({c["pid"] for c in trains}) == 6
    # each process ran some of the cells itself (the two overlapped) and the summary adds up
    done = [int(log.split("summary: ")[1].split(" run now")[0]) for log in logs]
    assert sum(done) == 6, logs
    for c in sweep.build_grid("base2novel", "mmrl", out, datasets=["Caltech101", "EuroSAT", "OxfordPets"], seeds=[1, 2]):
        assert sweep.cell_state(c).kind == "finished"
        assert "training" in c.log_path.read_text()
    assert not list(out.glob("**/*.claim"))
    md = (out / "report" / "report.md").read_text()
    assert "**Runs: 6/6 finished.**" in md


def test_failed_run_reported_with_log_others_finish(tmp_path, fake_env, monkeypatch, capsys):
    # in process (the CLI's main), with the stand-in script run as real subprocesses, one per listed GPU
    from mmrl.cli import main

    out = tmp_path / "sweep"
    env = dict(fake_env, FAKE_FAIL="EuroSAT", FAKE_SLEEP="0.2")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = main(["reproduce", "base2novel", "--method", "mmrl++", "--root", str(tmp_path), "--output", str(out),
               "--datasets", "EuroSAT", "Caltech101", "--seeds", "1", "2", "--devices", "0,1",
               "--set", "optim.epochs=3"])
    log = capsys.readouterr().out
    assert rc == 1, log
    failed_log = out / "base2novel" / "mmrl++" / "EuroSAT" / "shots_16" / "seed_1" / "stdout.log"
    assert "0 already finished, 0 in progress elsewhere, 2 failed" in log
    assert "FAILED: base2novel/mmrl++/EuroSAT/shots_16/seed_1: train exited with code 3" in log
    assert f"log: {failed_log}" in log
    assert "boom: simulated crash" in failed_log.read_text()
    calls = _calls(env)
    assert {c["device"] for c in calls} == {"0", "1"}                 # one child per listed GPU
    assert all(c["args"].count("--set") == 1 and "optim.epochs=3" in c["args"] for c in calls)
    for c in sweep.build_grid("base2novel", "mmrl++", out, datasets=["Caltech101"], seeds=[1, 2]):
        assert sweep.cell_state(c).kind == "finished"
    md = (out / "report" / "report.md").read_text()
    assert "`base2novel/mmrl++/EuroSAT/shots_16/seed_2`: failed" in md and str(failed_log) in md

    # the second invocation retries the failed runs (resume) and skips the finished ones
    monkeypatch.setenv("FAKE_FAIL", "")
    rc = main(["reproduce", "base2novel", "--method", "mmrl++", "--root", str(tmp_path), "--output", str(out),
               "--datasets", "EuroSAT", "Caltech101", "--seeds", "1", "2", "--no-report"])
    log = capsys.readouterr().out
    assert rc == 0, log
    assert "summary: 2 run now, 2 already finished" in log
    retried = [c for c in _calls(env)[len(calls):] if c["cmd"] == "train"]
    assert len(retried) == 2 and all(c["args"][-1] == "--resume" for c in retried)


def test_crossdataset_cli_and_bad_arguments(tmp_path, fake_env, monkeypatch, capsys):
    from mmrl.cli import main

    out = tmp_path / "sweep"
    env = dict(fake_env, FAKE_SLEEP="0")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = main(["reproduce", "crossdataset", "--method", "mmrl", "--root", str(tmp_path), "--output", str(out),
               "--seeds", "1", "--datasets", "EuroSAT", "ImageNetR", "--shard", "0/1"])
    assert rc == 0, capsys.readouterr().out
    assert [c["cmd"] for c in _calls(env)] == ["train", "eval", "eval"]
    ev = out / "crossdataset" / "mmrl" / "ImageNet" / "shots_16" / "seed_1" / "eval"
    assert sorted(x.name for x in ev.iterdir()) == ["EuroSAT-all.json", "ImageNet-all.json", "ImageNetR-all.json"]
    assert "### Domain generalisation" in (out / "report" / "report.md").read_text()
    for bad, why in ((["--shard", "2/2"], "0-based"), (["--jobs", "0"], "--jobs 0"),
                     (["--datasets", "mnist"], "unknown dataset"), (["--devices", ","], "--devices")):
        rc = main(["reproduce", "fewshot", "--method", "mmrl", "--root", ".", "--output", str(out), *bad])
        err = capsys.readouterr().err
        assert rc == 2 and why in err, (bad, err)


def test_real_train_end_to_end(tmp_path):
    """The real `python -m mmrl train` (tiny CLIP, tiny DTD) driven by reproduce, then skipped on re-run."""
    helpers = pytest.importorskip("helpers")
    pytest.importorskip("mmrl.commands.train")
    clip = helpers.write_tiny_clip(tmp_path / "clip.pt")
    helpers.make_benchmark_dataset(tmp_path / "data", "DescribableTextures")
    out = tmp_path / "sweep"
    kw = dict(root=tmp_path / "data", datasets=["dtd"], seeds=[1], backbone=str(clip),
              sets=helpers.tiny_method_overrides("mmrl"), log=quiet)
    res = reproduce("base2novel", "mmrl", out, **kw)
    assert [o.status for o in res.outcomes] == ["done"], res.outcomes[0].log_path.read_text()[-3000:]
    cell = res.cells[0]
    engine = json.loads((cell.run_dir / "results.json").read_text())
    data = json.loads((out / "report" / "report.json").read_text())
    row = data["protocols"]["base2novel"]["methods"]["mmrl"]["datasets"]["DescribableTextures"]
    assert row["base"]["mean"] == pytest.approx(engine["base"], abs=1e-9)
    assert row["novel"]["mean"] == pytest.approx(engine["novel"], abs=1e-9)
    assert "=== exit code 0" in cell.log_path.read_text()
    again = reproduce("base2novel", "mmrl", out, write_report=False, **kw)
    assert [o.status for o in again.outcomes] == ["skipped"]
