"""End to end through `mmrl.cli.main`: train + evaluate every method x protocol with the tiny
CLIP, the run-directory format, eval/predict/zeroshot outputs, decoupled-inference choices."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import yaml
import torch

from helpers import (make_benchmark_dataset, make_folder_dataset, read_jsonl, tiny_method_overrides,
                     tiny_train_argv, write_tiny_clip)
from mmrl.cli import main
from mmrl.config import load_config
from mmrl.engine import EvalRequest, evaluate, load_run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("engine_train")
    clip = write_tiny_clip(base / "tiny_clip.pt")
    root = base / "data"
    make_benchmark_dataset(root, "DescribableTextures")
    make_benchmark_dataset(root, "EuroSAT")
    folder = make_folder_dataset(base / "pets")
    return {"clip": clip, "root": root, "base": base, "folder": folder}


def _train(world, name, **kw):
    out = world["base"] / name
    assert main(tiny_train_argv(world["clip"], world["root"], out, **kw)) == 0
    return out


def _json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("method", ["mmrl", "mmrl++"])
@pytest.mark.parametrize("protocol", ["base2novel", "fewshot", "crossdataset"])
def test_train_then_eval(world, method, protocol):
    run = _train(world, f"{method}-{protocol}", method=method, protocol=protocol)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "run.json", "split.json", "train.log", "metrics.jsonl", "adapter.safetensors",
            "results.json", "eval"} <= names
    assert "checkpoint.safetensors" not in names  # removed once finished
    info = _json(run / "run.json")
    assert info["status"] == "finished"
    assert (info["method"], info["dataset"], info["protocol"], info["shots"], info["seed"]) == \
        (method, "DescribableTextures", protocol, 2, 1)
    assert info["backbone"] == str(world["clip"]) and info["version"]
    assert {"setup_s", "train_s", "eval_s", "total_s"} <= set(info["timings"])
    model, cfg = load_run(run, device="cpu")
    assert info["trainable_parameters"] == model.num_trainable_parameters() > 0
    assert cfg == load_config(run / "config.yaml") and cfg.method.name == method
    split = _json(run / "split.json")
    n_classes = 2 if protocol == "base2novel" else 4
    assert len(split["train"]) == 2 * n_classes  # 2 shots per training class
    results = _json(run / "results.json")
    if protocol == "base2novel":
        base = _json(run / "eval" / "DescribableTextures-base.json")
        novel = _json(run / "eval" / "DescribableTextures-new.json")
        assert (base["logits"], novel["logits"]) == ("fused", "class")
        assert results["base"] == base["accuracy"] and results["novel"] == novel["accuracy"]
        b, n = base["accuracy"], novel["accuracy"]
        assert results["hm"] == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)
    else:
        res = _json(run / "eval" / "DescribableTextures-all.json")
        assert res["logits"] == "fused" and results["accuracy"] == res["accuracy"]
        assert res["n"] == 8 and len(res["per_class"]) == 4
    # another dataset: class-only logits; MMRL++ cross-dataset uses that target's published beta
    assert main(["eval", str(run), "--dataset", "eurosat", "--progress", "lines"]) == 0
    other = _json(run / "eval" / "EuroSAT-all.json")
    assert other["logits"] == "class" and other["n"] == 8 and 0 <= other["accuracy"] <= 100
    if method == "mmrl++":
        assert other["beta"] == (0.3 if protocol == "crossdataset" else cfg.method.beta)
    else:
        assert other["beta"] is None
    assert model.cfg == cfg.method  # the settings used on another dataset were put back


def test_run_dir_logs_and_metrics(world):
    run = _train(world, "logs", protocol="fewshot", extra=["--set", "optim.epochs=3"])
    rows = read_jsonl(run / "metrics.jsonl")
    assert len(rows) == 3 * 2  # 8 train images / batch 4 = 2 steps per epoch
    assert [r["step"] for r in rows] == list(range(1, 7))
    for r in rows:
        assert {"step", "epoch", "lr", "loss", "ce_class", "ce_rep", "reg_image", "reg_text", "accuracy"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("loss", "ce_class", "ce_rep", "reg_image", "reg_text"))
    log = (run / "train.log").read_text()
    assert "epoch 1/3" in log and "epoch 3/3" in log and "finished" in log


def test_eval_predictions_file(world):
    run = _train(world, "preds", protocol="base2novel")
    pred_file = world["base"] / "preds.jsonl"
    assert main(["eval", str(run), "--dataset", "DescribableTextures", "--subsample", "base",
                 "--predictions", str(pred_file), "--progress", "lines"]) == 0
    res = _json(run / "eval" / "DescribableTextures-base.json")
    rows = read_jsonl(pred_file)
    split_test = {r[0] for r in _json(run / "split.json")["test"]}
    assert len(rows) == res["n"] == len(split_test)
    for r in rows:
        assert {"image", "label", "prediction", "logits"} <= set(r)
        assert r["image"] in split_test
        assert len(r["logits"]) == 2 and r["logits_kind"] == "fused"
        assert r["prediction"] == max(range(2), key=lambda i: r["logits"][i])
    acc = 100.0 * sum(r["prediction"] == r["label"] for r in rows) / len(rows)
    assert res["accuracy"] == pytest.approx(acc)
    # same numbers as the evaluation done right after training (deterministic evaluation)
    assert res["accuracy"] == _json(run / "results.json")["base"]
    # forcing class logits on the base classes: a file of its own, the protocol's result untouched
    forced = evaluate(run, EvalRequest("dtd", subsample="base", logits="class", output_dir=world["base"] / "forced"))
    assert forced["logits"] == forced["logits_requested"] == "class"
    assert sorted(p.name for p in (world["base"] / "forced").iterdir()) == ["DescribableTextures-base-class.json"]
    assert _json(run / "eval" / "DescribableTextures-base.json")["logits_requested"] == "auto"


def test_an_in_memory_model_without_a_config_is_evaluated_with_validated_defaults(world):
    """evaluate(model) with no config: the keys' defaults plus the overrides, checked like a config
    (a bad batch size is refused naming the key), and the same numbers as the run directory's."""
    from mmrl.config import ConfigError

    run = _train(world, "in-memory")
    model, _ = load_run(run, device="cpu")
    request = EvalRequest("dtd", root=world["root"], logits="class")
    got = evaluate(model, request, settings={"eval.batch_size": 3, "eval.precision": "fp32"})
    want = evaluate(run, dataclasses.replace(request, output_dir=world["base"] / "in-memory-ref"),
                    settings={"eval.precision": "fp32"})
    assert got["n"] == want["n"] and got["accuracy"] == pytest.approx(want["accuracy"])
    with pytest.raises(ConfigError, match="eval.batch_size"):
        evaluate(model, request, settings={"eval.batch_size": 0})


