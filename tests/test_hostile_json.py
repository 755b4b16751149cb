"""Deeply nested JSON from elsewhere (``[[[[...``: 100000 levels in 100 KB) gets one line naming the
file wherever mmrl reads JSON, instead of Python's RecursionError traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import make_benchmark_dataset, make_folder_dataset
from mmrl import data
from mmrl.engine import rundir
from mmrl.errors import UserError
from mmrl.fileio import JSONFileError, read_json, read_json_or_none

DEEP = "[" * 100_000          # a list nested 100000 levels deep (never closed: the parser gives up first)
DEEP_OBJECT = '{"a":' * 100_000


@pytest.mark.parametrize("payload", [DEEP, DEEP_OBJECT])
def test_safe_reader_names_the_file(tmp_path, payload):
    p = tmp_path / "deep.json"
    p.write_text(payload)
    with pytest.raises(JSONFileError) as e:
        read_json(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and "nested more than" in msg and "\n" not in msg and len(msg) < 300
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert read_json_or_none(p) is None        # lock files, claims, report scans: treated as unreadable


def test_not_utf8_named_too(tmp_path):
    p = tmp_path / "latin.json"
    p.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(JSONFileError, match="latin.json: not valid JSON"):
        read_json(p)


def test_split_file_manifest_and_dataset_json(tmp_path):
    root = tmp_path / "root"
    folder = make_benchmark_dataset(root, "DescribableTextures")
    (folder / "split_zhou_DescribableTextures.json").write_text(DEEP)
    with pytest.raises(data.DataError, match="split_zhou_DescribableTextures.json: unreadable JSON: nested"):
        data.load_dataset("DescribableTextures", root)

    make_folder_dataset(tmp_path / "imgs")
    manifest = tmp_path / "m.json"
    manifest.write_text(DEEP)
    with pytest.raises(data.DataError, match="m.json: unreadable JSON: nested"):
        data.load_dataset(f"manifest:{manifest}", None)

    ds = tmp_path / "mine"
    ds.mkdir()
    (ds / "dataset.json").write_text(DEEP_OBJECT)
    with pytest.raises(data.DataError, match="dataset.json: unreadable JSON: nested"):
        data.load_dataset(f"dataset:{ds}", None)


def test_run_json_and_split_json_of_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(DEEP)
    with pytest.raises(UserError, match="run.json: unreadable JSON: nested.*status file is damaged"):
        rundir.read_run_info(run)
    (run / "split.json").write_text(DEEP)
    with pytest.raises(UserError, match="split.json: unreadable JSON: nested"):
        rundir.training_classnames(run)


def test_sweep_treats_a_deep_run_json_as_unreadable(tmp_path):
    from mmrl import sweep

    cell = sweep.build_grid("fewshot", "mmrl", tmp_path, datasets=["dtd"], shots=[1], seeds=[1])[0]
    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / "run.json").write_text(DEEP)
    (cell.run_dir / "eval").mkdir()
    (cell.run_dir / "eval" / "DescribableTextures-all.json").write_text(DEEP)
    assert sweep.cell_state(cell).kind == "fresh"   # train then refuses it naming run.json (above)


def test_cli_one_line_no_traceback(tmp_path):
    """`mmrl data split` over a deep split file: exit 1, one line naming the file."""
    root = tmp_path / "root"
    folder = make_benchmark_dataset(root, "DescribableTextures")
    (folder / "split_zhou_DescribableTextures.json").write_text(DEEP)
    r = subprocess.run([sys.executable, "-m", "mmrl", "data", "split", "--dataset", "dtd", "--root", str(root),
                        "--out", str(tmp_path / "s.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "RecursionError" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "split_zhou_DescribableTextures.json: unreadable JSON: nested" in lines[0], r.stderr


def test_safetensors_header_nested(tmp_path):
    from mmrl.fileio import read_safetensors_header

    header = DEEP.encode()
    p = tmp_path / "a.safetensors"
    p.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match="a.safetensors: not a safetensors file .its header: unreadable JSON: nested"):
        read_safetensors_header(p)


def test_oversized_file_refused_before_parsing(tmp_path, monkeypatch):
    """A JSON file over the cap is refused by size, reading at most cap + 1 bytes of it."""
    import mmrl.fileio as fileio

    p = tmp_path / "big.json"
    p.write_text("[" + ",".join(["0"] * 600) + "]")      # 1201 bytes, valid JSON
    assert len(read_json(p)) == 600
    monkeypatch.setattr(fileio, "JSON_MAX_BYTES", 1200)
    reads = []
    real_open = open

    class Counting:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def read(self, n=-1):
            reads.append(n)
            return self.f.read(n)

    monkeypatch.setattr("builtins.open", lambda *a, **k: Counting(real_open(*a, **k)))
    with pytest.raises(JSONFileError) as e:
        read_json(p)
    monkeypatch.undo()
    assert reads == [1201]                               # never the whole file of an unknown size
    msg = str(e.value)
    assert msg.startswith(f"{p}: more than ") and "1200 bytes of JSON" in msg and "\n" not in msg
    assert read_json_or_none(p) is None
    assert read_json(p, max_bytes=1201) == [0] * 600     # at the cap: read


def test_oversized_manifest_is_one_data_error(tmp_path, monkeypatch):
    import mmrl.fileio as fileio

    make_folder_dataset(tmp_path / "imgs")
    manifest = tmp_path / "m.json"
    manifest.write_text('[{"path": "imgs/a.png", "label": "a"}]' + " " * 2000)
    monkeypatch.setattr(fileio, "JSON_MAX_BYTES", 1000)
    with pytest.raises(data.DataError, match="m.json: more than 1000 bytes of JSON"):
        data.load_dataset(f"manifest:{manifest}", None)
