"""Decoupled inference: the same finished runs under fused, class-token-only and
representation-token-only logits, beside the protocol's own choice (the paper's decoupled-inference
ablation, without retraining).

The numbers of a logit kind come from a *view* of a series whose runs' evaluations are replaced by
that kind's: the explicit evaluation (``eval/<slug>-<subsample>-<kind>.json``, `mmrl eval --logits
KIND`), else the protocol's own evaluation when it used that kind (a sweep does not repeat it), else
none (the cell reads "missing", never 0). The view is summarised by the protocol module and condensed
by its ``ablation_row``, so the columns and averages are the protocol's (base-to-novel: Base / Novel
/ HM averaged over the datasets). Only non-ablation runs, and only series with at least one explicit
evaluation, are shown.
"""
from __future__ import annotations

import dataclasses

from mmrl.report.ablation import cell_text, row_of, wide_csv
from mmrl.report.document import Block, Heading, Table, Text
from mmrl.report.group import Series
from mmrl.report.protocols import ProtocolModule
from mmrl.report.scan import AUTO, Run
from mmrl.vocab import LOGIT_KINDS, LOGIT_NAMES

TITLE = "Decoupled inference"
CSV_FILE = "decoupled.csv"
ROWS = (*LOGIT_KINDS, AUTO)  # table order: the three kinds, then the protocol's choice
ROW_NAMES = {**LOGIT_NAMES, AUTO: "protocol's choice (main table)"}


def _run_view(run: Run, kind: str) -> Run:
    """The run with its protocol evaluations replaced by those with logits ``kind`` (Run.eval_with)."""
    pairs = {(e.dataset, e.subsample) for e in run.evals.values()} | {(d, s) for d, s, _ in run.logit_evals}
    evals = {}
    for d, s in sorted(pairs):
        e = run.eval_with(d, s, kind)
        if e is not None:
            evals[e.key] = e
    return dataclasses.replace(run, evals=evals)


def view(series: Series, kind: str) -> Series:
    """The series as if its runs had been evaluated with logits ``kind`` (``auto``: the series itself)."""
    if kind == AUTO:
        return series
    return dataclasses.replace(series, runs=[_run_view(r, kind) if r.state == "finished" else r for r in series.runs])


def rows_for(series: Series, proto: ProtocolModule) -> dict | None:
    """The series' decoupled-inference entry (report.json ``decoupled[<protocol>][<series key>]``), or
    None when none of its finished runs has an explicit evaluation. Runs counted: finished ones."""
    finished = dataclasses.replace(series, runs=series.finished())
    if not any(r.logit_evals for r in finished.runs):
        return None
    rows = {kind: row_of(proto, view(finished, kind)) for kind in ROWS}
    return {"label": series.label, "method": series.method, "grid": series.grid(), "rows": rows}


def document(sections: dict[str, dict], protocol_titles: dict[str, str]) -> list[Block]:
    """The "Decoupled inference" section (``sections``: protocol -> series key -> rows_for entry)."""
    if not sections:
        return []
    out: list[Block] = [
        Heading(2, TITLE),
        Text("The same finished runs evaluated with explicitly chosen logits (`mmrl eval RUN --logits "
             "fused|class|rep`): **fused** (the α-blend of class-token and representation-token logits), "
             "**class token only**, **representation tokens only**, and the protocol's own choice (fused on the "
             "classes the model was trained on, class token elsewhere: the main table). A value is the explicit "
             "evaluation, else the protocol's own when it used that kind. Averages as the protocol table's "
             "(mean over seeds, then over the datasets: the benchmark datasets, or every dataset when none is "
             "one); accuracy in %. '(n/m)': only n of the m finished runs have every evaluation the row needs; "
             "'missing': none has."),
    ]
    for protocol, series in sections.items():
        for e in series.values():
            rows = e["rows"]
            first = next(iter(rows.values()))
            columns = list(dict.fromkeys(c for r in rows.values() for c in r["columns"]))
            body = [[ROW_NAMES[k], *[cell_text(r, c, c == first["metric"]) for c in columns],
                     f"{r['runs_done']}/{r['runs_expected']}"] for k, r in rows.items()]
            out.append(Heading(3, f"{e['label']}, {protocol_titles.get(protocol, protocol)}"))
            if first.get("note"):
                out.append(Text(first["note"] + "."))
            out.append(Table(["Logits", *columns, "Runs"], body))
    return out


def to_csv(sections: dict[str, dict]) -> str:
    """decoupled.csv: one row per (protocol, series, logits) with the protocol's columns and the metric
    per dataset."""
    records = [([protocol, key, kind], r) for protocol, series in sections.items() for key, e in series.items()
               for kind, r in e["rows"].items()]
    return wide_csv(["protocol", "series", "logits"], records)
