"""`mmrl report` on folders made by others: hostile names stay text in every output, run folders whose
files disagree or cannot be read are listed (never trusted, never fatal), and the newcomer's rough edges
(an empty or read-only folder, ad-hoc runs, runs that differ in their settings, the ablation tables and
figure)."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from fake_runs import md_row, write_grid, write_run
from mmrl import report
from mmrl.cli import main
from mmrl.vocab import ABLATION_DIR, sweep_run_dir

# a dataset name that is Markdown table syntax, HTML, the report's own markup, a line break and an ANSI escape
EVIL = "folder:pe|ts<img src=x onerror=alert(1)>&amp;`x`**b**\n\x1b[31mred\x00"
EVIL_DIR = "run|<b>`q`\x1b[2J"


def _md_tables(md: str) -> list[list[str]]:
    """The lines of every Markdown table, split at unescaped '|' (a cell may hold '\\|')."""
    return [re.split(r"(?<!\\)\|", ln.strip())[1:-1] for ln in md.splitlines() if ln.startswith("|")]


def test_names_are_escaped_in_markdown_and_html(tmp_path):
    root = tmp_path / "runs"
    write_run(root / EVIL_DIR, "fewshot", "mmrl", "folder:/d/evil", 4, 1, {(EVIL, "all"): 70.0}, name=EVIL)
    write_run(root / "plain", "fewshot", "mmrl", "EuroSAT", 4, 1, {("EuroSAT", "all"): 60.0})
    write_run(root / "dup-of-evil", "fewshot", "mmrl", "folder:/d/evil", 4, 1, {(EVIL, "all"): 71.0}, name=EVIL)
    out = report.write_report(root, plots=False)
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    # no tag from a name reaches either page (a Markdown code span shows its text literally: '<' is text there)
    for text in (re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", md), html):
        assert "<img" not in text and "<b>" not in text
        assert "\x1b" not in text and "\x00" not in text  # control characters are written as escapes
        assert "\\x1b[31mred" in text.replace("\\[", "[")  # (Markdown escapes the '[' too)
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;amp;" in md and "&lt;img src=x onerror=alert(1)&gt;&amp;amp;" in html
    # the table keeps its rows and cells: the '|' and the newline of the name do not split or end one
    rows = _md_tables(md[md.index("### MMRL"):])
    assert len(rows) == 4 and {len(c) for c in rows} == {2}, rows
    evil_row = next(c for c in rows if "folder:pe" in c[0])
    assert evil_row[0].strip().startswith("folder:pe\\|ts") and "\\`x\\`\\*\\*b\\*\\*" in evil_row[0]
    assert "<td>folder:pe|ts&lt;img src=x onerror=alert(1)&gt;&amp;amp;`x`**b**\\n\\x1b[31mred\\x00</td>" in html
    # a path with backticks in a code span: the span is fenced by more backticks than it holds
    assert "``dup-of-evil``" not in md and "`dup-of-evil`" in md
    assert "``run|<b>`q`\\x1b[2J``" in md  # in the notes (not a table): '|' needs no escape


def test_names_with_dollars_are_drawn_as_text(tmp_path):
    """matplotlib reads "$...$" as mathtext and fails on an unknown symbol: a name is drawn as it is."""
    root = tmp_path / "runs"
    name = "folder:a$\\x{$b"
    write_run(root / "r", "base2novel", "mmrl$\\y$", "folder:/d/x", 4, 1, {(name, "base"): 70.0, (name, "new"): 60.0},
              name=name)
    out = report.write_report(root)
    assert (out / "base2novel.png").read_bytes()[:4] == b"\x89PNG"


def test_csv_cells_cannot_start_a_formula(tmp_path):
    root = tmp_path / "runs"
    name = "=HYPERLINK(\"http://x\",\"y\")"
    write_run(root / "a", "fewshot", "@SUM(1)", name, 4, 1, {(name, "all"): 70.0}, name=name)
    write_run(root / "b", "fewshot", "mmrl", "EuroSAT", 4, 1, {("EuroSAT", "all"): 60.0},
              ablation={"method.alpha": -0.5})
    write_run(root / "c", "fewshot", "mmrl", "EuroSAT", 4, 1, {("EuroSAT", "all"): 61.0},
              ablation={"method.alpha": "+A1*2"})
    out = report.write_report(root, plots=False)
    cells = [c for f in out.glob("*.csv") for row in csv.reader(io.StringIO(f.read_text())) for c in row]
    assert cells and not [c for c in cells if c[:1] in ("=", "@", "+", "\t", "\r")]
    assert f"'{name}" in cells and "'@SUM(1)" in cells and "'+A1*2" in cells
    assert "-0.5" in cells  # a real negative number stays a number
    assert [c for c in cells if c.startswith("-")] == ["-0.5"]
    from mmrl.report.document import csv_cell

    assert csv_cell("-12.5") == "-12.5" and csv_cell("-1e-3") == "-1e-3" and csv_cell(-3) == -3
    assert csv_cell("-x") == "'-x" and csv_cell("\tcmd") == "'\tcmd" and csv_cell("\r=1") == "'\r=1"


def test_control_characters_are_escaped_on_the_terminal(tmp_path, capsys):
    root = tmp_path / "out\x1b[31m"
    d = write_run(root / "bad\x1b]0;owned\x07", "fewshot", "mmrl", "EuroSAT", 4, 1, {("EuroSAT", "all"): 60.0})
    (d / "run.json").write_text("{\"method\": ")
    assert main(["report", str(root), "--no-plots"]) == 0
    cap = capsys.readouterr()
    terminal = cap.out + cap.err
    assert "\x1b" not in terminal and "\x07" not in terminal
    assert "out\\x1b[31m" in cap.out and "bad\\x1b]0;owned\\x07: run.json: not valid JSON" in cap.err
    assert main(["report", str(tmp_path / "absent\x1b[2J")]) == 2
    assert "\x1b" not in capsys.readouterr().err


# --------------------------------------------------------------------------- run folders not to trust

def test_inconsistent_run_is_listed_not_counted(tmp_path):
    root = tmp_path / "runs"
    for s in (1, 2):
        write_run(root / f"s{s}", "fewshot", "mmrl", "EuroSAT", 4, s, {("EuroSAT", "all"): 60.0 + s})
    bad = root / "s2"
    info = json.loads((bad / "run.json").read_text())
    info["backbone"] = "ViT-L-14"  # run.json from another run than config.yaml
    (bad / "run.json").write_text(json.dumps(info))
    data = report.collect(root)
    e = data["protocols"]["fewshot"]["methods"]
    assert [c["run"] for c in data["checks"]["inconsistent"]] == ["s2"]
    assert "run.json says backbone 'ViT-L-14', config.yaml says 'ViT-B-16'" in data["checks"]["inconsistent"][0]["reason"]
    assert all(r["state"] != "finished" for r in data["protocols"]["fewshot"]["runs"] if r["run_dir"].endswith("s2"))
    finished = [m for m in e.values() if m["n_finished"]]
    assert [m["datasets"]["EuroSAT"]["4"]["acc"]["mean"] for m in finished] == [61.0]  # s2's 62 is not trusted
    out = report.write_report(root, plots=False)
    md = (out / "report.md").read_text()
    assert "## Run folders to check" in md and "**Inconsistent** (1)" in md
    assert "- `s2`: run.json says backbone 'ViT-L-14', config.yaml says 'ViT-B-16'" in md


def test_inconsistent_adapter_header(tmp_path):
    """The adapter's recorded settings (safetensors header, read without torch) against config.yaml."""
    root = tmp_path / "runs"
    d = write_run(root / "r", "fewshot", "mmrl", "EuroSAT", 4, 1, {("EuroSAT", "all"): 60.0})
    meta = {"info": json.dumps({"backbone": "ViT-B-16", "method": {"name": "mmrl", "n_rep_tokens": 5}})}
    header = json.dumps({"__metadata__": meta}).encode()
    (d / "adapter.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    (d / "config.yaml").write_text((d / "config.yaml").read_text().replace("name: mmrl", "name: mmrl\n  n_rep_tokens: 4"))
    [c] = report.collect(root)["checks"]["inconsistent"]
    assert c["run"] == "r" and "method.n_rep_tokens 5, config.yaml says 4" in c["reason"]


def test_fewer_shots_than_asked_are_shown(tmp_path):
    root = tmp_path / "runs"
    for name, realised in (("short", [3, 16, 16, 5]), ("full", [16, 16])):
        d = write_run(root / name, "fewshot", "mmrl", "EuroSAT", 16, 1 + (name == "full"), {("EuroSAT", "all"): 60.0})
        info = json.loads((d / "run.json").read_text())
        info["shots_realised"] = {"min": min(realised), "max": max(realised), "per_class": realised}
        (d / "run.json").write_text(json.dumps(info))
    data = report.collect(root)
    assert data["checks"]["fewer_shots"] == [{"run": "short", "dataset": "EuroSAT", "shots": 16, "min": 3, "max": 16,
                                              "classes": 4, "classes_short": 2}]
    md = (report.write_report(root, plots=False) / "report.md").read_text()
    assert md_row(md, "`short`", after="Fewer training images than asked") == ["`short`", "EuroSAT", "16", "3–16", "2/4"]
    assert "`full`" not in md


WRONG_TYPES = json.dumps({"method": "mmrl", "protocol": "fewshot", "dataset": ["EuroSAT"], "shots": "many",
                          "seed": [1], "status": {"x": 1}, "ablation": {"a": {"b": [[[1]]]}}, "shots_realised": "x",
                          "finished": None, "source": [1]})


@pytest.mark.parametrize("content", ["[" * 100000, "{\"a\":" * 50000, "{\"method\": \"mmrl\", \"stat", "[1, 2]",
                                     "\"x\"", b"\xff\xfe{}", WRONG_TYPES])
def test_one_bad_file_never_aborts_the_report(tmp_path, content, capsys):
    root = tmp_path / "runs"
    write_run(root / "good", "fewshot", "mmrl", "EuroSAT", 4, 1, {("EuroSAT", "all"): 60.0})
    bad = write_run(root / "bad", "fewshot", "mmrl", "EuroSAT", 4, 2, {("EuroSAT", "all"): 99.0})
    (bad / "run.json").write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["report", str(root), "--no-plots"]) == 0
    data = json.loads((root / "report" / "report.json").read_text())
    assert data["protocols"]["fewshot"]["methods"]["mmrl"]["datasets"]["EuroSAT"]["4"]["acc"]["values"] == [60.0]
    unreadable = data["checks"]["unreadable"]
    err = capsys.readouterr().err
    if content is WRONG_TYPES:  # JSON of the wrong types is read as far as it goes: the run is not placed
        assert unreadable == [] and any("`bad`" in n and "not in the tables" in n for n in data["notes"])
        return
    assert [u["run"] for u in unreadable] == ["bad"] and unreadable[0]["reason"].startswith("run.json: ")
    assert "bad: run.json: " in err and "Traceback" not in err and len(err.splitlines()) == 2


