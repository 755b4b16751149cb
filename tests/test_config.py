"""Typed run configuration: presets, per-dataset overrides, layering, and errors before any work."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from mmrl.config import (PRESET_DIR, ConfigError, RunConfig, all_keys, dump_config, key_docs, load_config,
                         resolve_config)


# --------------------------------------------------------------------------- presets and per-dataset values
@pytest.mark.parametrize("method", ["mmrl", "mmrl++"])
@pytest.mark.parametrize("protocol", ["base2novel", "fewshot", "crossdataset"])
def test_every_preset_resolves_with_protocol_values(method, protocol):
    cfg = resolve_config(method, protocol, "Caltech101")
    assert cfg.method.name == method and cfg.protocol == protocol
    assert (cfg.method.n_rep_tokens, cfg.method.first_rep_block, cfg.method.alpha) == (5, 6, 0.7)
    assert (cfg.optim.weight_decay, cfg.optim.betas, cfg.optim.warmup_lr) == (5e-4, (0.9, 0.999), 1e-5)
    assert cfg.eval.batch_size == 250 and cfg.eval.precision == "fp32"
    assert cfg.backbone == "ViT-B-16" and cfg.data.shots == 16
    expected = {  # docs/protocols.md#per-protocol: (batch, epochs, lr, warm-up epochs, subsample)
        ("mmrl", "base2novel"): (4, 10, 1e-3, 1, "base"), ("mmrl++", "base2novel"): (4, 10, 1e-3, 1, "base"),
        ("mmrl", "fewshot"): (32, 50, 1e-3, 1, "all"), ("mmrl++", "fewshot"): (32, 100, 2e-3, 1, "all"),
        ("mmrl", "crossdataset"): (32, 1, 1e-3, 0, "all"), ("mmrl++", "crossdataset"): (32, 1, 1e-3, 0, "all"),
    }[(method, protocol)]
    o = cfg.optim
    assert (o.batch_size, o.epochs, o.lr, o.warmup_epochs, cfg.data.subsample) == expected


def test_per_dataset_overrides_follow_protocols_md():
    # MMRL: lambda per dataset; EuroSAT also d_r 2048; ImageNet batch 32 / 5 epochs in base2novel and few-shot
    assert resolve_config("mmrl", "base2novel", "StanfordCars").method.reg_weight == 7.0
    euro = resolve_config("mmrl", "fewshot", "eurosat")
    assert (euro.method.reg_weight, euro.method.rep_dim) == (0.01, 2048)
    inet = resolve_config("mmrl", "base2novel", "imagenet")
    assert (inet.method.reg_weight, inet.optim.batch_size, inet.optim.epochs) == (0.5, 32, 5)
    inet_fs = resolve_config("mmrl++", "fewshot", "ImageNet")
    assert (inet_fs.optim.batch_size, inet_fs.optim.epochs, inet_fs.optim.lr) == (32, 5, 1e-3)
    # MMRL++: beta and lambda per dataset in base2novel and few-shot
    food = resolve_config("mmrl++", "base2novel", "food101")
    assert (food.method.beta, food.method.reg_weight) == (0.1, 1.0)
    assert resolve_config("mmrl++", "fewshot", "pets").method.reg_weight == 0.01
    # cross-dataset keeps the defaults (no per-dataset lambda, d_r 512 even for EuroSAT)
    cross = resolve_config("mmrl", "crossdataset", "ImageNet")
    assert (cross.method.reg_weight, cross.method.rep_dim) == (0.2, 512)
    assert resolve_config("mmrl", "crossdataset", "EuroSAT").method.rep_dim == 512
    pp = resolve_config("mmrl++", "crossdataset", "ImageNet")
    assert (pp.method.reg_weight, pp.method.beta) == (0.1, 0.9)
    assert pp.eval.target_beta["ImageNetSketch"] == 0.7 and pp.eval.target_beta["Food101"] == 0.3
    assert len(pp.eval.target_beta) == 14
    assert resolve_config("mmrl++", "base2novel", "ImageNet").eval.target_beta == {}


def test_layer_order_preset_dataset_file_flags_set(tmp_path):
    f = tmp_path / "user.yaml"
    f.write_text("method:\n  reg_weight: 3.5\noptim.lr: 1e-4\nseed: 7\n")
    cfg = resolve_config("mmrl", "fewshot", "StanfordCars", f)
    assert cfg.method.reg_weight == 3.5          # file beats the per-dataset 7.0
    assert cfg.optim.lr == 1e-4                   # "1e-4" (a YAML string) read as a number
    assert cfg.seed == 7
    cfg = resolve_config("mmrl", "fewshot", "StanfordCars", f, ["method.reg_weight=0.25", ("data.shots", 4)],
                         flags={"seed": 3, "data.shots": 8})
    assert (cfg.method.reg_weight, cfg.seed, cfg.data.shots) == (0.25, 3, 4)  # --set beats flags beats file
    cfg = resolve_config("mmrl++", "crossdataset", "ImageNet", overrides=["eval.target_beta.EuroSAT=0.5"])
    assert cfg.eval.target_beta["EuroSAT"] == 0.5 and cfg.eval.target_beta["Food101"] == 0.3


def test_dump_and_load_round_trip(tmp_path):
    cfg = resolve_config("mmrl++", "crossdataset", "ImageNet", overrides=["data.template={} photo.",
                                                                          "output=/x/y", "data.seed=5"])
    text = dump_config(cfg, "header line")
    p = tmp_path / "config.yaml"
    p.write_text(text)
    back = load_config(p)
    assert back == cfg
    assert back.data_seed == 5
    # every key line carries a comment explaining it
    for line in text.splitlines():
        if line.startswith("#") or line.rstrip().endswith(":"):
            continue
        assert "  # " in line, line


def test_key_docs_cover_every_key():
    assert set(all_keys()) == set(key_docs())


def test_every_preset_field_is_commented():
    files = sorted(PRESET_DIR.glob("mmrl*-*.yaml")) + [PRESET_DIR / "datasets.yaml"]
    assert len(files) == 7
    for f in files:
        for line in f.read_text().splitlines():
            s = line.strip()
            if not s or s.startswith("#") or s.endswith(":"):
                continue  # blank, comment, section header
            if f.name == "datasets.yaml" and re.match(r"^[A-Za-z0-9]+:\s+[0-9.]+$", s):
                continue  # target-beta table rows: documented by the section comment
            assert "#" in s, f"{f.name}: uncommented field: {line!r}"
        yaml.safe_load(f.read_text())


def test_defaults_without_preset():
    cfg = RunConfig()
    assert cfg.optim.weight_decay == 5e-4 and cfg.eval.batch_size == 250 and cfg.backbone == "ViT-B-16"
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset="EuroSAT", shots=4), seed=2,
                              protocol="fewshot")
    assert cfg.run_dir() == Path("runs/fewshot/mmrl/EuroSAT/shots_4/seed_2")


def test_a_resolved_config_is_immutable():
    cfg = resolve_config("mmrl", "fewshot", "dtd")
    for obj, key in ((cfg, "seed"), (cfg.data, "shots"), (cfg.optim, "lr"), (cfg.method, "beta")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, key, 1)
    assert dataclasses.replace(cfg, seed=7).seed == 7 and cfg.seed == 1


# --------------------------------------------------------------------------- errors
def test_unknown_key_names_closest_keys():
    with pytest.raises(ConfigError, match=r"optim\.lrr.*did you mean 'optim\.lr'"):
        resolve_config("mmrl", "fewshot", "dtd", overrides=["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"'method\.reg_weight'"):
        resolve_config("mmrl", "fewshot", "dtd", overrides=["reg_weight=1"])
    with pytest.raises(ConfigError, match=r"'data\.shots'"):
        resolve_config("mmrl", "fewshot", "dtd", overrides=["data.shot=1"])


def test_unknown_key_in_config_file_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("optim:\n  warmup_epoch: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.warmup_epoch.*optim\.warmup_epochs"):
        resolve_config("mmrl", "fewshot", "dtd", f)


@pytest.mark.parametrize("item, pattern", [
    ("optim.epochs=ten", r"optim\.epochs = 'ten'.*expected an integer"),
    ("optim.epochs=2.5", r"optim\.epochs = 2\.5.*expected an integer"),
    ("data.skip_bad_images=3", r"expected true/false"),
    ("optim.betas=[0.9]", r"optim\.betas.*expected a list of a number, a number"),
    ("optim.lr=abc", r"optim\.lr = 'abc'.*expected a number"),
    ("method.reg_weight=.nan", r"method\.reg_weight.*finite"),
    ("optim", r"expected KEY=VALUE"),
])
def test_wrong_type_is_rejected(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve_config("mmrl", "fewshot", "dtd", overrides=[item])


@pytest.mark.parametrize("item, pattern", [
    ("precision=fp8", r"precision = 'fp8'.*one of auto, bf16, fp16, fp32"),
    ("device=tpu", r"device = 'tpu'"),
    ("optim.lr=0", r"optim\.lr = 0\.0.*positive"),
    ("data.shots=0", r"data\.shots = 0.*>= 1"),
    ("optim.warmup_epochs=10", r"optim\.warmup_epochs = 10.*fewer than optim\.epochs"),
    ("method.alpha=1.5", r"method\.alpha = 1\.5"),
    ("data.subsample=novel", r"data\.subsample = 'novel'.*new = the novel classes"),
    ("data.template=no placeholder", r"data\.template"),
])
def test_bad_value_is_rejected(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve_config("mmrl", "base2novel", "dtd", overrides=[item])


def test_arguments_fixed_by_flags_cannot_be_overridden():
    with pytest.raises(ConfigError, match=r"method\.name.*--method"):
        resolve_config("mmrl", "fewshot", "dtd", overrides=["method.name=mmrl++"])
    with pytest.raises(ConfigError, match=r"--protocol 'few'.*did you mean 'fewshot'"):
        resolve_config("mmrl", "few", "dtd")
    with pytest.raises(ConfigError, match=r"unknown dataset"):
        resolve_config("mmrl", "fewshot", "not-a-dataset")


def test_cli_config_errors_fail_before_any_work(tmp_path, capsys):
    from mmrl.cli import main

    out = tmp_path / "run"
    base = ["train", "--method", "mmrl", "--dataset", "dtd", "--protocol", "fewshot", "--root", str(tmp_path),
            "--backbone", str(tmp_path / "missing.pt"), "--output", str(out)]
    assert main(base + ["--set", "optim.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.learning_rate" in err and "optim.lr" in err
    assert main(base + ["--set", "optim.batch_size=big"]) == 2
    assert "optim.batch_size" in capsys.readouterr().err
    assert not out.exists()  # nothing was created, no backbone or data was touched


def test_each_key_documented_once_and_shown_everywhere():
    """The fields' documentation is the one source: KEY_DOCS, the README's table, config.yaml's
    comments and the flags' --help all show it."""
    import argparse
    from pathlib import Path

    from mmrl.commands import train
    from mmrl.config import dump_config, key_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert key_table() in readme  # regenerate with: python -m mmrl.config
    dumped = "".join(dump_config(resolve_config(m, "fewshot", "dtd")) for m in ("mmrl", "mmrl++"))
    for key, text in key_docs().items():
        assert text and f"# {text}" in dumped, key
    p = argparse.ArgumentParser()
    train.add_arguments(p)
    helps = {a.dest: a.help for a in p._actions}
    assert helps["shots"] == f"{key_docs()['data.shots']} (config key data.shots)"
    assert helps["root"] == f"{key_docs()['data.root']} (config key data.root)"


def test_light_modules_do_not_import_torch(tmp_path):
    """The vocabulary, the configuration, `mmrl --help` and sweep planning (an ablation's checks and
    `--dry-run` included) start without torch (the report and `mmrl data split` are checked in their
    own tests)."""
    import subprocess
    import sys

    from helpers import make_benchmark_folders

    root = make_benchmark_folders(tmp_path / "data")  # the dry run checks that the data exist
    code = ("import sys, contextlib, io\n"
            "import mmrl.config, mmrl.vocab\n"
            "from mmrl import sweep\n"
            f"cells = sweep.build_grid('fewshot', 'mmrl', {str(tmp_path)!r}, datasets=['textures'])\n"
            "assert len(cells) == 15, len(cells)\n"
            "from mmrl.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    rc = main(['reproduce', 'base2novel', '--method', 'mmrl', '--root', {str(root)!r}, '--output', {str(tmp_path)!r},"
            " '--backbone', 'toy-clip', '--vary', 'method.first_rep_block=2,5', '--dry-run'])\n"
            "assert rc == 0, rc\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
