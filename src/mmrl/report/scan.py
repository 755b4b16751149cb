"""Find every run folder under a directory, whatever the layout, and read what it holds.

A folder is a run when it holds the files a run writes (see :mod:`mmrl.engine.rundir`):
``run.json`` (trained, converted or zero-shot runs), ``config.yaml`` (a run that stopped
before writing run.json) or ``eval/*.json`` (evaluations only, e.g. zero-shot results kept
without run.json). The walk does not descend into run folders. Besides runs it collects what
`mmrl reproduce` leaves: grid files (``<base>/<protocol>/<method>/grid-*.json``, the requested
grid) and claim files (``<run folder>.claim``, a run being worked on).

Identity of a run (protocol, method, dataset, shots, seed, backbone) comes from run.json,
else config.yaml, else the sweep layout of its path
(``<base>/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>``), else the evaluation files'
own fields; a folder named ``zeroshot`` on the path marks zero-shot results without run.json.

Evaluations: ``eval/<slug>-<subsample>.json`` is the protocol's own evaluation (logits chosen by
the protocol, ``"logits_requested": "auto"``; older files lack the field and are read as auto);
``eval/<slug>-<subsample>-<kind>.json`` is one with explicitly chosen logits (`mmrl eval --logits
KIND`), kept apart (:attr:`Run.logit_evals`) so it never reaches the protocol tables.

An ablation run (`mmrl reproduce --vary`) says which values of the varied keys it has: run.json
``"ablation"``, else config.yaml's ``vary`` (the keys) and their values in the config; a
placeholder of a sweep takes them from its grid file. Nothing here imports torch.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from mmrl.config import RESUME_IGNORED_PREFIXES, ConfigError, flat, read_yaml
from mmrl.engine.lock import read_holder, run_lock_path
from mmrl.engine.runcheck import adapter_settings, disagreements
from mmrl.errors import clip, error_line, shown
from mmrl.vocab import (
    ADAPTER_FILE, ALL_DATASETS, CLAIM_SUFFIX, CONFIG_FILE, EVAL_DIR, GRID_FILE_GLOB, LOGIT_KINDS, PROTOCOLS,
    RESULTS_FILE, RUN_FILE, SEED_PREFIX, SHOTS_PREFIX, STDOUT_LOG, dataset_slug,
)

AUTO = "auto"  # the protocol's own choice of logits (vocab.LOGIT_CHOICES[0])

ZEROSHOT = "zeroshot"  # the method name zero-shot results carry (run.json / eval files)


# The JSON files a run writes are a few KB (an evaluation with per-class numbers of 1000 classes:
# ~100 KB); a bigger one is not read, so a hostile file cannot fill the memory.
JSON_MAX_BYTES = 32 * 2**20
REASON_MAX = 300  # characters of the reason a file cannot be read, as shown in the report


class Unreadable(Exception):
    """A file of a run folder that is there but cannot be used; the message is one line naming it."""


def read_json_file(path: Path) -> dict | None:
    """The JSON object in ``path``; None when the file does not exist; :class:`Unreadable` when it is
    not a JSON object of at most JSON_MAX_BYTES (cut short, nested too deeply, a list, not UTF-8, ...).

    The report reads every file of others through this (or :func:`_read_json`), so that one bad file
    costs only its run, never the report."""
    try:
        with open(path, "rb") as f:
            raw = f.read(JSON_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Unreadable(f"{path.name}: cannot be read ({e.strerror or type(e).__name__})") from None
    if len(raw) > JSON_MAX_BYTES:
        raise Unreadable(f"{path.name}: more than {JSON_MAX_BYTES // 2**20} MiB; not what mmrl writes")
    try:
        data = json.loads(raw)
    except RecursionError:  # '[' * 100000: the parser recurses once per level
        raise Unreadable(f"{path.name}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # cut short, not UTF-8, ...
        raise Unreadable(f"{path.name}: not valid JSON ({clip(error_line(e), REASON_MAX)})") from None
    if not isinstance(data, dict):
        raise Unreadable(f"{path.name}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when absent or unreadable: for files whose damage costs a
    detail only (a claim file, results.json, the first evaluation file read again)."""
    try:
        return read_json_file(path)
    except Unreadable:
        return None


