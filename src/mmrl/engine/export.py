"""Exported classifier files: a trained run frozen for one class set, as ONNX or ``torch.export``.

One file maps a preprocessed image batch ``images`` (N, 3, H, W) float32 to class logits
``logits`` (N, C) float32 (N dynamic), with everything image-independent precomputed
(:class:`mmrl.models.frozen.FrozenClassifier`), and carries its metadata as JSON:

* ONNX (``.onnx``): the model's ``metadata_props`` entry ``mmrl``; run with onnxruntime
  (``session.get_modelmeta().custom_metadata_map["mmrl"]``). A plain protobuf: loading it
  executes nothing.
* torch (``.pt2``): ``torch.export.save`` with the extra file ``mmrl.json``; load with
  ``torch.export.load(path, extra_files={"mmrl.json": ""}).module()``. ``torch.export.load``
  may unpickle parts of the file: load only files you trust (ones you exported yourself).

Neither needs ``mmrl`` (nor open_clip) to run. The metadata (:func:`build_metadata`) holds the
class names, template, logit kind, input size and the preprocessing a caller must apply.
"""
from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from mmrl.fileio import dumps_json, write_bytes_atomic

FORMATS = ("onnx", "torch")
SUFFIXES = {"onnx": ".onnx", "torch": ".pt2"}
METADATA_KEY = "mmrl"            # ONNX metadata_props key
METADATA_FILE = "mmrl.json"      # .pt2 extra file
FILE_KIND = "mmrl-classifier"
FILE_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class MissingDependencyError(RuntimeError):
    """An optional package that this export/load path needs is not installed."""


def _require(module: str, why: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{why} needs the Python package {module!r}, which is not installed: "
                                     f"pip install 'mmrl[export]' (or pip install onnx onnxscript onnxruntime)"
                                     ) from e


def require_onnx_export() -> None:
    """Raise MissingDependencyError unless torch.onnx's exporter can run (onnxscript, onnx)."""
    _require("onnxscript", "ONNX export (torch.onnx's exporter)")
    _require("onnx", "ONNX export")


def format_for(path: str | Path, fmt: str | None = None) -> str:
    """The file format: ``fmt`` if given, else from the suffix (.onnx -> onnx, .pt2 -> torch)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format={fmt!r}; expected one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    for name, s in SUFFIXES.items():
        if suffix == s:
            return name
    raise ValueError(f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
                     f"name the file *.onnx or *.pt2, or choose --format onnx|torch")


def build_metadata(*, classnames: list[str], template: str, kind: str, image_size: int, method: str,
                   beta: float | None, alpha: float, logit_scale: float, backbone: str | None = None,
                   trained_on: str | None = None, trained_subsample: str | None = None,
                   dataset: str | None = None, run: str | None = None) -> dict[str, Any]:
    """The JSON metadata of an exported file (also ``Classifier.metadata``)."""
    from mmrl import __version__
    from mmrl.data import preprocessing_spec

    return {
        "kind": FILE_KIND, "version": FILE_VERSION, "mmrl_version": __version__,
        "classes": list(classnames), "template": template, "logits": kind,
        "input": {"name": INPUT_NAME, "shape": ["N", 3, image_size, image_size], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", len(classnames)], "dtype": "float32"},
        "input_size": image_size, "preprocessing": preprocessing_spec(image_size),
        "method": method, "beta": beta, "alpha": alpha, "logit_scale": logit_scale, "backbone": backbone,
        "trained_on": trained_on, "trained_subsample": trained_subsample, "dataset": dataset, "run": run,
    }


def export_program(module: torch.nn.Module, image_size: int) -> torch.export.ExportedProgram:
    """``torch.export`` of a (N, 3, S, S) -> (N, C) module on the CPU, N dynamic (>= 1)."""
    example = torch.zeros(2, 3, image_size, image_size)  # not 1: a size-1 example would specialise N
    batch = torch.export.Dim("N", min=1)
    with torch.no_grad():
        return torch.export.export(module.eval(), (example,), dynamic_shapes={"images": {0: batch}})


def write_exported(program: torch.export.ExportedProgram, metadata: dict[str, Any], path: str | Path,
                   fmt: str) -> Path:
    """Write ``program`` with ``metadata`` as ``fmt`` (atomically); returns the path."""
    path = Path(path)
    text = dumps_json(metadata)
    if fmt == "torch":
        buf = io.BytesIO()
        torch.export.save(program, buf, extra_files={METADATA_FILE: text})
        data = buf.getvalue()
    elif fmt == "onnx":
        require_onnx_export()
        size = metadata["input_size"]
        with contextlib.redirect_stdout(io.StringIO()):  # keep the command's output to its own lines
            onnx_program = torch.onnx.export(program, (torch.zeros(2, 3, size, size),), dynamo=True,
                                             input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                             external_data=False, verbose=False)
        proto = onnx_program.model_proto
        # name the dynamic batch dimension "N" (the exporter calls it s0, s12, ...)
        for value in (proto.graph.input[0], proto.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = "N"
        proto.metadata_props.add(key=METADATA_KEY, value=text)
        proto.producer_name = "mmrl"
        data = proto.SerializeToString()
    else:
        raise ValueError(f"format={fmt!r}; expected one of {', '.join(FORMATS)}")
    write_bytes_atomic(data, path)
    return path


def _check_metadata(meta: Any, path: Path) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("kind") != FILE_KIND:
        raise ValueError(f"{path}: not a classifier exported by mmrl (its {METADATA_KEY!r} metadata is "
                         "missing or of another kind)")
    if int(meta.get("version", 0)) > FILE_VERSION:
        raise ValueError(f"{path}: exported-file version {meta.get('version')} is newer than this mmrl reads "
                         f"({FILE_VERSION}); upgrade mmrl")
    return meta


def load_exported(path: str | Path):
    """Open an exported file: ``(run, metadata)`` where ``run(images (N, 3, H, W) float32 Tensor)
    -> (N, C) float32 Tensor`` on the CPU. The format is told from the content (a .pt2 is a zip
    archive, an ONNX file a protobuf), not the suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported classifier not found: {path}")
    if zipfile.is_zipfile(path):
        extra = {METADATA_FILE: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as e:  # torch raises RuntimeError, KeyError, ... on a foreign zip
            raise ValueError(f"{path}: not a torch.export file ({type(e).__name__}: {e})") from e
        try:
            meta = json.loads(extra[METADATA_FILE] or "null")
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: its {METADATA_FILE} is not JSON ({e})") from e
        meta = _check_metadata(meta, path)
        module = program.module()

        def run(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(images)
        return run, meta
    ort = _require("onnxruntime", "running an ONNX file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        raise ValueError(f"{path}: neither a torch.export (.pt2) archive nor a readable ONNX model "
                         f"({type(e).__name__}: {e})") from e
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: its {METADATA_KEY!r} metadata is not JSON ({e})") from e
    meta = _check_metadata(meta, path)
    name = meta["input"]["name"]

    def run_onnx(images: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {name: images.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)
    return run_onnx, meta