def test_bad_eval_grid_claim_and_config_files(tmp_path):
    """A deeply nested evaluation is left out of its run (named); a grid file of the wrong form does not
    stop the sweep's report; a claim or config.yaml that cannot be read costs only its run."""
    root = tmp_path / "sweep"
    write_grid(root, "fewshot", "mmrl", ["EuroSAT"], [4], [1, 2])
    (root / "fewshot" / "mmrl" / "grid-bad.json").write_text(json.dumps({"datasets": "EuroSAT", "shots": [4]}))
    r1 = write_run(sweep_run_dir(root, "fewshot", "mmrl", "EuroSAT", 4, 1), "fewshot", "mmrl", "EuroSAT", 4, 1,
                   {("EuroSAT", "all"): 60.0, ("DescribableTextures", "all"): 40.0})
    (r1 / "eval" / "DescribableTextures-all.json").write_text("[" * 100000)
    for i, odd in enumerate(({"accuracy": True}, {"accuracy": 1e400}, {"accuracy": 5, "logits_requested": [1]},
                             {"accuracy": 5, "dataset": {"a": 1}, "subsample": 3, "logits": {}})):
        (r1 / "eval" / f"Odd{i}-all.json").write_text(json.dumps(odd).replace("Infinity", "1e400"))
    r2 = write_run(sweep_run_dir(root, "fewshot", "mmrl", "EuroSAT", 4, 2), "fewshot", "mmrl", "EuroSAT", 4, 2,
                   {("EuroSAT", "all"): 62.0})
    (r2 / "config.yaml").write_text("a: &x [1]\nb: *x\n")  # aliases are refused
    r2.with_name("seed_2.claim").write_text("[" * 100000)
    data = report.collect(root)
    reasons = {(u["run"], u["reason"].split(":")[0]) for u in data["checks"]["unreadable"]}
    assert reasons == {("fewshot/mmrl/EuroSAT/shots_4/seed_1", "eval/DescribableTextures-all.json"),
                       ("fewshot/mmrl/EuroSAT/shots_4/seed_2", "config.yaml")}
    assert data["checks"]["bad_grids"] == ["fewshot/mmrl/grid-bad.json"]
    # evaluations of the wrong types: no number to count, except the last, read by its file name
    [rec] = [r for r in data["protocols"]["fewshot"]["runs"] if r["seed"] == 1]
    assert rec["acc"] == {"EuroSAT-all": 60.0, "Odd3-all": 5.0}
    e = data["protocols"]["fewshot"]["methods"]["mmrl"]
    assert e["datasets"]["EuroSAT"]["4"]["acc"]["values"] == [60.0] and (e["n_finished"], e["n_expected"]) == (1, 2)


