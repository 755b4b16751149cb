"""`mmrl export` and `mmrl.Classifier`: exported files (ONNX, torch.export) give the logits of
`mmrl eval --predictions` on the same images, run without mmrl, and carry their metadata.

Tolerances (fp32): the exported graphs compute the same operations as evaluation, but ONNX
Runtime fuses and reorders some of them (and a different batch size changes the matmul
blocking); we require max |logit difference| / max |logit| < 1e-5 for torch files and the
in-process classifier and < 1e-4 for ONNX, the issue's bounds. Images are 40x40 so that the
bicubic resize to the tiny CLIP's 32x32 input really runs; a wrong beta, logit kind, class
order or preprocessing changes logits by far more than these bounds.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_benchmark_dataset, make_image, read_jsonl, tiny_train_argv, write_tiny_clip
from mmrl import Classifier
from mmrl.cli import main
from mmrl.data import build_transform, preprocessing_spec

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "classify_exported.py"
IMAGE_DIRS = {"dtd": "dtd/images", "eurosat": "eurosat/2750"}
TOL = {"onnx": 1e-4, "torch": 1e-5}
SUFFIX = {"onnx": "onnx", "torch": "pt2"}
# MMRL++ trained cross-dataset: on EuroSAT it blends with the published target beta 0.3, not its own 0.9
RUNS = {"mmrl": "fewshot", "mmrl++": "crossdataset"}


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


# The subprocess that runs exported files: mmrl and open_clip cannot be imported there, and
# only the example script (numpy, PIL, onnxruntime / torch) loads and preprocesses.
RUNNER = r"""
import json, sys
sys.modules["mmrl"] = None        # any import of mmrl (or open_clip) fails
sys.modules["open_clip"] = None
import importlib.util
import numpy as np
from PIL import Image
spec = importlib.util.spec_from_file_location("classify_exported", sys.argv[1])
ex = importlib.util.module_from_spec(spec); spec.loader.exec_module(ex)
cases = json.load(open(sys.argv[2]))
out = {}
for name, case in cases.items():
    run, meta = ex.load(case["model"], trust_pt2=True)  # files this test exported
    batch = np.stack([ex.preprocess(Image.open(f), meta["preprocessing"]) for f in case["images"]])
    full = run(batch)
    # batch sizes 1 and 5 through the same graph (dynamic batch dimension)
    pieces = np.concatenate([run(batch[:1]), run(batch[1:6]), run(batch[6:])])
    out[name] = {"logits": full.tolist(), "pieces": pieces.tolist(), "meta": meta}
assert not any(m.split(".")[0] in ("mmrl", "open_clip") for m, v in sys.modules.items() if v is not None)
json.dump(out, open(sys.argv[3], "w"))
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    clip = write_tiny_clip(base / "tiny_clip.pt")
    root = base / "data"
    make_benchmark_dataset(root, "DescribableTextures", size=40)
    make_benchmark_dataset(root, "EuroSAT", size=40)
    runs = {}
    for method, protocol in RUNS.items():
        runs[method] = base / method
        assert main(tiny_train_argv(clip, root, runs[method], method=method, protocol=protocol)) == 0
    return {"base": base, "root": root, "runs": runs}


@pytest.fixture(scope="module")
def exported(world):
    """For each method x dataset (DTD = the training classes, EuroSAT = other classes) x format:
    the eval predictions, the exported file, and its logits computed in a subprocess without mmrl."""
    base, root = world["base"], world["root"]
    cases = {}
    for method, run in world["runs"].items():
        for ds in ("dtd", "eurosat"):
            preds = base / f"{method}-{ds}.jsonl"
            assert main(["eval", str(run), "--dataset", ds, "--predictions", str(preds), "--progress", "lines"]) == 0
            rows = read_jsonl(preds)
            assert len(rows) == 8
            images = [str(root / IMAGE_DIRS[ds] / r["image"]) for r in rows]
            for fmt in ("onnx", "torch"):
                path = base / f"{method}-{ds}.{SUFFIX[fmt]}"
                argv = ["export", str(run), "-o", str(path)] + (["--dataset", ds] if ds != "dtd" else [])
                assert main(argv) == 0
                cases[f"{method}|{ds}|{fmt}"] = {"model": str(path), "images": images, "rows": rows}
    spec = base / "cases.json"
    spec.write_text(json.dumps({k: {"model": v["model"], "images": v["images"]} for k, v in cases.items()}))
    out = base / "out.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(EXAMPLE), str(spec), str(out)], env=env,
                          capture_output=True, text=True, cwd=str(base), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for k, v in cases.items():
        v.update(results[k])
    return cases


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("fmt", ["onnx", "torch"])
@pytest.mark.parametrize("ds", ["dtd", "eurosat"])
@pytest.mark.parametrize("method", ["mmrl", "mmrl++"])
def test_exported_file_equals_eval_predictions(exported, method, ds, fmt):
    case = exported[f"{method}|{ds}|{fmt}"]
    rows, meta = case["rows"], case["meta"]
    ref = [r["logits"] for r in rows]
    kind = rows[0]["logits_kind"]
    assert kind == ("fused" if ds == "dtd" else "class")      # decoupled inference, as eval decided
    assert meta["logits"] == kind
    assert rel_err(case["logits"], ref) < TOL[fmt]
    assert rel_err(case["pieces"], ref) < TOL[fmt]            # batch 1 and 5 through the same file
    assert np.asarray(case["logits"]).shape == (8, 4)
    # the metadata names the classes in logit order (eval's predicted class names follow them)
    assert [meta["classes"][int(np.argmax(r["logits"]))] for r in rows] == [r["predicted_classname"] for r in rows]
    assert meta["preprocessing"] == preprocessing_spec(32) and meta["input_size"] == 32
    assert meta["input"]["shape"] == ["N", 3, 32, 32] and meta["output"]["shape"] == ["N", 4]
    res = json.loads((Path(exported[f"{method}|{ds}|{fmt}"]["model"]).parent / method / "eval" /
                      ("DescribableTextures-all.json" if ds == "dtd" else "EuroSAT-all.json")).read_text())
    assert meta["template"] == res["template"] and meta["beta"] == res["beta"]
    if method == "mmrl++" and ds == "eurosat":
        assert meta["beta"] == 0.3