def _read_yaml(path: Path) -> dict | None:
    """The mapping in a YAML file; None when it is absent; :class:`Unreadable` when it is refused or not
    a mapping (read as every YAML file is: :func:`mmrl.config.read_yaml`, no aliases, size-capped)."""
    if not path.is_file():
        return None
    try:
        data = read_yaml(path)
    except ConfigError as e:
        reason = error_line(e).removeprefix(f"{path}: ")
        raise Unreadable(f"{path.name}: {clip(reason, REASON_MAX)}") from None
    if not isinstance(data, dict):
        raise Unreadable(f"{path.name}: expected a mapping of settings, found {type(data).__name__}")
    return data


def read_grid(path: Path) -> dict | None:
    """A grid file of `mmrl reproduce` with the fields the report uses checked (datasets and targets:
    lists of names, shots and seeds: lists of integers); None when it is not one."""
    spec = _read_json(path)
    if spec is None:
        return None
    for key, kind in (("datasets", str), ("targets", str), ("shots", int), ("seeds", int)):
        v = spec.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, kind) and not isinstance(x, bool) for x in v):
            return None
    return spec


def _int(x: object) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _str(x: object) -> str | None:
    return x if isinstance(x, str) and x else None


def _finite(x: float) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an integer too large for a float
        return False


@dataclass(frozen=True)
class Eval:
    """One evaluation file ``eval/<slug>-<subsample>[-<kind>].json``."""
    dataset: str      # the evaluated dataset's name as recorded (e.g. "EuroSAT", "folder:pets")
    subsample: str    # all | base | new
    accuracy: float   # percent
    file: Path
    choice: str = AUTO         # the logits asked for: "auto" (the protocol's choice) or a kind of LOGIT_KINDS
    logits: str | None = None  # the kind that decided (fused / class / rep), None when not recorded

    @property
    def key(self) -> str:
        return f"{self.dataset}-{self.subsample}"


def ablation_point(values: dict) -> tuple[tuple[str, str], ...]:
    """A hashable, order-free identity of an ablation's values: ((key, canonical JSON of the value), ...)
    sorted by key (values may be JSON lists)."""
    return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in values.items()))


@dataclass(frozen=True)
class SweepCell:
    """Where a run folder sits in the sweep layout ``<base>/<protocol>/<method>/<dataset>/shots_<k>/seed_<s>``."""
    base: Path
    protocol: str
    method: str
    dataset: str   # the folder name
    shots: int
    seed: int


