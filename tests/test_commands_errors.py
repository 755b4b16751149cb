"""Every everyday mistake through the command line: one clear line, a non-zero exit status, no traceback
(tracebacks only with --debug / MMRL_DEBUG=1)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import (make_benchmark_dataset, make_folder_dataset, make_image, tiny_train_argv,
                     train_killed_after_first_checkpoint, write_tiny_clip)
from mmrl.cli import main
from mmrl.engine import evaluator

torch.set_num_threads(1)
IMAGE_OPTION = "--set data.skip_bad_images=true"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli_errors")
    clip = write_tiny_clip(base / "clip.pt")
    root = base / "data"
    make_benchmark_dataset(root, "DescribableTextures")
    bad_root = base / "bad-data"
    make_benchmark_dataset(bad_root, "DescribableTextures")
    split = json.loads((bad_root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    bad_train = bad_root / "dtd" / "images" / split["train"][0][0]
    bad_train.write_bytes(bad_train.read_bytes()[:60])  # a truncated PNG
    bad_test = bad_root / "dtd" / "images" / split["test"][-1][0]
    bad_test.write_text("not an image")
    run = base / "run"
    assert main(tiny_train_argv(clip, root, run)) == 0
    return {"clip": clip, "root": root, "base": base, "run": run, "bad_root": bad_root,
            "bad_train": bad_train, "bad_test": bad_test}


@pytest.fixture
def cli(capsys):
    """main(argv) -> (exit status, stdout, stderr); never a traceback in stderr."""
    def run(argv):
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err
        return rc, out, err
    return run


def _copy_run(world, name: str) -> Path:
    import shutil

    dst = world["base"] / name
    shutil.copytree(world["run"], dst)
    return dst


def _one_line(err: str, prefix: str = "mmrl: error: ") -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith(prefix)]
    assert len(lines) == 1, err
    return lines[0]


# --------------------------------------------------------------------------- unreadable images
@pytest.mark.parametrize("workers", [0, 2])
def test_bad_image_in_training_names_file_and_real_option(world, cli, workers):
    out = world["base"] / f"badimg-{workers}"
    rc, _, err = cli(tiny_train_argv(world["clip"], world["bad_root"], out,
                                     extra=["--set", f"data.num_workers={workers}"]))
    line = _one_line(err)
    assert rc == 1 and str(world["bad_train"]) in line and IMAGE_OPTION in line
    assert "skip_bad=True" not in err
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    # the option named works
    skipped = world["base"] / f"skipped-{workers}"
    rc, _, _ = cli(tiny_train_argv(world["clip"], world["bad_root"], skipped,
                                   extra=["--set", "data.skip_bad_images=true"]))
    assert rc == 0 and f"skipping 1 unreadable image(s): {world['bad_train']}" in (skipped / "train.log").read_text()


def test_bad_image_in_eval_names_the_eval_option(world, cli):
    run = _copy_run(world, "eval-badimg")
    rc, _, err = cli(["eval", run, "--dataset", "dtd", "--root", world["bad_root"], "--num-workers", "2"])
    line = _one_line(err)
    assert rc == 1 and str(world["bad_test"]) in line and "--skip-bad-images" in line
    rc, _, _ = cli(["eval", run, "--dataset", "dtd", "--root", world["bad_root"], "--skip-bad-images"])
    assert rc == 0
    assert json.loads((run / "eval" / "DescribableTextures-all.json").read_text())["n"] == 7  # 8 test images, 1 bad


# --------------------------------------------------------------------------- damaged run files
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["truncated", "not-safetensors", "wrong-shape"])
def test_damaged_adapter_named_with_the_way_on(world, cli, damage):
    run = _copy_run(world, f"adapter-{damage}")
    adapter = run / "adapter.safetensors"
    if damage == "truncated":
        _truncate(adapter)
    elif damage == "not-safetensors":
        adapter.write_text("hello")
    else:
        t = load_file(str(adapter))
        t["proj_rep"] = torch.zeros(3, 3)
        save_file(t, str(adapter))
    for argv in (["eval", run, "--dataset", "dtd"], ["predict", run, world["bad_train"], "--classes", "a,b"]):
        rc, _, err = cli(argv)
        line = _one_line(err)
        assert rc == 1 and str(adapter) in line and f"mmrl train --resume {run}" in line, line
        assert ("does not fit" in line) == (damage == "wrong-shape")
        assert ("truncated or damaged" in line) == (damage != "wrong-shape")
    # the way on works: delete the adapter, resume (the same config trains the run again)
    adapter.unlink()
    rc, _, _ = cli(["train", "--resume", run, "--progress", "lines"])
    assert rc == 0 and load_file(str(adapter)).keys() == load_file(str(world["run"] / "adapter.safetensors")).keys()


@pytest.mark.parametrize("damage", ["truncated", "wrong-shape"])
def test_damaged_checkpoint_named_with_the_way_on(world, cli, damage):
    out = world["base"] / f"ckpt-{damage}"
    argv = tiny_train_argv(world["clip"], world["root"], out, extra=["--set", "optim.epochs=3"])
    train_killed_after_first_checkpoint(argv)
    ckpt = out / "checkpoint.safetensors"
    assert ckpt.is_file()
    if damage == "truncated":
        _truncate(ckpt)
    else:
        from safetensors import safe_open
        with safe_open(str(ckpt), framework="pt") as f:
            meta = f.metadata()
        t = load_file(str(ckpt))
        t["adapter.proj_rep"] = torch.zeros(2, 2)
        save_file(t, str(ckpt), metadata=meta)
    rc, _, err = cli(argv)
    line = _one_line(err)
    assert rc == 1 and str(ckpt) in line and f"rm {ckpt}" in line, line
    ckpt.unlink()  # the way on: start the run over
    rc, _, _ = cli(argv)
    assert rc == 0 and json.loads((out / "run.json").read_text())["status"] == "finished"


# --------------------------------------------------------------------------- folders that cannot be written
def _make_read_only(folder: Path, monkeypatch) -> None:
    """A folder files cannot be created in. Permission bits do not stop root, so under root the
    creation itself is refused the way the OS refuses it on a read-only mount."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        for sub in folder.iterdir():
            if sub.is_dir():
                sub.chmod(0o555)
        return
    import tempfile

    import mmrl.fileio

    real = tempfile.mkstemp
    ro = folder.resolve()

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir).resolve().is_relative_to(ro):
            raise OSError(30, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kw)
    monkeypatch.setattr(mmrl.fileio.tempfile, "mkstemp", mkstemp)


