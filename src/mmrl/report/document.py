"""The report as a list of blocks, written as Markdown (report.md) or as one self-contained HTML
page (report.html: the same tables, the plots inlined as base64 PNG), and how numbers are written.

Inline markup inside texts and table cells: ``**bold**``, ```code``` and ``\\X`` for a literal X,
nothing else; names from files go in through :func:`esc` (see "Inline markup" below).
"""
from __future__ import annotations

import base64
import csv
import html
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

from mmrl.errors import printable

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


# A spreadsheet opening a CSV file runs a cell starting with one of these as a formula
# ("=HYPERLINK(...)", "@SUM(...)", "-2+3"): such a cell from a name is written behind an apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: object) -> object:
    """A CSV cell that no spreadsheet reads as a formula: numbers (negative ones too) as they are, a
    text starting with = + - @ tab or CR with a leading apostrophe."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class _SafeWriter:
    def __init__(self, buf):
        self._w = csv.writer(buf, lineterminator="\n")

    def writerow(self, row: Iterable[object]) -> None:
        self._w.writerow([csv_cell(c) for c in row])


def csv_writer(buf) -> _SafeWriter:
    """``csv.writer(buf)`` (one line per row) whose cells go through :func:`csv_cell`: every CSV file of
    the report is written with it."""
    return _SafeWriter(buf)


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


# ----------------------------------------------------------------------------------------------
# Inline markup
# ----------------------------------------------------------------------------------------------
# Texts, headings and table cells may hold ``**bold**``, ```code``` and ``\X`` (the character X itself).
# A name, path or value from a file is put into markup through esc(), so that its own ``*``, backticks
# and backslashes stay characters; everything else a name may hold (``|``, ``<``, ``&``, ``[``, a newline,
# an ANSI escape) is escaped by the writers below for their format, whoever built the text.

_SPECIAL = re.compile(r"([\\`*])")
_INLINE = re.compile(r"\\(.)|`((?:\\.|[^`\\])+)`|\*\*((?:\\.|[^\\*]|\*(?!\*))+)\*\*", re.S)
_UNESCAPE = re.compile(r"\\(.)", re.S)


def esc(text: object) -> str:
    """``text`` as literal text in the inline markup (its ``*``, backticks and backslashes escaped)."""
    return _SPECIAL.sub(r"\\\1", str(text))


def escaped(obj: object, markup: frozenset[str] = frozenset({"notes", "text"})) -> object:
    """A copy of report data (report.json's form) with every string escaped by :func:`esc`, dictionary
    keys too (dataset names are keys), for building the document from it. The values of the fields
    named in ``markup`` are markup already (built with esc() around the names they hold) and kept."""
    if isinstance(obj, str):
        return esc(obj)
    if isinstance(obj, dict):
        return {(esc(k) if isinstance(k, str) else k):
                (v if k in markup and isinstance(v, (str, list)) else escaped(v, markup)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [escaped(v, markup) for v in obj]
    return obj


def tokens(text: str) -> list[tuple[str, str]]:
    """The inline markup of ``text`` as (kind, literal text) pieces, kind "text", "bold" or "code"; an
    unmatched ``**`` or backtick is text."""
    out: list[tuple[str, str]] = []

    def add(kind: str, t: str) -> None:
        if out and out[-1][0] == kind == "text":
            out[-1] = ("text", out[-1][1] + t)
        elif t:
            out.append((kind, t))

    pos = 0
    for m in _INLINE.finditer(text):
        add("text", text[pos:m.start()])
        if m.group(1) is not None:
            add("text", m.group(1))
        elif m.group(2) is not None:
            add("code", _UNESCAPE.sub(r"\1", m.group(2)))
        else:
            add("bold", _UNESCAPE.sub(r"\1", m.group(3)))
        pos = m.end()
    add("text", text[pos:])
    return out


def plain(text: str) -> str:
    """The literal text of markup (for an image's alt text)."""
    return "".join(t for _, t in tokens(text))


_MD_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}  # raw HTML is never passed through


def _md_text(t: str, in_table: bool) -> str:
    out = []
    for i, ch in enumerate(t):
        if ch in _MD_ENTITIES:
            out.append(_MD_ENTITIES[ch])
        elif ch in "\\`*[]~" or (ch == "|" and in_table):
            out.append("\\" + ch)
        elif ch == "_" and not (0 < i < len(t) - 1 and t[i - 1].isalnum() and t[i + 1].isalnum()):
            out.append("\\_")  # an underscore inside a word (n_rep_tokens) never emphasises: kept bare
        else:
            out.append(ch)
    return "".join(out)


def _md_code(t: str, in_table: bool) -> str:
    """A Markdown code span holding ``t`` literally: fenced by more backticks than it holds in a row."""
    if in_table:  # GFM splits cells on '|' even inside a code span, and reads "\|" there as '|'
        t = t.replace("|", "\\|")
    fence = "`" * (max((len(r) for r in re.findall(r"`+", t)), default=0) + 1)
    pad = " " if t.startswith("`") or t.endswith("`") else ""
    return f"{fence}{pad}{t}{pad}{fence}"


def inline_markdown(text: str, in_table: bool = False) -> str:
    """Markup as Markdown, every character of the texts escaped as needed (control characters written
    as escapes by :func:`mmrl.errors.printable`)."""
    out = []
    for kind, t in tokens(text):
        t = printable(t)
        if kind == "code":
            out.append(_md_code(t, in_table))
        elif kind == "bold":
            out.append(f"**{_md_text(t, in_table)}**")
        else:
            out.append(_md_text(t, in_table))
    line = "".join(out)
    return "\\" + line if line.startswith(("#", "+", "-")) and not in_table else line  # not a heading/list


def to_markdown(blocks: Iterable[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + inline_markdown(b.text), ""]
        elif isinstance(b, Text):
            out += [inline_markdown(b.text), ""]
        elif isinstance(b, Table):
            cells = [inline_markdown(str(c), in_table=True) for c in b.header]
            lines = ["| " + " | ".join(cells) + " |", "|" + "|".join([" --- "] * len(b.header)) + "|"]
            lines += ["| " + " | ".join(inline_markdown(str(c), in_table=True) for c in row) + " |" for row in b.rows]
            out += lines + [""]
        elif isinstance(b, Figure):
            out += [f"![{_md_text(printable(plain(b.alt)), False)}]({urllib.parse.quote(b.file)})", ""]
        elif isinstance(b, Bullets):
            out += [f"- {inline_markdown(item)}" for item in b.items] + [""]
    return "\n".join(out) + "\n" if out else "\n"


def _inline_html(text: str) -> str:
    """Markup as HTML: every text escaped, **bold** and `code` as tags."""
    out = []
    for kind, t in tokens(text):
        t = html.escape(printable(t))
        out.append(f"<strong>{t}</strong>" if kind == "bold" else f"<code>{t}</code>" if kind == "code" else t)
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
                alt = html.escape(printable(plain(b.alt)))
                body.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"></figure>')
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(printable(title))}</title><style>{_CSS}</style></head>\n<body>\n"
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