@dataclass
class Run:
    """One run folder (or, for an expected run of a sweep that has no folder yet, a placeholder).

    state: "finished", "running" (not finished, a claim exists), "unfinished" (not finished,
    no claim), "failed", "claimed" (no run.json yet, a claim exists), "missing" (nothing),
    "unreadable" (run.json or config.yaml cannot be read; detail: which and why) or "inconsistent"
    (config.yaml, run.json and the adapter file disagree; detail: how). The last two are not trusted:
    like unfinished runs they are in no table.
    """
    path: Path
    method: str | None
    protocol: str | None = None
    dataset: str | None = None    # as recorded: canonical name or user spec ("folder:/data/pets")
    name: str | None = None       # the dataset's name in tables ("DescribableTextures", "folder:pets")
    shots: int | None = None
    seed: int | None = None
    backbone: str | None = None
    state: str = "finished"
    evals: dict[str, Eval] = field(default_factory=dict)   # Eval.key -> Eval (the protocol's own logits)
    logit_evals: dict[tuple[str, str, str], Eval] = field(default_factory=dict)  # (dataset, subsample, kind) -> Eval
    ablation: dict | None = None  # the run's values of the keys an ablation varies ({dotted key: value}); None: not one
    settings: dict | None = None  # config.yaml's settings that change the result (flat; see run_settings)
    shots_realised: dict | None = None  # run.json "shots_realised": {"min", "max", "per_class"} (images per class)
    problems: list[str] = field(default_factory=list)  # files of the run that cannot be read (one line each)
    detail: str = ""
    official: bool = False        # converted from the authors' checkpoint (mmrl convert-official)
    finished_at: str = ""         # run.json "finished", to pick the latest of duplicate runs
    cost: dict | None = None      # run.json "cost" (mmrl.engine.cost), for the report's Compute section
    cell: SweepCell | None = None

    def acc(self, dataset: str, subsample: str) -> float | None:
        e = self.evals.get(f"{dataset}-{subsample}")
        return None if e is None else e.accuracy

    def eval_with(self, dataset: str, subsample: str, kind: str) -> Eval | None:
        """The evaluation of (dataset, subsample) with logits ``kind``: the explicit one
        (``mmrl eval --logits KIND``), else the protocol's own when that used ``kind`` (a sweep does
        not repeat an evaluation whose kind is the protocol's choice), else None."""
        e = self.logit_evals.get((dataset, subsample, kind))
        if e is not None:
            return e
        e = self.evals.get(f"{dataset}-{subsample}")
        return e if e is not None and e.logits == kind else None

    @property
    def log(self) -> Path | None:
        """The sweep's log of this run (``stdout.log``), if there is one."""
        p = self.path / STDOUT_LOG
        return p if p.exists() else None


@dataclass
class Found:
    """Everything `scan` found under ``root``."""
    root: Path
    runs: list[Run]                                           # run folders (any state), sorted by path
    grids: dict[tuple[Path, str, str], list[dict]]            # (base, protocol, method) -> grid specs
    claims: dict[Path, dict]                                  # run folder -> claim content ({} if unreadable)
    skipped: list[str] = field(default_factory=list)          # folders that look like runs but say too little
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (run folder, why) of unplaceable ones
    bad_grids: list[Path] = field(default_factory=list)       # grid files that cannot be read