def test_eval_logit_kinds_decompose_as_the_spec_says(world):
    """`mmrl eval --logits class|rep|fused`: each kind's logits per image, and fused = alpha class + (1 - alpha)
    rep (docs/method.md#logits). The three come from the same fp32 features; the identity holds to a few fp32 roundings
    of logits of size <= logit_scale = 100 (ulp 7.6e-6), so 1e-4 is tight yet safe on any CPU."""
    run = _train(world, "kinds", protocol="base2novel")
    alpha = yaml.safe_load((run / "config.yaml").read_text())["method"]["alpha"]
    rows = {}
    for kind in ("class", "rep", "fused"):
        pred = world["base"] / f"kinds-{kind}.jsonl"
        assert main(["eval", str(run), "--dataset", "dtd", "--subsample", "new", "--logits", kind,
                     "--predictions", str(pred), "--progress", "lines"]) == 0
        rows[kind] = read_jsonl(pred)
        res = _json(run / "eval" / f"DescribableTextures-new-{kind}.json")
        assert res["logits"] == res["logits_requested"] == kind
        assert res["accuracy"] == pytest.approx(100.0 * sum(r["prediction"] == r["label"] for r in rows[kind])
                                                / len(rows[kind]))
    for c, r, f in zip(rows["class"], rows["rep"], rows["fused"]):
        assert c["image"] == r["image"] == f["image"]
        for lc, lr, lf in zip(c["logits"], r["logits"], f["logits"]):
            assert lf == pytest.approx(alpha * lc + (1 - alpha) * lr, abs=1e-4)
    assert any(c["logits"] != r["logits"] for c, r in zip(rows["class"], rows["rep"]))  # two distinct heads
    # the protocol's own novel result (class logits) is the explicit class one, and stays where it was
    auto = _json(run / "eval" / "DescribableTextures-new.json")
    assert auto["logits"] == "class" and auto["accuracy"] == _json(run / "eval" / "DescribableTextures-new-class.json")["accuracy"]