def test_output_folder_that_cannot_be_written(world, cli):
    blocker = world["base"] / "a-file"
    blocker.write_text("x")
    rc, _, err = cli(tiny_train_argv(world["clip"], world["root"], blocker / "run"))
    line = _one_line(err)
    assert rc == 1 and f"cannot write into {blocker / 'run'}" in line and "--output" in line


def test_eval_on_read_only_run_checks_before_the_work_and_writes_elsewhere(world, cli, monkeypatch, tmp_path):
    run = _copy_run(world, "readonly")
    (run / "eval").mkdir(exist_ok=True)
    _make_read_only(run, monkeypatch)
    try:
        calls = []
        real = evaluator.run_inference
        monkeypatch.setattr(evaluator, "run_inference", lambda *a, **k: calls.append(1) or real(*a, **k))
        rc, _, err = cli(["eval", run, "--dataset", "dtd", "--root", world["root"]])
        line = _one_line(err)
        assert rc == 1 and str(run) in line and "--output-dir" in line and calls == []  # refused before any work
        rc, out, _ = cli(["eval", run, "--dataset", "dtd", "--root", world["root"], "--output-dir", tmp_path / "res"])
        assert rc == 0 and calls and (tmp_path / "res" / "DescribableTextures-all.json").is_file()
        rc, _, err = cli(["eval", run, "--dataset", "dtd", "--root", world["root"], "--output-dir", tmp_path / "res",
                          "--predictions", run / "p.jsonl"])
        assert rc == 1 and "--predictions" in _one_line(err)
    finally:
        for p in (run, *run.iterdir()):
            if p.is_dir():
                p.chmod(0o755)