def sweep_cell(path: Path, root: Path) -> SweepCell | None:
    """The sweep-layout position of ``path`` (relative to ``root``), or None when it is not in that layout."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return None
    if len(parts) < 5:
        return None
    protocol, method, dataset, shots, seed = parts[-5:]
    if protocol not in PROTOCOLS or not shots.startswith(SHOTS_PREFIX) or not seed.startswith(SEED_PREFIX):
        return None
    try:
        k, s = int(shots[len(SHOTS_PREFIX):]), int(seed[len(SEED_PREFIX):])
    except ValueError:
        return None
    return SweepCell(path.parents[4], protocol, method, dataset, k, s)


def read_evals(run_dir: Path, problems: list[str] | None = None
               ) -> tuple[dict[str, Eval], dict[tuple[str, str, str], Eval]]:
    """The evaluations of a run folder: (the protocol's own: Eval.key -> Eval, those with explicitly
    chosen logits: (dataset, subsample, kind) -> Eval). Files without a numeric accuracy are skipped;
    files that are not JSON objects too, each named (one line) in ``problems``.

    Which is which comes from the file's ``logits_requested`` (absent in older files: auto), else
    from its name (``<slug>-<subsample>-<kind>.json``); dataset and subsample from its fields, else
    from its name."""
    auto: dict[str, Eval] = {}
    chosen: dict[tuple[str, str, str], Eval] = {}
    ev = run_dir / EVAL_DIR
    if not ev.is_dir():
        return auto, chosen
    for p in sorted(ev.glob("*.json")):
        try:
            data = read_json_file(p)
        except Unreadable as e:
            if problems is not None:
                problems.append(f"{EVAL_DIR}/{e}")
            continue
        acc = data.get("accuracy") if data is not None else None
        if not isinstance(acc, (int, float)) or isinstance(acc, bool) or not _finite(acc) or "-" not in p.stem:
            continue
        stem = p.stem
        requested = data.get("logits_requested")
        if requested is None:  # older files, or files without the field: the name says
            last = stem.rsplit("-", 1)[1]
            requested = last if last in LOGIT_KINDS and stem.count("-") >= 2 else AUTO
        if requested != AUTO and requested not in LOGIT_KINDS:
            continue  # a request this version does not know: neither the protocol's nor a known kind
        if requested != AUTO and stem.endswith(f"-{requested}") and stem.count("-") >= 2:
            stem = stem[: -len(requested) - 1]
        stem_name, stem_sub = stem.rsplit("-", 1)
        used = data.get("logits")
        e = Eval(_str(data.get("dataset")) or stem_name, _str(data.get("subsample")) or stem_sub,
                 float(acc), p, requested, used if used in LOGIT_KINDS else None)
        if requested == AUTO:
            auto[e.key] = e
        else:
            chosen[(e.dataset, e.subsample, requested)] = e
    return auto, chosen


def short_name(dataset: str) -> str:
    """The name the data layer gives a user dataset when nothing better is recorded
    (``folder:/a/pets`` -> ``folder:pets``, ``manifest:/a/m.csv`` -> ``manifest:m``)."""
    prefix, sep, rest = dataset.partition(":")
    if not sep or prefix.lower() not in ("folder", "manifest", "dataset"):
        return dataset
    p = Path(rest.rstrip("/"))
    if prefix.lower() == "manifest":
        return f"manifest:{p.stem}"
    if prefix.lower() == "dataset":
        return p.parent.name if p.name == "dataset.json" else p.name
    return f"folder:{p.name}"


def own_name(dataset: str, run_dir: Path, evals: dict[str, Eval]) -> str:
    """The table name of a run's own dataset: the canonical name of a benchmark; for user data the name
    its evaluations recorded (results.json of `mmrl train`, else the eval file named after the dataset)."""
    if dataset in ALL_DATASETS:
        return dataset
    results = _read_json(run_dir / RESULTS_FILE) or {}
    keys = results.get("evaluations")
    if isinstance(keys, dict) and keys and "-" in next(iter(keys)):
        return next(iter(keys)).rsplit("-", 1)[0]
    slug = dataset_slug(dataset)
    for e in evals.values():
        if e.file.stem.rsplit("-", 1)[0] == slug:
            return e.dataset
    return short_name(dataset)


def describe_claim(claim: dict | None) -> str:
    """'claimed by HOST pid PID since TIME' ('' without a claim)."""
    if claim is None:
        return ""
    return f"claimed by {claim.get('host', '?')} pid {claim.get('pid', '?')} since {claim.get('time_iso', '?')}"


def _ablation_from_config(cfg: dict) -> dict | None:
    """{key: value} of the keys config.yaml's ``vary`` lists (their values at their usual places,
    ``method: {n_rep_tokens: 4}``; None where the config lacks one); None when it varies nothing."""
    keys = cfg.get("vary")
    if not isinstance(keys, list) or not keys:
        return None
    out = {}
    for key in keys:
        if not isinstance(key, str):
            continue
        node: object = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[key] = node
    return out or None


def _identity_from_config(cfg: dict) -> dict:
    method = cfg.get("method") if isinstance(cfg.get("method"), dict) else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    return {"protocol": _str(cfg.get("protocol")), "method": _str(method.get("name")),
            "dataset": _str(data.get("dataset")), "shots": _int(data.get("shots")), "seed": _int(cfg.get("seed")),
            "backbone": _str(cfg.get("backbone"))}


# config.yaml keys that say which run it is (compared as the series' identity, not as settings) or
# that do not change what a run computes (where the data live, the device, the evaluation: as for resume)
IDENTITY_KEYS = ("protocol", "seed", "backbone", "method.name", "data.dataset", "data.shots", "vary")


def run_settings(cfg: dict | None) -> dict | None:
    """The settings of config.yaml that change a run's result, flat ({"optim.lr": 0.002, ...}): two runs
    of one dataset and seed whose settings differ are two experiments, not two copies of one."""
    if cfg is None:
        return None
    return {k: v for k, v in flat(cfg).items()
            if k not in IDENTITY_KEYS and not k.startswith(RESUME_IGNORED_PREFIXES)}


def _json_value(v: object) -> object:
    """``v`` as plain JSON data (a YAML date becomes its text), so that every value compares and prints."""
    return json.loads(json.dumps(v, default=str))


def _realised(info: dict) -> dict | None:
    """run.json "shots_realised" when it has the form the trainer writes, else None."""
    r = info.get("shots_realised")
    if not isinstance(r, dict) or _int(r.get("min")) is None or _int(r.get("max")) is None:
        return None
    per = r.get("per_class")
    per = per if isinstance(per, list) and all(_int(n) is not None for n in per) else None
    return {"min": r["min"], "max": r["max"], "per_class": per}


def _sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def consistency(run_dir: Path, cfg: dict, info: dict) -> list[str]:
    """How config.yaml, run.json and the adapter file of a run folder contradict each other (what
    `mmrl eval` refuses: :func:`mmrl.engine.runcheck.disagreements` and the adapter's recorded sha256),
    one line each; [] when they agree. Reads the adapter's header only, never its tensors."""
    adapter = run_dir / ADAPTER_FILE
    problems = disagreements(cfg, info, adapter_settings(adapter))
    recorded = info.get("adapter_sha256")
    if isinstance(recorded, str) and adapter.is_file() and _sha256(adapter) != recorded:
        problems.append(f"{ADAPTER_FILE} is not the file run.json recorded (its sha256 differs)")
    return [clip(p, REASON_MAX) for p in problems]


def read_run(run_dir: Path, root: Path, claims: dict[Path, dict]) -> Run | None:
    """Read one run folder; None when nothing in it says which method produced it. A run.json or
    config.yaml that cannot be read makes the run "unreadable", files that contradict each other
    "inconsistent" (:class:`Run`); an unreadable evaluation is left out and named in ``problems``."""
    problems: list[str] = []
    broken = ""  # why the run's own files cannot be trusted ("" when they can)
    try:
        info = read_json_file(run_dir / RUN_FILE)
    except Unreadable as e:
        info, broken = None, str(e)
    try:
        cfg = _read_yaml(run_dir / CONFIG_FILE)
    except Unreadable as e:
        cfg, broken = None, broken or str(e)
    evals, logit_evals = read_evals(run_dir, problems)
    cell = sweep_cell(run_dir, root)
    ident: dict = {}
    if info is not None:
        ident = {"protocol": _str(info.get("protocol")), "method": _str(info.get("method")),
                 "dataset": _str(info.get("dataset")), "shots": _int(info.get("shots")), "seed": _int(info.get("seed")),
                 "backbone": _str(info.get("backbone"))}
    elif cfg is not None:
        ident = _identity_from_config(cfg)
    if cell is not None:  # the sweep layout fills what the files do not say
        for k, v in (("protocol", cell.protocol), ("method", cell.method), ("dataset", cell.dataset),
                     ("shots", cell.shots), ("seed", cell.seed)):
            if ident.get(k) is None:
                ident[k] = v
    any_eval = next(iter(evals.values()), None) or next(iter(logit_evals.values()), None)
    if not ident.get("method") and any_eval is not None:  # evaluations only: their fields, or a "zeroshot" folder
        first = _read_json(any_eval.file) or {}
        method = _str(first.get("method")) or (ZEROSHOT if ZEROSHOT in run_dir.relative_to(root).parts else None)
        ident["method"] = method
        if method and method != ZEROSHOT:
            for k, v in (("protocol", _str(first.get("protocol"))), ("dataset", _str(first.get("trained_on"))),
                         ("shots", _int(first.get("shots"))), ("seed", _int(first.get("seed"))),
                         ("backbone", _str(first.get("backbone")))):
                if ident.get(k) is None:
                    ident[k] = v
    if not ident.get("method"):
        if broken:
            raise Unreadable(broken)  # nothing else says what it is: listed as unreadable by scan
        return None
    # a sweep's claim beside the folder, else the writer lock of a process working in it by hand
    try:
        claim = claims.get(run_dir) or read_holder(run_lock_path(run_dir))
    except (ValueError, RecursionError):  # a lock file that is not JSON: nobody holds it
        claim = None
    claim_text = describe_claim(claim)
    if broken:
        state, detail = "unreadable", broken
    elif info is not None:
        status = info.get("status")
        if status == "finished":
            state, detail = "finished", ""
        elif status == "failed":
            state, detail = "failed", claim_text
        elif claim is not None:
            state, detail = "running", claim_text
        else:
            state, detail = "unfinished", f"status {shown(status)} and no claim (interrupted? re-run to resume)"
    elif cfg is not None:
        state = "running" if claim is not None else "unfinished"
        detail = claim_text or f"{CONFIG_FILE} but no {RUN_FILE} (stopped while starting? re-run to resume)"
    else:
        state, detail = "finished", ""
    if state == "finished" and info is not None and cfg is not None:
        contradictions = consistency(run_dir, cfg, info)
        if contradictions:
            state, detail = "inconsistent", "; ".join(contradictions)
    dataset = ident.get("dataset")
    source = (info or {}).get("source")
    if info is not None:
        ablation = info.get("ablation") if isinstance(info.get("ablation"), dict) else None
    else:
        ablation = _ablation_from_config(cfg) if cfg is not None else None
    return Run(path=run_dir, method=ident["method"], protocol=ident.get("protocol"), dataset=dataset,
               name=own_name(dataset, run_dir, evals) if dataset else None, shots=ident.get("shots"),
               seed=ident.get("seed"), backbone=ident.get("backbone"), state=state, evals=evals,
               logit_evals=logit_evals, detail=detail, problems=problems,
               official=isinstance(source, dict) and "official_checkpoint" in source,
               finished_at=str((info or {}).get("finished", "")), cell=cell,
               ablation=_json_value(ablation) if ablation else None, settings=run_settings(cfg),
               shots_realised=_realised(info) if info is not None else None,
               cost=info.get("cost") if info is not None and isinstance(info.get("cost"), dict) else None)


def _is_run_folder(path: Path, files: set[str], dirs: set[str]) -> bool:
    if RUN_FILE in files or CONFIG_FILE in files:
        return True
    return EVAL_DIR in dirs and any((path / EVAL_DIR).glob("*.json"))


def scan(root: Path | str) -> Found:
    """Walk ``root`` (symlinks not followed, hidden folders skipped) and read every run folder in it."""
    root = Path(root)
    run_dirs: list[Path] = []
    grids: dict[tuple[Path, str, str], list[dict]] = {}
    claims: dict[Path, dict] = {}
    bad_grids: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files = set(filenames)
        for fn in filenames:
            if fn.endswith(CLAIM_SUFFIX):
                claims[here / fn[: -len(CLAIM_SUFFIX)]] = _read_json(here / fn) or {}
            elif Path(fn).match(GRID_FILE_GLOB) and here != root and here.parent.name in PROTOCOLS:
                spec = read_grid(here / fn)
                if spec is None:
                    bad_grids.append(here / fn)
                else:
                    grids.setdefault((here.parent.parent, here.parent.name, here.name), []).append(spec)
        if _is_run_folder(here, files, set(dirnames)):
            run_dirs.append(here)
            dirnames[:] = []  # a run folder holds no other runs
    runs, skipped, unreadable = [], [], []
    for d in sorted(run_dirs):
        try:
            r = read_run(d, root, claims)
        except Unreadable as e:
            unreadable.append((d, str(e)))
            continue
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OSError) as e:
            # content of a form nothing above foresaw: this run is lost, the report goes on
            unreadable.append((d, f"cannot be read ({type(e).__name__}: {clip(error_line(e), REASON_MAX)})"))
            continue
        if r is None:
            skipped.append(str(d))
        else:
            runs.append(r)
    return Found(root, runs, grids, claims, skipped, unreadable, bad_grids)
