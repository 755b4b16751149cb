"""Does a run folder agree with itself? config.yaml, run.json and the adapter file each say which
method, backbone and settings the run has; a folder whose files disagree (edited by hand,
assembled from two runs, or tampered with) is not trusted: ``mmrl eval`` / ``predict`` /
``export`` refuse it.

Torch-free, so that ``mmrl report`` uses it too (:mod:`mmrl.report.scan`): it compares plain mappings,
and reads the adapter's settings from the safetensors header without loading a tensor.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mmrl.config import flat
from mmrl.fileio import loads_json, read_safetensors_header

# The method settings that decide the adapter's tensors and its outputs: config.yaml's method
# section and the adapter's recorded settings must agree on each that both name.
METHOD_KEYS = ("name", "n_rep_tokens", "rep_dim", "first_rep_block", "alpha", "beta", "proj_lora_rank",
               "aligner_lora_rank")
# run.json field -> config.yaml key (dotted)
RUN_KEYS = {"method": "method.name", "backbone": "backbone", "protocol": "protocol", "seed": "seed",
            "shots": "data.shots", "dataset": "data.dataset"}
ADAPTER_KEYS = {"backbone": "backbone", "protocol": "protocol", "seed": "seed", "shots": "data.shots",
                "dataset": "data.dataset"}


def adapter_settings(path: str | Path) -> dict | None:
    """What the adapter file records of its run (the JSON ``info`` metadata), or None when the file
    is absent or has no readable record (the loader then says what is wrong with it)."""
    try:
        meta = read_safetensors_header(path).get("__metadata__") or {}
        info = loads_json(meta.get("info", "null"), path)
    except (OSError, ValueError, RecursionError, AttributeError):
        return None
    return info if isinstance(info, dict) else None


def disagreements(config: dict, run_info: dict | None, adapter: dict | None) -> list[str]:
    """Each way run.json (``run_info``) or the adapter's record (``adapter``) contradicts config.yaml
    (``config``, a RunConfig's ``to_dict()`` or the parsed file), as ``"<file> says <key> X, config.yaml
    says Y"``. Fields a file does not record are not compared (older runs record fewer)."""
    out = []
    settings = flat(config)

    def compare(what: str, field: str, theirs: Any, key: str) -> None:
        ours = settings.get(key)
        if theirs is not None and ours is not None and theirs != ours:
            out.append(f"{what} says {field} {theirs!r}, config.yaml says {ours!r}")

    if run_info:
        if run_info.get("method") != "zeroshot":
            for field, key in RUN_KEYS.items():
                compare("run.json", field, run_info.get(field), key)
    if adapter:
        for field, key in ADAPTER_KEYS.items():
            compare("adapter.safetensors", field, adapter.get(field), key)
        method = adapter.get("method")
        if isinstance(method, dict):
            for k in METHOD_KEYS:
                compare("adapter.safetensors", f"method.{k}", method.get(k), f"method.{k}")
    return out