# --------------------------------------------------------------------------- Ctrl-C
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_says_where_and_how_to_resume(world, sig):
    out = world["base"] / f"interrupted-{sig}"
    argv = tiny_train_argv(world["clip"], world["root"], out, extra=["--set", "optim.epochs=3"])
    script = f"""
import os, signal, sys, torch
torch.set_num_threads(1)
from mmrl.cli import main
from mmrl.engine import rundir
real = rundir.save_checkpoint
def save_then_interrupt(path, **kw):
    real(path, **kw)
    if kw["epoch"] == 1:
        os.kill(os.getpid(), signal.{sig})  # as Ctrl-C (or a stopping sweep) after the first epoch
rundir.save_checkpoint = save_then_interrupt
sys.exit(main({[str(a) for a in argv]!r}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    line = _one_line(proc.stderr, "mmrl: interrupted: ")
    assert "epoch 2 of 3" in line and "1 done" in line
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and "error" not in info
    command = line.split("resume with: ", 1)[1]
    assert command == f"mmrl train --resume {shlex.quote(str(out.absolute()))}"
    assert main(shlex.split(command)[1:]) == 0
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


# --------------------------------------------------------------------------- predict
def test_predict_reports_each_bad_argument_and_predicts_the_others(world, cli, tmp_path):
    good = make_image(tmp_path / "good.png", (200, 30, 30), seed=1)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    rc, out, err = cli(["predict", world["run"], missing, good, tmp_path, text, "--classes", "banded,bubbly"])
    assert rc == 1
    assert f"{good}: " in out and str(missing) not in out
    errors = [ln for ln in err.splitlines() if ln.startswith("mmrl: error: ")]
    assert len(errors) == 4 and "3 of 4 images could not be read" in errors[-1]
    assert f"{missing}: no such file" in errors[0] and f"{tmp_path}: it is a folder" in errors[1]
    assert str(text) in errors[2] and "not an image" in errors[2]
    rc, out, _ = cli(["predict", world["run"], missing, good, "--classes", "banded,bubbly", "--json"])
    rows = json.loads(out)
    assert rc == 1 and "error" in rows[0] and rows[1]["prediction"] in ("banded", "bubbly")


@pytest.mark.parametrize("flags, words", [
    (["--classes", "a,b", "--top-k", "0"], "--top-k 0"),
    (["--classes", "a,b", "--top-k", "-3"], "--top-k -3"),
    (["--classes", ""], "no class names"),
    (["--classes", "cat,,dog"], "empty class name"),
    (["--classes", "cat,dog,cat"], "'cat' is listed twice"),
    (["--classes", "cat"], "at least 2"),
])
def test_predict_flags_checked_before_loading(world, cli, monkeypatch, flags, words):
    import mmrl.engine.rundir

    monkeypatch.setattr(mmrl.engine.rundir, "load_run", lambda *a, **k: pytest.fail("model loaded"))
    rc, _, err = cli(["predict", world["run"], world["bad_train"], *flags])
    assert rc == 2 and words in _one_line(err)


# --------------------------------------------------------------------------- user data
def test_one_class_dataset_refused_before_training(world, cli, tmp_path):
    folder = make_folder_dataset(tmp_path / "one", classes=("cat",))
    out = tmp_path / "one-run"
    for protocol in ("fewshot", "base2novel"):
        rc, _, err = cli(tiny_train_argv(world["clip"], world["root"], out, dataset=f"folder:{folder}",
                                         protocol=protocol))
        line = _one_line(err)
        assert rc == 1 and "1 class ('cat')" in line and "at least 2" in line
        assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint.safetensors").exists()
    two = make_folder_dataset(tmp_path / "two", classes=("cat", "dog"))
    rc, _, err = cli(tiny_train_argv(world["clip"], world["root"], tmp_path / "two-run", dataset=f"folder:{two}",
                                     protocol="base2novel"))
    assert rc == 1 and "at least 3" in _one_line(err)  # base = 1 of 2 classes


def test_folder_dataset_not_found_names_every_place_searched(world, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "nowhere-run"
    rc, _, err = cli(tiny_train_argv(world["clip"], world["root"], out, dataset="folder:my_pets"))
    line = _one_line(err)
    assert rc == 1 and str(tmp_path / "my_pets") in line and str(world["root"] / "my_pets") in line
    assert not out.exists()  # found out before anything was written


# --------------------------------------------------------------------------- more everyday mistakes
def test_other_everyday_mistakes(world, cli, tmp_path):
    cases = [
        (["eval", tmp_path / "no-run", "--dataset", "dtd"], 1, "does not exist"),
        (["eval", world["root"], "--dataset", "dtd"], 1, "not a run directory"),
        (["train", "--resume", tmp_path / "no-run"], 2, "no config.yaml"),
        (["train", "--method", "mmrl", "--protocol", "fewshot", "--dataset", "dtd", "--config", tmp_path / "x.yaml"],
         2, "config file not found"),
        (tiny_train_argv(tmp_path / "nope.pt", world["root"], tmp_path / "r1"), 1, "backbone file not found"),
        (tiny_train_argv(world["clip"], world["root"], tmp_path / "r2", extra=["--set", "optim.lrr=1"]), 2,
         "did you mean"),
        (["describe", "--backbone", tmp_path / "nope.pt"], 1, "backbone file not found"),
        (tiny_train_argv(world["clip"], world["root"], tmp_path / "r3", extra=["--split-file", tmp_path / "s.json"]),
         1, "data.split_file: no such file"),
        (tiny_train_argv(world["clip"], world["root"], tmp_path / "r4", extra=["--device", "cuda:99"]), 2, "cuda:99"),
    ]
    for argv, status, words in cases:
        rc, _, err = cli(argv)
        assert rc == status and words in _one_line(err), (argv, err)
    assert not (tmp_path / "r3").exists()  # found out before anything was written
    # counts that must be positive: argparse's usage error (status 2), never a torch error later
    for argv in (["eval", world["run"], "--dataset", "dtd", "--batch-size", "0"],
                 ["eval", world["run"], "--dataset", "dtd", "--num-workers", "-1"],
                 ["zeroshot", "--dataset", "dtd", "--batch-size", "-5"]):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in argv])
        assert e.value.code == 2


# --------------------------------------------------------------------------- unexpected errors, --debug
def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(world, cli, monkeypatch):
    import mmrl.engine.prediction

    def boom(*a, **k):
        raise RuntimeError("something nobody foresaw")
    monkeypatch.setattr(mmrl.engine.prediction, "predict", boom)
    argv = ["predict", world["run"], world["bad_train"], "--classes", "a,b"]
    rc, _, err = cli(argv)
    line = _one_line(err)
    assert rc == 1 and "RuntimeError: something nobody foresaw" in line and "--debug" in line
    with pytest.raises(RuntimeError, match="nobody foresaw"):
        main(["--debug", *map(str, argv)])
    with pytest.raises(RuntimeError, match="nobody foresaw"):
        main([*map(str, argv), "--debug"])
    monkeypatch.setenv("MMRL_DEBUG", "1")
    with pytest.raises(RuntimeError, match="nobody foresaw"):
        main([str(a) for a in argv])


def test_user_errors_get_their_traceback_with_debug(world, tmp_path):
    argv = ["eval", str(tmp_path / "no-run"), "--dataset", "dtd"]
    plain = subprocess.run([sys.executable, "-m", "mmrl", *argv], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr and len(plain.stderr.splitlines()) == 1
    debug = subprocess.run([sys.executable, "-m", "mmrl", "--debug", *argv], capture_output=True, text=True,
                           timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr
