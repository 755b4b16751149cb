"""Build the report: scan the folder, group and summarise each protocol through the dispatch table,
then the ablation studies (:mod:`~mmrl.report.ablation`) and the decoupled-inference tables
(:mod:`~mmrl.report.decoupled`), and write report.json, report.md, report.html, runs.csv,
<protocol>.csv, ablation.csv, decoupled.csv and the figures.

Statistics: mean over seeds and the population standard deviation (numpy's default, as
CoOp's parse_test_res.py); see the protocol modules for what each table holds.
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Sequence

from mmrl.fileio import check_writable_dir, write_json_atomic, write_text_atomic
from mmrl.methods import names as method_names
from mmrl.report import ablation, compute, decoupled, robustness
from mmrl.report.document import (DASH, Block, Bullets, Heading, Table, Text, csv_writer, esc, escaped, mean_std,
                                  missing_blocks)
from mmrl.report.group import Series, dataset_order, missing_entries, series_of
from mmrl.report.protocols import PROTOCOLS
from mmrl.report.published import load_published
from mmrl.report.scan import AUTO, ZEROSHOT, Found, Run, scan
from mmrl.report.stats import stat_dict
from mmrl.vocab import SUBSAMPLES

STD_NOTE = "population standard deviation over seeds (numpy default, as CoOp's parse_test_res.py)"


def zeroshot_values(found: Found) -> dict[str, list[float]]:
    """Zero-shot accuracies: "<dataset>-<subsample>" -> values (one per zero-shot run folder)."""
    out: dict[str, list[float]] = {}
    for r in found.runs:
        if r.method == ZEROSHOT and r.state == "finished":
            for key, e in r.evals.items():
                out.setdefault(key, []).append(e.accuracy)
    return out


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _run_record(r: Run, series: Series) -> dict:
    return {"series": series.key, "method": r.method, "dataset": r.name, "shots": r.shots, "seed": r.seed,
            "state": r.state, "run_dir": str(r.path), "acc": {k: e.accuracy for k, e in r.evals.items()},
            "acc_logits": {kind: {f"{d}-{sub}": e.accuracy for (d, sub, k), e in r.logit_evals.items() if k == kind}
                           for kind in sorted({k for _, _, k in r.logit_evals})}}


def collect(output: Path | str, protocols: Sequence[str] | None = None) -> dict:
    """Everything the report shows, as JSON-ready data (this is report.json)."""
    root = Path(output)
    found = scan(root)
    published = load_published()
    zs = zeroshot_values(found)
    # "notes" are markup (names in them through esc()); every other string is plain text
    result: dict = {"version": 1, "output": str(root), "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "std": STD_NOTE, "n_run_folders": len(found.runs) + len(found.unreadable), "protocols": {}, "ablations": [],
                    "decoupled": {}, "notes": []}
    for name, proto in PROTOCOLS.items():
        if protocols and name not in protocols:
            continue
        series = series_of(found, name, proto.SHOTS_IN_TABLE)
        if not series:
            continue
        section: dict = {"methods": {}, "missing": [], "runs": []}
        for s in series:
            entry = {"label": s.label, "method": s.method, "grid": s.grid(), "n_finished": s.n_finished,
                     "n_expected": len(s.runs)}
            entry.update(proto.summarise(s))
            section["methods"][s.key] = entry
            section["missing"] += missing_entries(s, root, proto.required_evals)
            section["runs"] += [_run_record(r, s) for r in s.runs]
            dec = decoupled.rows_for(s, proto)
            if dec is not None:
                result["decoupled"].setdefault(name, {})[s.key] = dec
            result["notes"] += [f"`{esc(_rel(dup.path, root))}` is another run of `{esc(_rel(kept.path, root))}` "
                                f"({esc(s.label)}, {esc(kept.name)}, {kept.shots} shots, seed {kept.seed}): not counted"
                                for dup, kept in s.duplicates]
        z = proto.zeroshot(zs, section["methods"])
        if z:
            section["zeroshot"] = z
        section["published"] = published.get(name) or {}
        result["protocols"][name] = section
    result["ablations"], result["ablation_runs"], dup_notes = ablation.collect(found, protocols)
    result["notes"] += dup_notes
    if zs:
        result["zeroshot"] = {k: stat_dict(v) for k, v in sorted(zs.items())}
    result["robustness"] = robustness.collect(result["ablations"], result.get("zeroshot", {}))
    result["notes"] += [f"`{esc(_rel(Path(p), root))}`: looks like a run folder but names no method; skipped"
                        for p in found.skipped]
    unplaced = [r for r in found.runs if r.method != ZEROSHOT and (r.protocol not in PROTOCOLS or r.name is None
                                                                     or r.shots is None or r.seed is None)]
    result["notes"] += [f"`{esc(_rel(r.path, root))}`: protocol, dataset, shots or seed unknown; not in the tables"
                        for r in unplaced]
    result["checks"] = checks(found)
    result["compute"] = compute.collect(found, protocols)
    return result


def checks(found: Found) -> dict:
    """The run folders the tables do not trust or count in full (report.json ``checks``): ``unreadable``
    (a file of the run cannot be read: run.json or config.yaml -- the run is in no table --, or one
    evaluation -- left out), ``inconsistent`` (config.yaml, run.json and the adapter file disagree: in no
    table), ``fewer_shots`` (classes with fewer training images than the shots asked for, run.json
    ``shots_realised``) and ``bad_grids`` (grid files that cannot be read: their sweep shows what is there)."""
    root = found.root
    unreadable = [{"run": _rel(p, root), "reason": why} for p, why in found.unreadable]
    unreadable += [{"run": _rel(r.path, root), "reason": r.detail} for r in found.runs if r.state == "unreadable"]
    unreadable += [{"run": _rel(r.path, root), "reason": why} for r in found.runs for why in r.problems]
    inconsistent = [{"run": _rel(r.path, root), "reason": r.detail} for r in found.runs if r.state == "inconsistent"]
    fewer = []
    for r in found.runs:
        got = r.shots_realised
        if got is not None and r.shots is not None and got["min"] < r.shots:
            per = got["per_class"]
            fewer.append({"run": _rel(r.path, root), "dataset": r.name, "shots": r.shots, "min": got["min"],
                          "max": got["max"], "classes": len(per) if per else None,
                          "classes_short": sum(n < r.shots for n in per) if per else None})
    return {"unreadable": sorted(unreadable, key=lambda e: e["run"]), "inconsistent": inconsistent,
            "fewer_shots": fewer, "bad_grids": [_rel(p, root) for p in found.bad_grids]}


def checks_blocks(c: dict) -> list[Block]:
    """The "Run folders to check" section (nothing when every run folder could be read and trusted)."""
    if not any(c.get(k) for k in ("unreadable", "inconsistent", "fewer_shots", "bad_grids")):
        return []
    out: list[Block] = [Heading(2, "Run folders to check")]
    if c["unreadable"]:
        out += [Text(f"**Unreadable** ({len(c['unreadable'])}): a run whose run.json or config.yaml cannot be "
                     "read is in no table; an evaluation file that cannot be read is left out of its run."),
                Bullets([f"`{e['run']}`: {e['reason']}" for e in c["unreadable"]])]
    if c["inconsistent"]:
        out += [Text(f"**Inconsistent** ({len(c['inconsistent'])}): config.yaml, run.json and the adapter file "
                     "do not come from one run (edited, or assembled from two runs); not trusted, in no table "
                     "(`mmrl eval`, `predict` and `export` refuse such a folder)."),
                Bullets([f"`{e['run']}`: {e['reason']}" for e in c["inconsistent"]])]
    if c["fewer_shots"]:
        rows = [[f"`{e['run']}`", e["dataset"] or DASH, str(e["shots"]),
                 str(e["min"]) if e["min"] == e["max"] else f"{e['min']}–{e['max']}",
                 DASH if e["classes_short"] is None else f"{e['classes_short']}/{e['classes']}"]
                for e in c["fewer_shots"]]
        out += [Text(f"**Fewer training images than asked** ({len(c['fewer_shots'])}): classes with fewer images "
                     "than the shots asked for train on all they have (run.json `shots_realised`); the tables "
                     "list these runs under the shots asked."),
                Table(["Run", "Dataset", "Shots asked", "Images per class", "Classes with fewer"], rows)]
    if c["bad_grids"]:
        out += [Text(f"**Grid files that cannot be read** ({len(c['bad_grids'])}): their sweep shows the runs "
                     "that are there, nothing is expected."), Bullets([f"`{g}`" for g in c["bad_grids"]])]
    return out


# ----------------------------------------------------------------------------------------------
# The document
# ----------------------------------------------------------------------------------------------

def document(data: dict, figures: dict[str, str], ablation_figures: set[str] = frozenset(),
             compute_figures: set[str] = frozenset(), robustness_figures: set[str] = frozenset()) -> list[Block]:
    """The whole report as blocks; ``figures``: protocol -> figure file written beside the report;
    ``ablation_figures`` / ``robustness_figures``: the ablation / robustness figures written beside it."""
    published = load_published()
    out: list[Block] = [Heading(1, "MMRL report"),
                        Text(f"Runs under `{data['output']}` — generated {data['generated']}. "
                             f"{data['n_run_folders']} run folder(s) found.")]
    if not data["n_run_folders"]:
        out.append(Text("No runs found: no folder under it holds run.json, config.yaml or eval/*.json "
                        "(what `mmrl train`, `mmrl zeroshot`, `mmrl convert-official` and `mmrl reproduce` write)."))
    if data["protocols"] or data.get("ablations"):
        rows = [[PROTOCOLS[p].TITLE, e["label"], f"{e['n_finished']}/{e['n_expected']}"]
                for p, sec in data["protocols"].items() for e in sec["methods"].values()]
        rows += [[f"{PROTOCOLS[st['protocol']].TITLE} (ablation)",
                  f"{st['label']}: {' × '.join(ablation.key_short(k) for k in st['keys'])}",
                  f"{st['n_finished']}/{st['n_expected']}"] for st in data.get("ablations", [])]
        out.append(Table(["Protocol", "Series", "Runs finished"], rows))
    out += checks_blocks(data.get("checks", {}))
    for name, sec in data["protocols"].items():
        out += PROTOCOLS[name].document(sec, published, figures.get(name))
        n_fin = sum(e["n_finished"] for e in sec["methods"].values())
        n_exp = sum(e["n_expected"] for e in sec["methods"].values())
        out.append(Text(f"**Runs: {n_fin}/{n_exp} finished.**"))
        out += missing_blocks(sec["missing"])
    titles = {name: proto.TITLE for name, proto in PROTOCOLS.items()}
    out += ablation.document(data.get("ablations", []), set(ablation_figures), titles, bool(data["protocols"]))
    out += robustness.document(data.get("robustness", []), set(robustness_figures), titles)
    out += decoupled.document(data.get("decoupled", {}), titles)
    out += compute.document(data.get("compute", {}), titles, set(compute_figures))
    if data.get("zeroshot"):
        out += [Heading(2, "CLIP zero-shot"),
                Text("Every zero-shot evaluation found (`mmrl zeroshot`), mean ± std over the runs that "
                     "evaluated it.")]
        by_ds: dict[str, dict[str, dict]] = {}
        for key, s in data["zeroshot"].items():
            d, sub = key.rsplit("-", 1)
            by_ds.setdefault(d, {})[sub] = s
        rows = [[d] + [mean_std(by_ds[d].get(sub), empty=DASH) for sub in SUBSAMPLES]
                + [str(max(s["n"] for s in by_ds[d].values()))] for d in dataset_order(by_ds)]
        out.append(Table(["Dataset", "All classes", "Base classes", "Novel classes", "Runs"], rows))
    if data["notes"]:
        out += [Heading(2, "Notes"), Bullets(data["notes"])]
    return out


def runs_csv(data: dict) -> str:
    """One row per (run, eval file): every number the tables are built from. ``logits``: auto (the
    protocol's own evaluation) or the kind chosen explicitly (fused / class / rep); ``ablation``: the
    run's values of the keys an ablation varies (JSON; empty for other runs)."""
    buf = io.StringIO()
    w = csv_writer(buf)
    w.writerow(["protocol", "method", "dataset", "shots", "seed", "state", "eval", "logits", "accuracy", "run_dir",
                "ablation"])
    records = [(protocol, r) for protocol, sec in data["protocols"].items() for r in sec["runs"]]
    records += [(r["protocol"], r) for r in data.get("ablation_runs", [])]
    for protocol, r in records:
        lead = [protocol, r["method"], r["dataset"], r["shots"], r["seed"], r["state"]]
        point = json.dumps(r["ablation"], sort_keys=True) if r.get("ablation") else ""
        evals = [(key, AUTO, acc) for key, acc in sorted(r["acc"].items())]
        evals += [(key, kind, acc) for kind, per in sorted(r.get("acc_logits", {}).items())
                  for key, acc in sorted(per.items())]
        if not evals:
            w.writerow([*lead, "", "", "", r["run_dir"], point])
        for key, kind, acc in evals:
            w.writerow([*lead, key, kind, repr(acc), r["run_dir"], point])
    return buf.getvalue()


def _series_labels(data: dict) -> list[str]:
    """Every series label of the report, methods in their canonical order (MMRL first)."""
    entries = [e for sec in data["protocols"].values() for e in sec["methods"].values()]
    order = method_names()
    entries.sort(key=lambda e: (order.index(e["method"]) if e["method"] in order else len(order), e["label"]))
    return [e["label"] for e in entries]


WRITE_ELSEWHERE = "write the report elsewhere with `mmrl report DIR --out OTHER_DIR`"


def write_report(output: Path | str, protocols: Sequence[str] | None = None, out: Path | str | None = None,
                 plots: bool = True, hint: str = WRITE_ELSEWHERE) -> Path:
    """Write report.md, report.html, report.json, runs.csv, <protocol>.csv and the figures into ``out``
    (default OUTPUT/report); returns ``out``. :class:`mmrl.errors.NotWritableError` (naming the folder
    and ``hint``) before any work when ``out`` cannot be written."""
    return write_report_data(output, protocols, out, plots, hint)[0]


def write_report_data(output: Path | str, protocols: Sequence[str] | None = None, out: Path | str | None = None,
                      plots: bool = True, hint: str = WRITE_ELSEWHERE) -> tuple[Path, dict]:
    """:func:`write_report`, returning ``(out, the report's data)`` (report.json's content)."""
    from mmrl.report.document import to_html, to_markdown
    from mmrl.report.plotting import series_colors

    output = Path(output)
    out = Path(out) if out is not None else output / "report"
    check_writable_dir(out, hint)  # a read-only run folder: say so and how, before the work
    data = collect(output, protocols)
    published = load_published()
    figures: dict[str, str] = {}
    colors = series_colors(_series_labels(data))
    for name, proto in PROTOCOLS.items():
        target = out / proto.FIGURE
        if plots and name in data["protocols"] and proto.plot(data["protocols"][name], published, target, colors):
            figures[name] = proto.FIGURE
        elif target.exists():
            target.unlink()  # a figure of an earlier report that this one does not have
    titles = {name: proto.TITLE for name, proto in PROTOCOLS.items()}
    ablation_figures = ablation.plot(data["ablations"], out, titles) if plots else set()
    for old in out.glob(f"{ablation.FIGURE_PREFIX}*.png"):
        if old.name not in ablation_figures:
            old.unlink()  # an ablation figure of an earlier report that this one does not have
    robustness_figures = robustness.plot(data["robustness"], out, titles) if plots else set()
    for old in out.glob(f"{robustness.FIGURE_PREFIX}*.png"):
        if old.name not in robustness_figures:
            old.unlink()  # of an earlier report
    compute_figures = compute.plot(data["compute"], out, titles) if plots else set()
    for old in out.glob(f"{compute.FIGURE_PREFIX}*.png"):
        if old.name not in compute_figures:
            old.unlink()  # of an earlier report
    # the document is built from an escaped copy: every name from a file stays literal text in it
    blocks = document(escaped(data), figures, ablation_figures, compute_figures, robustness_figures)
    write_json_atomic(data, out / "report.json")
    write_text_atomic(to_markdown(blocks), out / "report.md")
    write_text_atomic(to_html(blocks, f"MMRL report: {output}", out), out / "report.html")
    write_text_atomic(runs_csv(data), out / "runs.csv")
    for name, sec in data["protocols"].items():
        write_text_atomic(PROTOCOLS[name].to_csv(sec, published), out / f"{name}.csv")
    for present, file, text in ((data["compute"]["runs"], compute.CSV_FILE, lambda _: compute.to_csv(data["compute"])),
                                (data["ablations"], ablation.CSV_FILE, ablation.to_csv),
                                (data["robustness"], robustness.CSV_FILE, robustness.to_csv),
                                (data["decoupled"], decoupled.CSV_FILE, decoupled.to_csv)):
        if present:
            write_text_atomic(text(present), out / file)
        elif (out / file).exists():
            (out / file).unlink()  # of an earlier report
    return out, data
