"""YAML from others cannot exhaust memory or flood the terminal: every YAML mmrl reads (a --config
file, a run folder's config.yaml, a --set value) refuses anchors and aliases and files over 1 MB,
and every error line echoes values cut short.

The payloads are built here: a "billion laughs" config (nine nested anchors, a few hundred bytes
standing for 9**9 items, whose echo in an error line alone is gigabytes), a config with one long
plain value (no alias: the echo must still be short) and a config over the size cap. The commands
run in ONE child process whose address space is capped a little above what it needs after
importing mmrl and torch, so a refusal that came only after expanding a bomb fails the test (the
child runs out of memory) instead of exhausting the machine.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmrl.config import YAML_MAX_BYTES, ConfigError, parse_override, parse_yaml, read_yaml
from mmrl.errors import error_line

LEVELS = 9  # 9**9 = 387M leaves: ~2 GB to print, far more as Python objects


def alias_bomb(levels: int = LEVELS) -> str:
    """A config whose data.template is a list of nested anchors, each level nine aliases of the last."""
    names = "abcdefghijklmnop"[:levels]
    items = ["  - &a [x, x, x, x, x, x, x, x, x]"]
    items += [f"  - &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    return "data:\n  template:\n" + "\n".join(items) + "\n"


def long_value(n_items: int = 20_000) -> str:
    """A config of ~200 KB whose one value is a long list (no aliases)."""
    text = "data:\n  template: [" + ", ".join(["xxxxxxxx"] * n_items) + "]\n"
    assert len(text) < YAML_MAX_BYTES
    return text


def oversized() -> str:
    """A config over the size cap (a comment makes most of it)."""
    return "# " + "x" * YAML_MAX_BYTES + "\nseed: 1\n"


RUNNER = r"""
import contextlib, io, json, resource, sys
import mmrl.cli, mmrl.classifier, mmrl.engine.evaluator, mmrl.engine.export  # torch and all the commands need
from mmrl.cli import main

def vm_size():
    try:
        line = next(ln for ln in open("/proc/self/status") if ln.startswith("VmSize:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024

size = vm_size()
if size is not None:  # room for the work a refusal needs, not for expanding a bomb
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), hard))
out = {}
for name, argv in json.loads(open(sys.argv[1]).read()).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except BaseException as e:  # MemoryError or SystemExit: reported, the next case still runs
            rc = f"raised {type(e).__name__}"
    out[name] = {"rc": rc, "err": err.getvalue()[:5000], "err_chars": len(err.getvalue())}
open(sys.argv[2], "w").write(json.dumps(out))
"""

TRAIN = ["train", "--method", "mmrl", "--protocol", "fewshot", "--dataset", "dtd"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case run through mmrl.cli.main in the memory-capped child: {case: {rc, err, err_chars}}."""
    base = tmp_path_factory.mktemp("hostile_yaml")
    files = {"bomb": alias_bomb(), "long": long_value(), "big": oversized()}
    cases: dict[str, list[str]] = {}
    for kind, text in files.items():
        config = base / f"{kind}.yaml"
        config.write_text(text)
        run = base / f"run-{kind}"  # a run folder received from someone else: its config.yaml is the payload
        run.mkdir()
        (run / "config.yaml").write_text(text)
        cases[f"{kind}|train --config"] = TRAIN + ["--config", str(config)]
        cases[f"{kind}|reproduce --config"] = ["reproduce", "fewshot", "--method", "mmrl", "--root", str(base),
                                               "--output", str(base / f"sweep-{kind}"), "--config", str(config),
                                               "--dry-run"]
        cases[f"{kind}|eval"] = ["eval", str(run), "--dataset", "dtd", "--root", str(base)]
        cases[f"{kind}|predict"] = ["predict", str(run), str(base / "img.png"), "--classes", "a,b"]
        cases[f"{kind}|export"] = ["export", str(run), "-o", str(base / f"{kind}.onnx")]
        cases[f"{kind}|train --resume"] = ["train", "--resume", str(run)]
    # a --set value is YAML too: the same bomb in flow style is taken as plain text, and echoed short
    flow = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(
        f"&{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")) + "]"
    cases["bomb|--set"] = TRAIN + ["--set", f"optim.betas={flow}"]
    spec = base / "cases.json"
    spec.write_text(json.dumps(cases))
    out = base / "out.json"
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(spec), str(out)], capture_output=True, text=True,
                          cwd=str(base), timeout=600)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    res = json.loads(out.read_text())
    return {"base": base, "cases": cases, "res": res}


COMMANDS = ["train --config", "reproduce --config", "eval", "predict", "export", "train --resume"]


def _the_line(r: dict) -> str:
    assert isinstance(r["rc"], int) and r["rc"] != 0, r
    lines = [ln for ln in r["err"].splitlines() if ln.strip()]
    assert r["err_chars"] < 1000 and len(lines) == 1 and "Traceback" not in r["err"], r["err"][:2000]
    assert lines[0].startswith(("mmrl: error: ", "mmrl reproduce: error: ")) and len(lines[0]) < 300, lines[0]
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_alias_bomb_refused_before_it_expands(results, command):
    line = _the_line(results["res"][f"bomb|{command}"])
    where = "bomb.yaml" if command.endswith("--config") else str(Path("run-bomb") / "config.yaml")
    assert where in line and "anchors and aliases" in line and "line 3" in line, line


@pytest.mark.parametrize("command", COMMANDS)
def test_long_value_is_echoed_short(results, command):
    line = _the_line(results["res"][f"long|{command}"])
    where = "long.yaml" if command.endswith("--config") else str(Path("run-long") / "config.yaml")
    assert where in line and "data.template" in line and "expected a string" in line, line


@pytest.mark.parametrize("command", COMMANDS)
def test_oversized_config_refused_unread(results, command):
    line = _the_line(results["res"][f"big|{command}"])
    where = "big.yaml" if command.endswith("--config") else str(Path("run-big") / "config.yaml")
    assert where in line and "1 MB" in line, line


def test_alias_bomb_in_a_set_value_is_text(results):
    line = _the_line(results["res"]["bomb|--set"])
    assert "--set optim.betas" in line and "expected a list" in line, line


# ------------------------------------------------------------------ the reader itself, in this process
def test_parse_yaml_refuses_any_anchor_or_alias_and_keeps_plain_yaml():
    assert parse_yaml("a: [1, 2]\nb: {c: x}\n", "f.yaml") == {"a": [1, 2], "b": {"c": "x"}}
    for text in ("a: &x 1\n", "a: &x 1\nb: *x\n", "b: *undefined\n", "a: &x {k: 1}\nb: {<<: *x}\n"):
        with pytest.raises(ConfigError, match=r"^f\.yaml, line \d+, column \d+: YAML anchors and aliases"):
            parse_yaml(text, "f.yaml")
    # a template that starts like an alias or an anchor stays the text it is
    assert parse_override("data.template=*{} photo") == ("data.template", "*{} photo")
    assert parse_override("data.template=&a {} photo") == ("data.template", "&a {} photo")


@pytest.mark.parametrize("text, words", [
    ("[" * 5000, "nested too deeply"),                          # the composer recurses per level
    ("n: " + "9" * 5000 + "\n", "not valid YAML"),             # beyond Python's int-from-text limit
    ("a: !!python/object/apply:os.system [x]\n", "not valid YAML"),
    ("a: [1, 2\n", "not valid YAML"),
])
def test_parse_yaml_other_hostile_inputs_are_one_short_line(text, words):
    with pytest.raises(ConfigError) as e:
        parse_yaml(text, "f.yaml")
    line = error_line(e.value)
    assert line.startswith("f.yaml") and words in line and len(line) < 300, line


def test_read_yaml_names_the_file(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"a: \xe9t\xe9\n")
    with pytest.raises(ConfigError, match="latin1.yaml: not UTF-8"):
        read_yaml(bad)
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "absent.yaml")
