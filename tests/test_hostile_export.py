"""Exported files from others cannot run code: an ``.onnx`` is only ever parsed as ONNX, and a
``.pt2`` (which ``torch.export.load`` may unpickle) is opened only when the caller trusts it.

The payload is built here: a zip laid out exactly as ``torch.export.save`` lays out a ``.pt2``
(a genuine export of a tiny module) whose pickled sample inputs, unpickled without restriction,
create a marker file in the test's folder -- a harmless stand-in for any code. Each refusal must
happen before anything is unpickled: the marker never appears. Trusted loading of genuine
exported files is tested in test_engine_export.py.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import make_image
from mmrl import Classifier
from mmrl.errors import UntrustedFileError, error_line

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "classify_exported.py"


class _CreatesMarker:
    """Pickles as a call of ``open(path, "w")``: unpickling it unrestricted creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _hostile_pt2(marker: Path) -> bytes:
    """A .pt2 archive whose ``data/sample_inputs/...`` pickle creates ``marker`` when unpickled."""
    program = torch.export.export(torch.nn.Linear(3, 2).eval(), (torch.zeros(2, 3),))
    genuine = io.BytesIO()
    torch.export.save(program, genuine, extra_files={"mmrl.json": json.dumps({"kind": "mmrl-classifier"})})
    evil = io.BytesIO()
    torch.save(_CreatesMarker(marker), evil)
    out = io.BytesIO()
    replaced = []
    with zipfile.ZipFile(genuine) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if "sample_inputs" in info.filename:
                data, _ = evil.getvalue(), replaced.append(info.filename)
            dst.writestr(info, data)
    assert replaced, "torch.export.save no longer writes sample inputs: update the payload"
    return out.getvalue()


@pytest.fixture
def hostile(tmp_path):
    """(marker path, the payload named .onnx, the payload named .pt2)."""
    marker = tmp_path / "code-ran"
    data = _hostile_pt2(marker)
    as_onnx, as_pt2 = tmp_path / "model.onnx", tmp_path / "model.pt2"
    as_onnx.write_bytes(data)
    as_pt2.write_bytes(data)
    return marker, as_onnx, as_pt2


def _one_short_line(e: BaseException) -> str:
    line = error_line(e)
    assert "\n" not in str(e) and len(line) < 300, line
    return line


def test_a_pt2_named_onnx_is_parsed_as_onnx_only(hostile):
    pytest.importorskip("onnxruntime")
    marker, as_onnx, as_pt2 = hostile
    with pytest.raises(ValueError) as e:
        Classifier.load(as_onnx)
    line = _one_short_line(e.value)
    assert str(as_onnx) in line and "not an ONNX model" in line and "zip" in line
    assert not marker.exists()
    # the format chosen explicitly is honoured the same way: format="onnx" parses a .pt2 as ONNX
    with pytest.raises(ValueError, match="not an ONNX model"):
        Classifier.load(as_pt2, format="onnx")
    assert not marker.exists()


@pytest.mark.parametrize("fmt", [None, "torch"])
def test_an_untrusted_pt2_is_refused_naming_the_argument(hostile, fmt):
    marker, as_onnx, as_pt2 = hostile
    path = as_pt2 if fmt is None else as_onnx  # format="torch" on any name still needs the trust
    with pytest.raises(UntrustedFileError) as e:
        Classifier.load(path, format=fmt)
    line = _one_short_line(e.value)
    assert str(path) in line and "trust_pt2=True" in line and "code" in line
    assert not marker.exists()


def test_example_script_refuses_both_and_names_its_flag(hostile, tmp_path):
    marker, as_onnx, as_pt2 = hostile
    image = make_image(tmp_path / "img.png", (10, 200, 30), seed=0)
    for path, words in ((as_pt2, ["--trust-pt2"]), (as_onnx, ["not an ONNX model"])):
        if path == as_onnx:
            pytest.importorskip("onnxruntime")
        proc = subprocess.run([sys.executable, str(EXAMPLE), str(path), str(image)],
                              capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert str(path) in lines[0] and all(w in lines[0] for w in words), lines[0]
        assert not marker.exists()
