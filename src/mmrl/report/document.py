"""The report as a list of blocks, written as Markdown (report.md) or as one self-contained HTML
page (report.html: the same tables, the plots inlined as base64 PNG), and how numbers are written.

Inline markup inside texts and table cells: ``**bold**`` and ```code```, nothing else.
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

DASH = "—"


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------

def num(x: float | None) -> str:
    """Two decimals, or a dash when there is no number."""
    return DASH if x is None else f"{x:.2f}"


def csv_num(x: float | None) -> str:
    """A number in a CSV file: every digit (repr), or empty when there is none."""
    return "" if x is None else repr(float(x))


def mean_std(s: dict | None, expected: int | None = None, show_n: bool = False, empty: str = "missing") -> str:
    """'mean ± std' of a Stat dict ('mean' alone for one value), with '(n/expected)' when fewer seeds
    than expected; ``empty`` when there is no value."""
    if not s:
        return empty
    txt = f"{s['mean']:.2f}" if s.get("std") is None or s.get("n", 0) < 2 else f"{s['mean']:.2f} ± {s['std']:.2f}"
    if show_n and expected is not None and s.get("n", 0) < expected:
        txt += f" ({s['n']}/{expected})"
    return txt


# ----------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------

@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Text:
    text: str


@dataclass
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass
class Figure:
    file: str   # a PNG beside the report
    alt: str


@dataclass
class Bullets:
    items: Sequence[str]


Block = Union[Heading, Text, Table, Figure, Bullets]


def to_markdown(blocks: Iterable[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            out += [b.text, ""]
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(b.header) + " |", "|" + "|".join([" --- "] * len(b.header)) + "|"]
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in b.rows]
            out += lines + [""]
        elif isinstance(b, Figure):
            out += [f"![{b.alt}]({b.file})", ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
    return "\n".join(out) + "\n" if out else "\n"


_INLINE = re.compile(r"\*\*(.+?)\*\*|`([^`]+)`")


def _inline_html(text: str) -> str:
    """Escape ``text`` for HTML, turning **bold** and `code` into tags."""
    out, pos = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        out.append(f"<strong>{html.escape(m.group(1))}</strong>" if m.group(1) is not None
                   else f"<code>{html.escape(m.group(2))}</code>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
  padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #ddd;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;border:1px solid #eee;margin:.5em 0 1.5em}
code{background:#f3f3f3;padding:0 .25em;border-radius:3px;font-size:.9em}
.missing{color:#a33}
"""


def to_html(blocks: Iterable[Block], title: str, image_dir: Path) -> str:
    """One HTML page holding everything: images are read from ``image_dir`` and inlined
    (a Figure whose file is absent is left out)."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            body.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
            rows = []
            for row in b.rows:
                cells = "".join(f'<td class="missing">{_inline_html(str(c))}</td>' if str(c) == "missing"
                                else f"<td>{_inline_html(str(c))}</td>" for c in row)
                rows.append(f"<tr>{cells}</tr>")
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        elif isinstance(b, Figure):
            p = image_dir / b.file
            if p.is_file():
                data = base64.b64encode(p.read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(b.alt)}" src="data:image/png;base64,{data}"></figure>')
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def missing_blocks(entries: Sequence[dict]) -> list[Block]:
    """The runs not there yet (:func:`mmrl.report.group.missing_entries`) as a caption and a list:
    each run with its state, detail and log; nothing when none is missing."""
    if not entries:
        return []
    items = []
    for e in entries:
        extra = f" — {e['detail']}" if e.get("detail") else ""
        log = f" (log: `{e['log']}`)" if e.get("log") else ""
        items.append(f"`{e['run']}`: {e['state']}{extra}{log}")
    return [Text(f"Missing or unfinished ({len(entries)}):"), Bullets(items)]
