"""`mmrl backbones`: which of open_clip's pretrained models MMRL accepts, and why not the others.

Every architecture of ``open_clip.list_pretrained()`` is recognised from its parts
(:func:`mmrl.models.backbone.architecture_problem`: built on the meta device, nothing
downloaded, nothing cached); accepted ones work with ``--backbone NAME:TAG``. Refused ones
get one line naming the part the method needs (conv towers: tokens).
"""
from __future__ import annotations

import argparse
import contextlib
import io


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refused", action="store_true", help="list only the refused architectures")
    p.add_argument("--json", action="store_true", help="print JSON: one entry per architecture, and the counts")


def survey() -> dict:
    """``{"architectures": [{name, tags, accepted, reason}], "counts": {...}}`` over open_clip's list."""
    import open_clip

    from mmrl.models.backbone import architecture_problem

    tags: dict[str, list[str]] = {}
    for name, tag in open_clip.list_pretrained():
        tags.setdefault(name, []).append(tag)
    rows = []
    for name in sorted(tags, key=str.lower):
        with contextlib.redirect_stdout(io.StringIO()):  # some builders print
            reason = architecture_problem(name)
        rows.append({"name": name, "tags": tags[name], "accepted": reason is None, "reason": reason})
    ok = [r for r in rows if r["accepted"]]
    counts = {"open_clip": open_clip.__version__,
              "architectures": len(rows), "accepted_architectures": len(ok),
              "pairs": sum(len(r["tags"]) for r in rows), "accepted_pairs": sum(len(r["tags"]) for r in ok)}
    return {"architectures": rows, "counts": counts}


def main(args: argparse.Namespace) -> int:
    from mmrl.fileio import dumps_json

    result = survey()
    rows = [r for r in result["architectures"] if not (args.refused and r["accepted"])]
    if args.json:
        print(dumps_json({"architectures": rows, "counts": result["counts"]}, indent=2))
        return 0
    width = max((len(r["name"]) for r in rows), default=10)
    for r in rows:
        verdict = "accepted" if r["accepted"] else f"refused: {r['reason']}"
        print(f"{r['name']:<{width}}  {verdict}  [{', '.join(r['tags'])}]")
    c = result["counts"]
    print(f"{c['accepted_architectures']} of {c['architectures']} architectures accepted "
          f"({c['accepted_pairs']} of {c['pairs']} name:tag pairs), open_clip {c['open_clip']}")
    return 0
