"""The project carries its own reference: nothing cites a folder outside the repository, and every
cited page of docs/ (and section anchor) exists.

The method and the protocols are stated in docs/method.md and docs/protocols.md. A citation of a
folder beside the checkout (a development snapshot of a specification, say) would point readers of
a clone at nothing; these tests fail on any such mention and on any citation of a docs page or
section that is not there. The forbidden strings are assembled from pieces below, so this file
never matches itself.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("src", "docs", "tests", "examples", "benchmarks", "README.md")
CITING = ("src", "docs", "tests", "examples", "benchmarks", "README.md")

_SPEC_DIR = "shared" + "/" + "spec"
_UP_SHARED = ".." + "/" + "shared"
FORBIDDEN = (_SPEC_DIR, _UP_SHARED)

# "docs/<name>.md" with an optional "#anchor", as cited in code, comments, YAML and Markdown
DOC_CITATION = re.compile(r"(?<![\w./-])docs/([A-Za-z0-9_.-]+?\.md)(?:#([A-Za-z0-9_-]+))?")
# Markdown links inside docs/ and README.md: [text](target.md#anchor) or [text](#anchor)
MD_LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")
# the names the external specification used, cited without the docs/ folder (ambiguous outside docs/)
BARE_NAMES = re.compile(r"(?<![\w/.-])(method|protocols|backbones)" + re.escape(".md"))


def _text_files(entries=SCANNED):
    """(path, text) of every text file under the scanned folders (binary files skipped)."""
    for entry in entries:
        top = REPO / entry
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for p in paths:
            if "__pycache__" in p.parts or p.suffix in (".pyc", ".safetensors", ".png", ".jpg", ".pt", ".onnx"):
                continue
            data = p.read_bytes()
            if b"\0" in data:
                continue
            try:
                yield p, data.decode("utf-8")
            except UnicodeDecodeError:
                continue


def _where(path: Path, text: str, pos: int) -> str:
    return f"{path.relative_to(REPO)}:{text.count(chr(10), 0, pos) + 1}"


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (fenced code skipped): lower case,
    characters other than letters, digits, '_', '-' and spaces dropped, spaces -> '-'; a repeated
    slug gets '-1', '-2', ..."""
    out: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_github_anchors_follow_githubs_rule():
    md = "# The 15 datasets\n## MMRL++: shared weight (SRRA)\n```\n# not a heading\n```\n## Per dataset\n## Per dataset\n"
    assert github_anchors(md) == {"the-15-datasets", "mmrl-shared-weight-srra", "per-dataset", "per-dataset-1"}


def test_no_file_cites_a_folder_outside_the_repository():
    hits = []
    for path, text in _text_files():
        for needle in FORBIDDEN:
            for m in re.finditer(re.escape(needle), text):
                hits.append(f"{_where(path, text, m.start())}: {needle!r}")
    assert not hits, ("these files cite a folder that is not part of the repository; cite docs/method.md or "
                      "docs/protocols.md (their sections by #anchor) instead:\n" + "\n".join(hits))


def test_the_project_carries_its_own_reference():
    for name, must in (("method", ("Decoupled inference", "Training loss", "Other tower families")),
                       ("protocols", ("Few-shot sampling", "Hyperparameters", "Protocols"))):
        name += ".md"
        page = REPO / "docs" / name
        assert page.is_file(), f"docs/{name} is missing"
        text = page.read_text(encoding="utf-8")
        for heading in must:
            assert re.search(rf"^#+ {re.escape(heading)}\s*$", text, re.M), f"docs/{name}: no section {heading!r}"


def test_every_cited_docs_page_and_section_exists():
    anchors: dict[Path, set[str]] = {}

    def anchors_of(page: Path) -> set[str]:
        if page not in anchors:
            anchors[page] = github_anchors(page.read_text(encoding="utf-8"))
        return anchors[page]

    bad = []
    for path, text in _text_files(CITING):
        for m in DOC_CITATION.finditer(text):
            page, anchor = REPO / "docs" / m.group(1), m.group(2)
            if not page.is_file():
                bad.append(f"{_where(path, text, m.start())}: {m.group(0)} (no such file)")
            elif anchor and anchor not in anchors_of(page):
                bad.append(f"{_where(path, text, m.start())}: {m.group(0)} (no section with that anchor)")
        if path.suffix != ".md":
            continue
        for m in MD_LINK.finditer(text):
            target, anchor = m.group(1), m.group(2)
            if re.match(r"^[a-z]+:", target) or (target and not target.endswith(".md")):
                continue  # web links, images and other files
            page = path if not target else (path.parent / target)
            if not page.is_file():
                bad.append(f"{_where(path, text, m.start())}: link to {target} (no such file)")
            elif anchor and anchor not in anchors_of(page.resolve()):
                bad.append(f"{_where(path, text, m.start())}: link to {target or path.name}#{anchor} "
                           "(no section with that anchor)")
    assert not bad, "citations of docs pages or sections that do not exist:\n" + "\n".join(bad)


@pytest.mark.parametrize("entry", ["src", "tests", "examples", "benchmarks"])
def test_code_cites_docs_pages_with_their_folder(entry):
    """Outside docs/, a page name without its folder names no file; cite it as docs/<name>.md
    (the check above then proves that it exists)."""
    bad = [f"{_where(p, t, m.start())}: {m.group(0)}" for p, t in _text_files((entry,)) for m in BARE_NAMES.finditer(t)]
    assert not bad, "cite these pages as docs/<name>.md:\n" + "\n".join(bad)
