"""Atomic, pickle-free training checkpoints and adapter files.

A checkpoint is ONE safetensors file (written to a temporary file, fsynced, then
``os.replace``d, so a crash or ``kill -9`` leaves either the old or the new file):

* tensors: ``adapter.<name>`` (trainable tensors), ``optim.<i>.<key>`` (AdamW state of
  the i-th trainable tensor: ``step``, ``exp_avg``, ``exp_avg_sq``), ``rng.torch`` and
  ``rng.cuda.<d>`` (generator states as uint8 tensors);
* metadata (strings): ``format``, ``epoch`` (the next epoch to run), ``step`` (optimiser
  steps so far) and ``state`` (JSON: optimiser param groups, parameter names, Python and
  numpy RNG states, GradScaler state).

The adapter file (``adapter.safetensors``) holds the trainable tensors only, under the
names of :meth:`mmrl.models.MMRL.adapter_state_dict`, with the method settings as JSON
metadata.

Integrity: both files carry ``sha256`` metadata, a digest of their tensors (:func:`tensors_sha256`),
checked when they are read, so bytes changed after writing are caught naming the file; every
adapter and optimiser tensor must be floating point and finite. The bytes written are
deterministic (the header's JSON with sorted keys: safetensors writes its metadata map in
random order), so the same training gives byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from mmrl.errors import CorruptFileError
from mmrl.fileio import dumps_json, loads_json, write_bytes_atomic, write_json_atomic, write_text_atomic  # noqa: F401 (re-exported)

CHECKPOINT_FORMAT = "mmrl-checkpoint-1"
ADAPTER_FORMAT = "mmrl-adapter-1"


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Hex sha256 of tensors in name order: each one's name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with the header's JSON keys sorted, so equal tensors and metadata give
    equal bytes (the tensor data's order is already fixed; the header is re-padded to 8 bytes)."""
    tensors = _contiguous(tensors)
    data = save(tensors, metadata={**metadata, "sha256": tensors_sha256(tensors)})
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    raw = header.encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data[8 + n:]


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], what: str,
                   weights: list[str]) -> None:
    """Refuse a file whose tensors do not match their recorded sha256 (when recorded: files of
    mmrl < 0.3 have none) or whose weight tensors ``weights`` are not finite floating point."""
    recorded = meta.get("sha256")
    if recorded is not None and recorded != tensors_sha256(tensors):
        raise CorruptFileError(f"{path}: its tensors do not match the sha256 written with them: bytes of this "
                               f"{what} were changed after it was written")
    for name in weights:
        t = tensors[name]
        if not t.is_floating_point():
            raise CorruptFileError(f"{path}: tensor {name!r} is {str(t.dtype).removeprefix('torch.')}, "
                                   f"expected floating point (a damaged or foreign {what})")
        if not bool(torch.isfinite(t).all()):
            raise CorruptFileError(f"{path}: tensor {name!r} holds NaN or infinite values (a diverged or damaged "
                                   f"{what})")


# --------------------------------------------------------------------------- adapter files
def save_adapter(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any] | None = None) -> str:
    """Write adapter tensors (fp32 as trained) atomically; ``metadata`` is stored as JSON.

    Returns:
        the hex sha256 of the file written (run.json records it).
    """
    data = _safetensors_bytes(tensors, {"format": ADAPTER_FORMAT, "info": dumps_json(metadata or {})})
    write_bytes_atomic(data, path)
    return hashlib.sha256(data).hexdigest()


def _damaged(path: Path, what: str, e: BaseException) -> CorruptFileError:
    reason = " ".join(str(e).split()) or type(e).__name__
    return CorruptFileError(f"{path}: not a readable {what} ({type(e).__name__}: {reason}); "
                            "the file is truncated or damaged")