def test_onnx_graph_has_a_dynamic_batch(exported):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(exported["mmrl|dtd|onnx"]["model"])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert model.graph.input[0].name == "images" and model.graph.output[0].name == "logits"
    assert json.loads({p.key: p.value for p in model.metadata_props}["mmrl"])["kind"] == "mmrl-classifier"


def test_example_script_prints_top_classes(exported):
    case = exported["mmrl|eurosat|onnx"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(EXAMPLE), case["model"], case["images"][0], "--top-k", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{case['images'][0]}:" and len(lines) == 3
    assert lines[1].split("%  ", 1)[1] == case["rows"][0]["predicted_classname"]


# ------------------------------------------------------------------------------- Python API
def _model_logits(run_dir, classes, template, kind, images):
    """What `mmrl predict` computes: the run's model, its transform, the chosen logits."""
    from mmrl.engine import load_run

    model, _ = load_run(run_dir, device="cpu")
    model.set_classes(classes, template)
    tf = build_transform(False, 32)
    x = torch.stack([tf(im) for im in images])
    with torch.no_grad():
        lg = model.logits(x, model.encode_text())
    return lg.of(kind)


def _odd_images(base: Path) -> list[Path]:
    """Non-square images of other sizes: the resize and the centre crop both act."""
    out = []
    for i, (w, h) in enumerate([(48, 40), (40, 57), (64, 64)]):
        p = make_image(base / f"odd_{i}.png", (200, 40 * i, 90), seed=i, size=max(w, h))
        Image.open(p).resize((w, h)).save(p)
        out.append(p)
    return out


def test_classifier_from_run_predict_and_with_classes(world):
    run = world["runs"]["mmrl++"]
    clf = Classifier.from_run(run, device="cpu")
    assert clf.classes == ["banded", "blotchy", "braided", "bubbly"] and clf.logit_kind == "fused"
    images = _odd_images(world["base"])
    pil = [Image.open(p).convert("RGB") for p in images]
    ref = _model_logits(run, clf.classes, clf.template, "fused", pil)
    batch = clf.preprocess(images)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32
    assert torch.equal(batch, clf.preprocess(pil))                    # paths and PIL images alike
    assert rel_err(clf.logits(batch), ref) < 1e-5
    pred = clf.predict([str(p) for p in images], top_k=3)
    assert len(pred) == 3 and all(len(p) == 3 for p in pred)
    prob = ref.softmax(-1)
    for row, p in zip(pred, prob):
        order = p.argsort(descending=True)[:3]
        assert [c for c, _ in row] == [clf.classes[int(i)] for i in order]
        assert [q for _, q in row] == pytest.approx([float(p[i]) for i in order], rel=1e-5)
    assert len(clf.predict(images[0], top_k=10)[0]) == 4                 # one image; top_k capped at C

    other = clf.with_classes(["a cat", "a dog", "a red bird"])
    assert other.logit_kind == "class" and other.classes == ["a cat", "a dog", "a red bird"]
    assert rel_err(other.logits(batch), _model_logits(run, other.classes, clf.template, "class", pil)) < 1e-5
    assert clf.with_classes(clf.classes).logit_kind == "fused"          # the training classes again
    forced = Classifier.from_run(run, logits="class", device="cpu")
    assert rel_err(forced.logits(batch), _model_logits(run, clf.classes, clf.template, "class", pil)) < 1e-5
    rep = Classifier.from_run(run, logits="rep", device="cpu")  # representation tokens only
    assert rep.logit_kind == "rep"
    assert rel_err(rep.logits(batch), _model_logits(run, clf.classes, clf.template, "rep", pil)) < 1e-5


def test_classifier_load_and_with_classes_of_a_file(world, exported):
    images = _odd_images(world["base"])
    fused = Classifier.load(exported["mmrl|dtd|torch"]["model"], trust_pt2=True)  # exported here
    from_run = Classifier.from_run(world["runs"]["mmrl"], device="cpu")
    batch = from_run.preprocess(images)
    assert rel_err(fused.logits(batch), from_run.logits(batch)) < 1e-5
    assert fused.predict(images[0], top_k=2)[0][0][0] == from_run.predict(images[0], top_k=2)[0][0][0]
    with pytest.raises(ValueError, match="baked in"):
        fused.with_classes(["banded"])
    cls_file = Classifier.load(exported["mmrl|eurosat|onnx"]["model"])
    full = cls_file.logits(batch)
    names = cls_file.classes
    sub = cls_file.with_classes([names[2], names[0]])
    assert sub.classes == [names[2], names[0]]
    assert torch.equal(sub.logits(batch), full[:, [2, 0]])
    assert sub.metadata["output"]["shape"] == ["N", 2]
    with pytest.raises(ValueError, match="unknown classes"):
        cls_file.with_classes(["not a class"])
    with pytest.raises(ValueError, match=r"expected a \(N, 3, 32, 32\) batch"):
        cls_file.logits(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="loaded from an exported file"):
        cls_file.export(world["base"] / "again.onnx")


def test_export_classes_flag_and_json(world, capsys):
    run = world["runs"]["mmrl"]
    out = world["base"] / "pets.pt2"
    assert main(["export", str(run), "-o", str(out), "--classes", "cat, dog,bird", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["classes"] == ["cat", "dog", "bird"] and meta["logits"] == "class" and meta["format"] == "torch"
    assert meta["path"] == str(out) and meta["bytes"] == out.stat().st_size
    clf = Classifier.load(out, trust_pt2=True)
    images = _odd_images(world["base"])
    ref = Classifier.from_run(run, ["cat", "dog", "bird"], device="cpu")
    assert rel_err(clf.logits(clf.preprocess(images)), ref.logits(ref.preprocess(images))) < 1e-5


def test_predict_uses_the_datasets_target_beta_as_eval_does(world, exported, capsys):
    """`mmrl predict --dataset` decides classes, template, logit kind and (MMRL++) beta as
    `mmrl eval` does: its probabilities are the softmax of eval's logits."""
    case = exported["mmrl++|eurosat|torch"]
    row = case["rows"][0]
    assert main(["predict", str(world["runs"]["mmrl++"]), case["images"][0], "--dataset", "eurosat",
                 "--top-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)[0]
    prob = torch.tensor(row["logits"]).softmax(-1)
    names = case["meta"]["classes"]
    assert out["logits"] == "class"
    assert {t["class"]: t["probability"] for t in out["top"]} == pytest.approx(
        {names[i]: float(prob[i]) for i in range(4)}, rel=1e-5)


# ------------------------------------------------------------------------------- errors
def _one_line_error(capsys, argv, code=1) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("mmrl: error: ") and err.count("\n") == 1
    return err


def test_export_errors(world, capsys, monkeypatch):
    run = world["runs"]["mmrl"]
    base = world["base"]
    err = _one_line_error(capsys, ["export", str(run), "-o", str(base / "model.bin")])
    assert "model.bin" in err and "--format" in err
    # a run without split.json (e.g. converted from the authors' checkpoint): the classes must be given
    bare = base / "bare-run"
    shutil.copytree(run, bare)
    (bare / "split.json").unlink()
    err = _one_line_error(capsys, ["export", str(bare), "-o", str(base / "bare.onnx")])
    assert "split.json" in err and "class names" in err
    assert main(["export", str(bare), "-o", str(base / "bare.onnx"), "--classes", "a,b"]) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, ["export", str(base / "nowhere"), "-o", str(base / "x.onnx")])
    assert "nowhere" in err
    # ONNX export without its optional dependencies: one line naming the package and the extra
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    err = _one_line_error(capsys, ["export", str(run), "-o", str(base / "y.onnx")])
    assert "onnxscript" in err and "mmrl[export]" in err
    assert not (base / "y.onnx").exists()


def test_load_rejects_foreign_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx"):
        Classifier.load(junk)
    import zipfile

    z = tmp_path / "other.pt2"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match="other.pt2"):
        Classifier.load(z, trust_pt2=True)
    with pytest.raises(FileNotFoundError):
        Classifier.load(tmp_path / "absent.onnx")