def test_predict_command(world, capsys):
    run = _train(world, "predict", protocol="fewshot")
    split = _json(run / "split.json")
    img = world["root"] / "dtd" / "images" / split["test"][0][0]
    capsys.readouterr()
    assert main(["predict", str(run), str(img), "--classes", "banded,blotchy,braided,bubbly", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and out[0]["logits"] == "fused"  # the run's training classes
    probs = [t["probability"] for t in out[0]["top"]]
    assert len(probs) == 4 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert main(["predict", str(run), str(img), "--classes", "cat,dog", "--top-k", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["logits"] == "class" and len(out[0]["top"]) == 1
    assert main(["predict", str(run), str(img), "--dataset", "eurosat", "--root", str(world["root"])]) == 0
    assert "class logits" in capsys.readouterr().out


def test_predict_from_the_run_alone(world, capsys):
    """Without --classes/--dataset: the run's training classes and template, fused logits -- the same
    numbers as naming them; a run without split.json (a converted checkpoint) uses its dataset's."""
    import shutil

    run = _train(world, "predict-alone", protocol="base2novel")
    assert _json(run / "run.json")["template"] == "{} texture."
    trained = sorted({c for _, _, c in _json(run / "split.json")["train"]})
    assert len(trained) == 2  # the base half of DTD's 4 classes
    img = world["root"] / "dtd" / "images" / _json(run / "split.json")["test"][0][0]
    capsys.readouterr()
    assert main(["predict", str(run), str(img), str(img), "--top-k", "3", "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert len(alone) == 2 and alone[0]["logits"] == "fused"
    assert sorted(t["class"] for t in alone[0]["top"]) == trained
    assert main(["predict", str(run), str(img), str(img), "--classes", ",".join(trained), "--template",
                 "{} texture.", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == alone
    converted = world["base"] / "predict-alone-no-split"
    shutil.copytree(run, converted)
    (converted / "split.json").unlink()
    assert main(["predict", str(converted), str(img), str(img), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == alone


def test_zeroshot_command(world):
    out = world["base"] / "zs"
    preds = world["base"] / "zs.jsonl"
    assert main(["zeroshot", "--dataset", "dtd", "--root", str(world["root"]), "--backbone", str(world["clip"]),
                 "--output", str(out), "--subsample", "new", "--shots", "2", "--num-workers", "0",
                 "--predictions", str(preds), "--progress", "lines"]) == 0
    res = _json(out / "eval" / "DescribableTextures-new.json")
    rows = read_jsonl(preds)
    assert res["method"] == "zeroshot" and res["n"] == len(rows) == 4 and res["n_classes"] == 2
    assert res["accuracy"] == pytest.approx(100.0 * sum(r["prediction"] == r["label"] for r in rows) / len(rows))
    assert _json(out / "run.json")["method"] == "zeroshot"


def test_folder_dataset(world):
    run = _train(world, "folder", dataset=f"folder:{world['folder']}", protocol="fewshot")
    res = _json(run / "results.json")
    assert 0 <= res["accuracy"] <= 100
    assert (run / "eval" / "folder_pets-all.json").is_file()


def test_eval_of_a_user_dataset_uses_the_runs_split(world, tmp_path, caplog):
    """`mmrl eval RUN` on the run's own folder: dataset evaluates the test list recorded in the run's
    split.json, after images were removed and added, and says so."""
    import logging

    pets = make_folder_dataset(tmp_path / "pets", per_class=8)
    run = _train(world, "folder-recorded", dataset=f"folder:{pets}", protocol="fewshot")
    recorded = [e[0] for e in _json(run / "split.json")["test"]]
    (pets / recorded[0]).unlink()
    make_folder_dataset(tmp_path / "more", per_class=30, seed=5)  # 30 new images per class
    for img in (tmp_path / "more").rglob("*.png"):
        img.rename(pets / img.parent.name / f"new_{img.name}")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["eval", str(run), "--dataset", f"folder:{pets}", "--predictions", str(tmp_path / "p.jsonl"),
                     "--progress", "lines"]) == 0
    rows = read_jsonl(tmp_path / "p.jsonl")
    assert [r["image"] for r in rows] == recorded[1:]
    assert _json(run / "eval" / "folder_pets-all.json")["n"] == len(recorded) - 1
    text = caplog.text
    assert "1 test image(s) of the run's split" in text and "no longer exist" in text
    assert "appeared since the run and are not evaluated" in text


def test_eval_of_the_novel_half_of_a_user_dataset_says_what_changed(world, tmp_path, caplog):
    """A base-to-novel run on a folder records the novel classes' split too (split-other.json): `mmrl
    eval RUN --subsample new` on the folder evaluates that record and says which images came and went."""
    import logging

    pets = make_folder_dataset(tmp_path / "pets", classes=("cat", "dog", "bird", "fish"), per_class=8)
    run = _train(world, "folder-b2n", dataset=f"folder:{pets}", protocol="base2novel")
    other = _json(run / "split-other.json")
    novel = sorted({e[2] for e in other["test"]})
    assert not set(novel) & {e[2] for e in _json(run / "split.json")["train"]}
    recorded = [e[0] for e in other["test"]]
    (pets / recorded[0]).unlink()
    for i in range(3):
        sample = next((pets / novel[0]).glob("*.png"))
        (pets / novel[0] / f"added_{i}.png").write_bytes(sample.read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert main(["eval", str(run), "--dataset", f"folder:{pets}", "--subsample", "new",
                     "--progress", "lines"]) == 0
    assert _json(run / "eval" / "folder_pets-new.json")["n"] == len(recorded) - 1
    assert "1 test image(s) of the run's split" in caplog.text and "split-other.json" in caplog.text


def test_finished_run_is_not_retrained_and_other_config_is_refused(world, capsys):
    run = _train(world, "again", protocol="fewshot")
    mtime = (run / "adapter.safetensors").stat().st_mtime_ns
    assert main(tiny_train_argv(world["clip"], world["root"], run, protocol="fewshot")) == 0
    assert (run / "adapter.safetensors").stat().st_mtime_ns == mtime
    capsys.readouterr()
    assert main(tiny_train_argv(world["clip"], world["root"], run, protocol="fewshot",
                                extra=["--set", "optim.lr=0.01"])) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "optim.lr" in err


def test_default_run_dir(world, monkeypatch):
    monkeypatch.chdir(world["base"])
    argv = ["train", "--method", "mmrl", "--dataset", "dtd", "--protocol", "fewshot", "--root", str(world["root"]),
            "--backbone", str(world["clip"]), "--shots", "1", "--seed", "3", "--progress", "lines"]
    for item in tiny_method_overrides("mmrl"):
        argv += ["--set", item]
    assert main(argv) == 0
    assert (world["base"] / "runs/fewshot/mmrl/DescribableTextures/shots_1/seed_3/results.json").is_file()


@pytest.mark.parametrize("method", ["mmrl", "mmrl++"])
def test_training_learns(world, method):
    # the tiny images are separable by colour: a working optimiser loop must fit them
    run = _train(world, f"learn-{method}", method=method, shots=3,
                 extra=["--set", "optim.epochs=8", "--set", "optim.lr=1e-2", "--set", "method.reg_weight=0"])
    rows = read_jsonl(run / "metrics.jsonl")
    first = [r["loss"] for r in rows if r["epoch"] == 0]
    last = [r["loss"] for r in rows if r["epoch"] == 7]
    assert sum(last) / len(last) < 0.5 * sum(first) / len(first)
    assert _json(run / "results.json")["accuracy"] > 50.0  # chance is 25% (4 classes)


def test_bf16_autocast_train_and_eval_on_cpu(world):
    run = _train(world, "bf16", extra=["--precision", "bf16", "--set", "eval.precision=bf16"])
    assert _json(run / "run.json")["precision"] == "bf16"
    res = _json(run / "eval" / "DescribableTextures-all.json")
    assert res["precision"] == "bf16" and res["n"] == 8


def test_backbone_dependent_setting_fails_before_writing(world, capsys):
    out = world["base"] / "too-deep"
    argv = tiny_train_argv(world["clip"], world["root"], out, extra=["--set", "method.first_rep_block=5"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "method.first_rep_block" in err and "3 vision" in err
    assert not out.exists()


def test_missing_data_is_reported_and_unstarted_run_can_be_replaced(world, capsys):
    out = world["base"] / "nodata"
    assert main(tiny_train_argv(world["clip"], world["base"] / "no-such-root", out)) == 1
    assert "dtd" in capsys.readouterr().err
    assert _json(out / "run.json")["status"] == "failed"
    # nothing was trained there, so a corrected command with another config may reuse the folder
    assert main(tiny_train_argv(world["clip"], world["root"], out, extra=["--set", "optim.lr=2e-3"])) == 0
    assert _json(out / "run.json")["status"] == "finished"


def test_template_and_split_file_flags(world, tmp_path):
    """--template reaches the prompts of training and evaluation; eval --split-file evaluates the
    test list of an exported split file."""
    run = _train(world, "template-run", protocol="base2novel", extra=["--template", "a blurry photo of {}."])
    assert load_config(run / "config.yaml").data.template == "a blurry photo of {}."
    assert _json(run / "eval" / "DescribableTextures-base.json")["template"] == "a blurry photo of {}."
    split = tmp_path / "split.json"
    assert main(["data", "split", "--dataset", "dtd", "--root", str(world["root"]), "--shots", "2", "--seed", "1",
                 "--subsample", "new", "--out", str(split)]) == 0
    assert main(["eval", str(run), "--dataset", "dtd", "--root", str(world["root"]), "--split-file", str(split),
                 "--template", "{} texture.", "--subsample", "new"]) == 0
    res = _json(run / "eval" / "DescribableTextures-new.json")
    assert res["template"] == "{} texture." and res["n"] == len(_json(split)["test"])


def test_fewer_images_than_shots_are_recorded_and_warned(tmp_path):
    """--shots beyond a class's images trains on what there is, says so, and run.json records it."""
    from helpers import make_folder_dataset, tiny_train_argv, write_tiny_clip
    from mmrl.cli import main

    clip = write_tiny_clip(tmp_path / "clip.pt")
    data = make_folder_dataset(tmp_path / "pets", per_class=6)
    out = tmp_path / "run"
    argv = tiny_train_argv(clip, tmp_path, out, dataset=f"folder:{data}")
    argv[argv.index("--shots") + 1] = "1000"
    assert main(argv) == 0
    info = json.loads((out / "run.json").read_text())
    split = json.loads((out / "split.json").read_text())
    per_class = [sum(1 for _, y, _ in split["train"] if y == c) for c in range(3)]
    assert info["shots"] == 1000 and info["shots_realised"] == {"min": min(per_class), "max": max(per_class),
                                                                "per_class": per_class}
    assert max(per_class) < 1000
    assert "3 of 3 classes have fewer training images than the 1000 shots asked for" in (out / "train.log").read_text()