def load_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an adapter file: (tensors on CPU, metadata dict).

    Raises CorruptFileError naming the file when it is truncated or not a safetensors file, when
    its tensors do not match their recorded sha256, or when one is not finite floating point.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        info = loads_json(meta.get("info", "{}"), "its metadata 'info'")
        if not isinstance(info, dict):
            raise ValueError(f"metadata 'info' is a JSON {type(info).__name__}, not an object")
    except Exception as e:  # safetensors raises its own SafetensorError; JSON errors of damaged metadata
        raise _damaged(path, "adapter file", e) from e
    _check_tensors(path, tensors, meta, "adapter file", sorted(tensors))
    return tensors, info


def checkpoint_recovery(path: str | Path) -> str:
    """How to go on when a run's training checkpoint cannot be used (it is the only one kept)."""
    return (f"to train this run again from its first epoch delete it (rm {path}) and rerun the same command, "
            "or train into another --output")


# --------------------------------------------------------------------------- RNG states
def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON) capturing torch (CPU, CUDA), Python and numpy RNG states."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for d, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{d}"] = s
    py = random.getstate()
    npy = np.random.get_state()
    js = {"python": [py[0], list(py[1]), py[2]],
          "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])]}
    return tensors, js


def set_rng_state(tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in tensors.items() if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        states = [v for _, v in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    if "python" in js:
        v, state, gauss = js["python"]
        random.setstate((v, tuple(state), gauss))
    if "numpy" in js:
        name, keys, pos, has_gauss, cached = js["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    epoch: int                                   # next epoch to run (= epochs completed)
    step: int                                    # optimiser steps so far
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]                    # torch optimiser state_dict
    scaler: dict[str, Any] | None = None         # GradScaler state_dict (fp16)
    rng_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    rng_json: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, *, epoch: int, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scaler: Any = None, extra: dict | None = None) -> None:
    """Write the training state atomically (see module docstring)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    tensors = {f"adapter.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    sd = optimizer.state_dict()
    for i, st in sd["state"].items():
        for k, v in st.items():
            if not isinstance(v, torch.Tensor):
                v = torch.tensor(v)
            tensors[f"optim.{i}.{k}"] = v
    rng_t, rng_j = rng_state()
    tensors.update(rng_t)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    state = {"param_groups": groups, "param_names": names, "rng": rng_j,
             "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
             "extra": extra or {}}
    meta = {"format": CHECKPOINT_FORMAT, "epoch": str(epoch), "step": str(step), "state": dumps_json(state)}
    write_bytes_atomic(_safetensors_bytes(tensors, meta), path)


def checkpoint_epoch(path: str | Path) -> int | None:
    """Epochs a checkpoint file covers (its metadata only), or None when absent or unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return int(meta["epoch"]) if meta.get("format") == CHECKPOINT_FORMAT else None
    except Exception:  # absent, damaged: nothing to tell
        return None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (no pickle involved).

    Raises CorruptFileError naming the file (and how to go on) when it is truncated,
    damaged or not an mmrl checkpoint.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CorruptFileError(f"{path}: not an mmrl training checkpoint (format {meta.get('format')!r}); "
                                   + checkpoint_recovery(path))
        tensors = load_file(str(path))
        state = loads_json(meta["state"], "its metadata 'state'")
        int(meta["epoch"]), int(meta["step"])
    except CorruptFileError:
        raise
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors' SafetensorError, JSON and key errors of a damaged file
        raise CorruptFileError(f"{_damaged(path, 'training checkpoint', e)}; {checkpoint_recovery(path)}") from e
    try:
        _check_tensors(path, tensors, meta, "training checkpoint",
                       sorted(k for k in tensors if k.startswith("adapter.")
                              or (k.startswith("optim.") and not k.endswith(".step"))))
    except CorruptFileError as e:
        raise CorruptFileError(f"{e}; {checkpoint_recovery(path)}") from e
    adapter = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, key = k.split(".", 2)
            opt_state.setdefault(int(i), {})[key] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in state["param_groups"]]
    rng_t = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return Checkpoint(epoch=int(meta["epoch"]), step=int(meta["step"]), adapter=adapter,
                      optimizer={"state": opt_state, "param_groups": groups}, scaler=state.get("scaler"),
                      rng_tensors=rng_t, rng_json=state.get("rng", {}), extra=state.get("extra", {}))