# --------------------------------------------------------------------------- empty and read-only folders

def test_empty_folder_says_no_runs_on_the_terminal(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"No runs found under {tmp_path / 'empty'}: no folder under it holds run.json")


def test_read_only_folder_gives_one_line_with_the_out_hint(tmp_path, capsys, monkeypatch):
    root = tmp_path / "ro"
    write_run(root / "r", "fewshot", "mmrl", "EuroSAT", 4, 1, {("EuroSAT", "all"): 60.0})
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):  # as on a read-only mount (permission bits do not stop root)
        if self.resolve().is_relative_to(root.resolve()):
            raise PermissionError(1, "Operation not permitted", str(self))
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["report", str(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[Errno" not in err
    assert str(root / "report") in err and "Operation not permitted" in err and "--out" in err
    assert main(["report", str(root), "--out", str(tmp_path / "elsewhere"), "--no-plots"]) == 0
    assert (tmp_path / "elsewhere" / "report.md").is_file()


# --------------------------------------------------------------------------- the newcomer's report (item 9)

def test_one_adhoc_run_is_not_counted_against_the_default_seeds(tmp_path):
    """`mmrl train` without --output puts a run in the sweep layout: without a grid file it expects itself only."""
    root = tmp_path / "runs"
    write_run(sweep_run_dir(root, "base2novel", "mmrl", "EuroSAT", 16, 1), "base2novel", "mmrl", "EuroSAT", 16, 1,
              {("EuroSAT", "base"): 90.0, ("EuroSAT", "new"): 70.0})
    data = report.collect(root)
    sec = data["protocols"]["base2novel"]
    assert (sec["methods"]["mmrl"]["n_finished"], sec["methods"]["mmrl"]["n_expected"]) == (1, 1)
    assert sec["missing"] == []
    md = (report.write_report(root, plots=False) / "report.md").read_text()
    assert "**Runs: 1/1 finished.**" in md and "missing" not in md.split("## Base-to-novel")[1].split("###")[0]
    assert md_row(md, "EuroSAT", after="### MMRL")[1] == "1/1"


def _set_lr(run_dir: Path, lr: float) -> None:
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    cfg["optim"] = {"lr": lr, "epochs": 5}
    cfg["device"] = f"cuda:{int(lr * 1000)}"  # where it ran does not make another experiment
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_runs_with_different_settings_are_kept_apart(tmp_path):
    root = tmp_path / "runs"
    for name, lr, seed, acc in (("a", 0.001, 1, 60.0), ("b", 0.002, 1, 70.0), ("c", 0.002, 2, 72.0),
                                ("copy-of-a", 0.001, 1, 61.0)):
        _set_lr(write_run(root / name, "fewshot", "mmrl", "EuroSAT", 4, seed, {("EuroSAT", "all"): acc}), lr)
    data = report.collect(root)
    methods = data["protocols"]["fewshot"]["methods"]
    assert sorted(methods) == ["mmrl (optim.lr 0.001)", "mmrl (optim.lr 0.002)"]
    low, high = methods["mmrl (optim.lr 0.001)"], methods["mmrl (optim.lr 0.002)"]
    assert low["label"] == "MMRL (optim.lr 0.001)" and high["datasets"]["EuroSAT"]["4"]["acc"]["values"] == [70.0, 72.0]
    assert low["datasets"]["EuroSAT"]["4"]["acc"]["n"] == 1 and (low["n_expected"], high["n_expected"]) == (1, 2)
    # a copy with the same settings is still one run counted once, and said so
    [note] = [n for n in data["notes"] if "not counted" in n]
    assert "`a`" in note and "`copy-of-a`" in note and "0.001" in note
    md = (report.write_report(root, plots=False) / "report.md").read_text()
    assert "### MMRL (optim.lr 0.001)" in md and "### MMRL (optim.lr 0.002)" in md


@pytest.fixture
def alpha_study(tmp_path):
    """A one-key ablation whose values differ by 0.15 points per step, with seed noise of about ±1 point."""
    root = tmp_path / "sweep"
    noise = {1: -0.8, 2: 0.5, 3: 0.3}
    for i, a in enumerate((0.5, 0.7, 0.9)):
        base = root / ABLATION_DIR / f"alpha{a}"
        write_grid(base, "base2novel", "mmrl", ["folder:pets"], [16], [1, 2, 3], values={"method.alpha": a},
                   defaults={"folder:/d/pets": {"method.alpha": 0.7}})
        for s in (1, 2, 3):
            write_run(sweep_run_dir(base, "base2novel", "mmrl", "folder_pets", 16, s), "base2novel", "mmrl",
                      "folder:/d/pets", 16, s, {("folder:pets", "base"): 90.0 + 0.15 * i + noise[s],
                                                ("folder:pets", "new"): 70.0 + 0.15 * i + noise[s]},
                      name="folder:pets", ablation={"method.alpha": a})
    return root


def test_ablation_bold_marks_the_default_only_and_no_tables_above(alpha_study):
    md = (report.write_report(alpha_study, plots=False) / "report.md").read_text()
    table = md[md.index("#### α (method.alpha)"):]
    assert "**Bold**: the default, α = 0.7." in table
    assert md_row(table, "**0.7 (default)**")[3].startswith("**")
    assert not md_row(table, "0.5")[3].startswith("**") and not md_row(table, "0.9")[3].startswith("**")
    assert "protocol tables above" not in md and "this report has none" in md  # ablation runs only


def test_benchmark_average_table_only_with_benchmark_datasets(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "pets", "base2novel", "mmrl", "folder:/d/pets", 4, 1,
              {("folder:pets", "base"): 80.0, ("folder:pets", "new"): 60.0}, name="folder:pets")
    md = (report.write_report(root, plots=False) / "report.md").read_text()
    assert "average vs published" not in md and "Published sources" in md
    write_run(root / "euro", "base2novel", "mmrl", "EuroSAT", 4, 1, {("EuroSAT", "base"): 90.0, ("EuroSAT", "new"): 70.0})
    md = (report.write_report(root, plots=False) / "report.md").read_text()
    assert md_row(md, "MMRL (1/11 datasets)", after="### 11-dataset average vs published")[1:4] == \
        ["90.00", "70.00", "78.75"]


def test_ablation_figure_draws_the_seed_spread_without_magnifying_noise(alpha_study, tmp_path):
    from matplotlib.collections import PolyCollection

    from mmrl.report.plotting import Line, category_lines, new_figure
    from mmrl.vocab import harmonic_mean

    [st] = report.collect(alpha_study)["ablations"]
    [t] = st["tables"]
    noise = {1: -0.8, 2: 0.5, 3: 0.3}
    for i, row in enumerate(t["rows"]):  # each seed's own metric: the spread the figure draws
        assert row["seed_values"] == pytest.approx(
            {str(s): harmonic_mean(90.0 + 0.15 * i + e, 70.0 + 0.15 * i + e) for s, e in noise.items()}, abs=1e-9)
    out = report.write_report(alpha_study, out=tmp_path / "rep")
    assert (out / t["figure"]).read_bytes()[:4] == b"\x89PNG"
    # the figure's axes: 0.3 points of difference keep a span of at least 2 points; the seed band is drawn
    ax = new_figure(6, 4).subplots()
    category_lines(ax, ["0.5", "0.7", "0.9"], [Line("average", [78.75, 78.9, 79.05], "#000000",
                                                    spread=[(78.0, 79.3), None, (78.2, 79.6)])],
                   xlabel="α", ylabel="HM (%)", min_span=2.0)
    lo, hi = ax.get_ylim()
    assert hi - lo >= 2.0 and lo <= 78.0 and hi >= 79.6
    assert any(isinstance(c, PolyCollection) for c in ax.collections)
