"""`mmrl data verify`: reports and exit codes."""
from __future__ import annotations

import json

from fixtures_data import write_class_folders, write_split_dataset
from mmrl.cli import main as cli_main
from mmrl.data import verify_dataset


def _dtd(root):
    return write_split_dataset(root, "dtd", "images", "DescribableTextures", ["banded", "blotchy"], counts=(2, 1, 1))


def test_named_present_dataset_ok(tmp_path, capsys):
    _dtd(tmp_path)
    assert cli_main(["data", "verify", "--root", str(tmp_path), "--dataset", "dtd"]) == 0
    out = capsys.readouterr().out
    assert "[ok] DescribableTextures" in out and "2 classes; train 4, val 2, test 2" in out


def test_named_missing_dataset_fails_with_layout(tmp_path, capsys):
    _dtd(tmp_path)
    assert cli_main(["data", "verify", "--root", str(tmp_path), "--dataset", "dtd", "eurosat"]) == 1
    out = capsys.readouterr().out
    assert "[missing] EuroSAT" in out and "eurosat/2750/<class>" in out and "split_zhou_EuroSAT.json" in out


def test_all_datasets_missing_ones_do_not_fail(tmp_path, capsys):
    _dtd(tmp_path)
    assert cli_main(["data", "verify", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("[missing]") == 14 and "1 of 15 dataset(s) present" in out


def test_absent_images_make_a_found_dataset_broken(tmp_path, capsys):
    entries = _dtd(tmp_path)
    gone = tmp_path / "dtd" / "images" / entries["test"][0][0]
    gone.unlink()
    assert cli_main(["data", "verify", "--root", str(tmp_path)]) == 1  # unnamed, but present and broken
    out = capsys.readouterr().out
    assert "[broken] DescribableTextures" in out and "1 image(s) listed but absent" in out and str(gone) in out


def test_decode_finds_corrupt_images(tmp_path, capsys):
    entries = _dtd(tmp_path)
    bad = tmp_path / "dtd" / "images" / entries["train"][1][0]
    bad.write_bytes(b"not an image at all")
    assert cli_main(["data", "verify", "--root", str(tmp_path), "--dataset", "dtd"]) == 0  # no decoding: fine
    capsys.readouterr()
    assert cli_main(["data", "verify", "--root", str(tmp_path), "--dataset", "dtd", "--decode", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)[0]
    assert rep["status"] == "broken" and rep["failed"] and len(rep["undecodable"]) == 1
    assert str(bad) in rep["undecodable"][0]


def test_present_folder_with_missing_split_source_is_broken(tmp_path, capsys):
    (tmp_path / "stanford_cars" / "cars_train").mkdir(parents=True)
    assert cli_main(["data", "verify", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "[broken] StanfordCars" in out and "split_zhou_StanfordCars.json" in out


def test_built_split_is_reported(tmp_path):
    write_class_folders(tmp_path / "dtd" / "images", {"a": 4, "b": 4})
    rep = verify_dataset("dtd", tmp_path)
    assert rep.status == "ok" and rep.sizes == {"train": 4, "val": 2, "test": 2}
    assert any("built from the raw data" in m for m in rep.messages)


def test_user_data_and_argument_errors(tmp_path, capsys):
    write_class_folders(tmp_path / "mine", {"a": 4, "b": 4})
    assert cli_main(["data", "verify", "--dataset", f"folder:{tmp_path / 'mine'}"]) == 0
    assert cli_main(["data", "verify", "--dataset", f"folder:{tmp_path / 'nope'}"]) == 1
    assert cli_main(["data", "verify"]) == 2  # benchmarks need --root
    assert cli_main(["data", "verify", "--root", str(tmp_path), "--dataset", "mnist"]) == 1
    assert "unknown dataset" in capsys.readouterr().err


def test_data_split_does_not_import_torch(tmp_path):
    """`mmrl data split` reads folders and writes JSON: it must not wait for torch to import."""
    import subprocess
    import sys

    data = tmp_path / "pets"
    write_class_folders(data, {"cat": 6, "dog": 6})
    out = tmp_path / "split.json"
    code = ("import sys; from mmrl.cli import main; "
            f"rc = main(['data', 'split', '--dataset', 'folder:{data}', '--out', '{out}', '--shots', '2']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(out.read_text())) >= {"train", "val", "test"}
