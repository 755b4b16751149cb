"""Where a cell stands: its run folder's files and its claim.

Several processes (on one or several hosts) may work on the same output directory: before
running a cell a worker creates the claim file `<RUN_DIR>.claim` (a sibling of the run
folder) with O_CREAT|O_EXCL, so only one of them runs it. A claim of a dead process on this
host is taken over; a claim of another host is respected until its modification time is
older than `claim_timeout` seconds (the holder touches its claims every `heartbeat` seconds,
so only abandoned claims age). Claims are the lock files of :mod:`mmrl.engine.lock`; each
child `mmrl train` / `mmrl eval` additionally holds the run folder's own writer lock
`RUN_DIR/.lock` while it writes (another file, so a child never waits for its parent's
claim), which also keeps a user's manual `mmrl train --output` on the same folder out.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmrl.errors import shown
from mmrl.fileio import read_json_or_none as read_json
from mmrl.sweep.grid import Cell
from mmrl.vocab import CLAIM_SUFFIX, CONFIG_FILE, EVAL_DIR, RUN_FILE


@dataclass
class CellState:
    """What is left to do for a cell.

    kind: "finished" (nothing), "fresh" (no run.json: train from scratch),
    "resume" (run.json exists but the run is not finished: train again, it
    resumes), "evals" (training finished, some evaluations after training --
    cross-dataset targets, explicitly chosen logits -- not done yet) or
    "mismatch" (run.json or config.yaml describes another run).
    """
    kind: str
    missing: tuple[str, ...] = ()
    detail: str = ""


def cell_state(cell: Cell) -> CellState:
    run = read_json(cell.run_dir / RUN_FILE)
    if run is None:
        return CellState("fresh", cell.train_evals + cell.target_evals)
    want = {"method": cell.method, "dataset": cell.dataset, "protocol": cell.protocol,
            "shots": cell.shots, "seed": cell.seed}
    if cell.backbone is not None:
        want["backbone"] = cell.backbone
    if cell.point or run.get("ablation"):
        want["ablation"] = dict(cell.point)
    diff = {k: (run.get(k), v) for k, v in want.items() if (k in run or k == "ablation") and run.get(k) != v}
    if diff:
        detail = "; ".join(f"{k}={shown(have)} in run.json, expected {shown(exp)}" for k, (have, exp) in diff.items())
        return CellState("mismatch", (), f"{cell.run_dir / RUN_FILE}: {detail}")
    if run.get("status") == "finished" and (detail := settings_mismatch(cell)):
        return CellState("mismatch", (), detail)
    evals = cell.run_dir / EVAL_DIR
    missing_train = tuple(n for n in cell.train_evals if not (evals / n).is_file())
    missing_targets = tuple(n for n in cell.target_evals if not (evals / n).is_file())
    if run.get("status") != "finished" or missing_train:
        return CellState("resume", missing_train + missing_targets, f"status {shown(run.get('status'))}")
    if missing_targets:
        return CellState("evals", missing_targets)
    return CellState("finished")


def settings_mismatch(cell: Cell) -> str:
    """Why the run in the cell's folder was made with other settings than the sweep's ``--set`` items (and
    the ablation point's values), or "" when it matches or its config.yaml cannot tell. Keys that do not
    change what is learned (where the data is, device, workers, evaluation) may differ, as on resume.
    A finished run is skipped without starting `mmrl train` (which checks this itself), so the sweep
    checks it here: results of other settings are never counted as this sweep's."""
    from mmrl.config import ConfigError, config_differences, load_config, with_overrides
    from mmrl.sweep.ablation import point_overrides

    path = cell.run_dir / CONFIG_FILE
    if not path.is_file():
        return ""
    try:
        stored = load_config(path)
    except ConfigError:
        return ""  # not a config this version reads: train decides when it runs
    try:
        wanted = with_overrides(stored, [*cell.sets, *(point_overrides(cell.point) if cell.point else ())])
    except ConfigError as e:
        return f"{cell.run_dir}: this sweep's settings do not apply to the stored run ({e})"
    diffs = config_differences(stored, wanted)
    if not diffs:
        return ""
    return (f"{path}: the finished run has other settings than this sweep asks for ({'; '.join(diffs)}); "
            "use another --output for other settings, or delete the run folder to redo it")


# ----------------------------------------------------------------------------------------------
# Claim files
# ----------------------------------------------------------------------------------------------

def claim_path(cell: Cell) -> Path:
    """`<RUN_DIR>.claim`: beside the run folder, which holds the child's own writer lock (`RUN_DIR/.lock`)."""
    return cell.run_dir.with_name(cell.run_dir.name + CLAIM_SUFFIX)


def read_claim_holder(cell_run_dir: Path) -> dict | None:
    """Content of the claim beside a run folder (for the report), or None."""
    p = cell_run_dir.with_name(cell_run_dir.name + CLAIM_SUFFIX)
    return read_json(p) if p.exists() else None
