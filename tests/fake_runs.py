"""Fake run folders in the exact file formats the engine writes, without torch.

`write_run` writes what a finished `mmrl train` leaves for the report to read: run.json
(``rundir.new_run_info`` + the trainer's extras), config.yaml (the keys that name the run, in
the resolved config's nesting), results.json and eval/<slug>-<subsample>.json with every field
the evaluator writes. `write_zeroshot` writes what `mmrl zeroshot` leaves, `write_logit_eval` an
evaluation with explicitly chosen logits (`mmrl eval --logits KIND`), `write_grid` the grid file of
`mmrl reproduce` (with an ablation's values and defaults). Used by the report tests and by
benchmarks/report_time.py. The formats were copied from a real tiny run
(tests/helpers.py + `mmrl train`); tests/test_report_layouts.py also checks the report on one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from mmrl.vocab import auto_logits, dataset_slug, eval_file_name, harmonic_mean

VERSION = "0.1.0"


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def eval_record(dataset: str, subsample: str, accuracy: float, **extra: object) -> dict:
    """An eval/<slug>-<subsample>.json as the evaluator writes it (per-class details left short)."""
    rec = {"dataset": dataset, "subsample": subsample, "accuracy": accuracy, "macro_accuracy": accuracy,
           "correct": 0, "n": 100, "n_classes": 10, "per_class": [], "logits": "fused", "beta": None,
           "template": "a photo of a {}.", "precision": "fp32", "time_s": 0.01, "logits_requested": "auto"}
    rec.update(extra)
    return rec


def write_run(run_dir: Path, protocol: str, method: str, dataset: str, shots: int, seed: int,
              acc: Mapping[tuple[str, str], float], *, status: str = "finished", backbone: str = "ViT-B-16",
              name: str | None = None, official: bool = False, ablation: Mapping[str, Any] | None = None,
              config_only: bool = False, cost: Mapping[str, Any] | None = None) -> Path:
    """A run folder of `mmrl train` (or `mmrl convert-official` + `mmrl eval` when ``official``).

    acc: (evaluated dataset name, subsample) -> accuracy (%), e.g. {("EuroSAT", "base"): 91.0};
    name: the evaluated name of the run's own dataset when it is user data ("folder:pets");
    ablation: a run of `mmrl reproduce --vary` ({dotted key: value}: run.json "ablation", config.yaml
    ``vary`` and the values at their places); config_only: only config.yaml (stopped while starting);
    cost: run.json's (and results.json's) "cost" block (mmrl.engine.cost).
    """
    run_dir = Path(run_dir)
    info = {"version": VERSION, "method": method, "dataset": dataset, "protocol": protocol, "shots": shots,
            "seed": seed, "backbone": backbone, "status": status, "timings": {}, "trainable_parameters": 6432,
            "started": "2026-01-01T00:00:00+0000", "attempts": 1, "device": "cpu", "precision": "fp32",
            "epochs_done": 2}
    if status == "finished":
        info["finished"] = "2026-01-01T00:01:00+0000"
    if official:
        info["source"] = {"official_checkpoint": "/ckpt/model.pth.tar-5"}
    if ablation:
        info["ablation"] = dict(ablation)
    if cost is not None:
        info["cost"] = dict(cost)
    if not config_only:
        _dump(run_dir / "run.json", info)
    cfg: dict = {"protocol": protocol, "seed": seed, "backbone": backbone, "method": {"name": method},
                 "data": {"dataset": dataset, "shots": shots}}
    for key, value in (ablation or {}).items():  # the values at their usual places
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    if ablation:
        cfg["vary"] = list(ablation)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    if config_only:
        return run_dir
    own = name or dataset
    trained_subsample = "base" if protocol == "base2novel" else "all"
    evaluations = {}
    for (ds, sub), a in acc.items():
        path = run_dir / "eval" / eval_file_name(ds, sub)
        _dump(path, eval_record(ds, sub, a, method=method, protocol=protocol, trained_on=dataset,
                                trained_subsample=trained_subsample, shots=shots, seed=seed, backbone=backbone,
                                version=VERSION, logits=auto_logits(own, trained_subsample, ds, sub)))
        if ds == own:
            evaluations[f"{ds}-{sub}"] = str(path)
    if status == "finished" and not official:
        results = {"protocol": protocol, "method": method, "dataset": dataset, "shots": shots, "seed": seed,
                   "backbone": backbone, "evaluations": evaluations}
        if protocol == "base2novel" and (own, "base") in acc and (own, "new") in acc:
            b, n = acc[(own, "base")], acc[(own, "new")]
            results.update(base=b, novel=n, hm=harmonic_mean(b, n))
        elif (own, "all") in acc:
            results["accuracy"] = acc[(own, "all")]
        _dump(run_dir / "results.json", results)
    return run_dir


def write_logit_eval(run_dir: Path, dataset: str, subsample: str, kind: str, accuracy: float) -> Path:
    """What `mmrl eval RUN --dataset D --subsample S --logits KIND` adds: eval/<slug>-<S>-<KIND>.json."""
    info = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    path = Path(run_dir) / "eval" / eval_file_name(dataset, subsample, kind)
    _dump(path, eval_record(dataset, subsample, accuracy, logits=kind, logits_requested=kind, method=info["method"],
                            protocol=info["protocol"], trained_on=info["dataset"],
                            trained_subsample="base" if info["protocol"] == "base2novel" else "all",
                            shots=info["shots"], seed=info["seed"], backbone=info["backbone"], version=VERSION))
    return path


def write_grid(base: Path, protocol: str, method: str, datasets: Sequence[str], shots: Sequence[int],
               seeds: Sequence[int], *, targets: Sequence[str] = (), values: Mapping[str, Any] | None = None,
               defaults: Mapping[str, Mapping[str, Any]] | None = None, name: str = "grid-test.json") -> Path:
    """The grid file `mmrl reproduce` leaves in BASE/<protocol>/<method>/ (an ablation's: its point's
    ``values`` and the per-dataset ``defaults`` of the varied keys, under "ablation")."""
    spec: dict = {"protocol": protocol, "method": method, "datasets": list(datasets), "targets": list(targets),
                  "shots": list(shots), "seeds": list(seeds)}
    if values is not None:
        spec["ablation"] = {"values": dict(values), "defaults": {d: dict(v) for d, v in (defaults or {}).items()}}
    path = Path(base) / protocol / method / name
    _dump(path, spec)
    return path


def write_zeroshot(out_dir: Path, acc: Mapping[tuple[str, str], float], backbone: str = "ViT-B-16") -> Path:
    """What `mmrl zeroshot --output OUT` leaves: OUT/run.json (method zeroshot) and OUT/eval/*.json."""
    out_dir = Path(out_dir)
    _dump(out_dir / "run.json", {"version": VERSION, "method": "zeroshot", "backbone": backbone,
                                 "status": "finished", "protocol": None, "dataset": None, "shots": None,
                                 "seed": None, "timings": {}, "trainable_parameters": 0})
    for (ds, sub), a in acc.items():
        _dump(out_dir / "eval" / f"{dataset_slug(ds)}-{sub}.json",
              eval_record(ds, sub, a, logits="class", method="zeroshot", backbone=backbone, shots=16, seed=1,
                          version=VERSION))
    return out_dir


def md_row(md: str, first_cell: str, after: str = "") -> list[str]:
    """Cells of the Markdown table row starting with `first_cell` (the first such row after `after`)."""
    start = md.index(after) if after else 0
    for line in md[start:].splitlines():
        if line.startswith(f"| {first_cell} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {first_cell!r} in\n{md}")
