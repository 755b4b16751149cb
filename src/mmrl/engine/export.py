"""Exported classifier files: a trained run frozen for one class set, as ONNX or ``torch.export``.

One file maps a preprocessed image batch ``images`` (N, 3, H, W) float32 to class logits
``logits`` (N, C) float32 (N dynamic), with everything image-independent precomputed
(:class:`mmrl.models.frozen.FrozenClassifier`), and carries its metadata as JSON:

* ONNX (``.onnx``): the model's ``metadata_props`` entry ``mmrl``; run with onnxruntime
  (``session.get_modelmeta().custom_metadata_map["mmrl"]``). A plain protobuf: loading it
  executes nothing.
* torch (``.pt2``): ``torch.export.save`` with the extra file ``mmrl.json``; load with
  ``torch.export.load(path, extra_files={"mmrl.json": ""}).module()``. ``torch.export.load``
  may unpickle parts of the archive, and unpickling runs whatever code the file's author put
  there: :func:`load_exported` opens a ``.pt2`` only when the caller says it trusts the file.

The format of a file to load is its suffix (or the caller's explicit choice), never guessed from
its content: a zip archive renamed ``.onnx`` is parsed as ONNX (and refused), not unpickled.

Neither needs ``mmrl`` (nor open_clip) to run. The metadata (:func:`build_metadata`) holds the
class names, template, logit kind, input size and the preprocessing a caller must apply.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import zipfile
from pathlib import Path
from typing import Any

import torch

from mmrl import __version__
from mmrl.data import preprocessing_spec
from mmrl.errors import UntrustedFileError, clip, shown
from mmrl.fileio import JSONFileError, dumps_json, loads_json, write_bytes_atomic

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


def format_for(path: str | Path, fmt: str | None = None, choose: str = "--format onnx|torch") -> str:
    """The file format: ``fmt`` if given, else from the suffix (.onnx -> onnx, .pt2 -> torch);
    ``choose`` says how the caller gives ``fmt`` (for the error when the suffix is neither)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format={shown(fmt)}; expected one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    for name, s in SUFFIXES.items():
        if suffix == s:
            return name
    raise ValueError(f"{path}: cannot tell the format from the suffix {shown(suffix or '(none)')}; "
                     f"name the file *.onnx or *.pt2, or choose {choose}")


def build_metadata(*, classnames: list[str], template: str, kind: str, resizing: dict, method: str,
                   beta: float | None, alpha: float, logit_scale: float, backbone: str | None = None,
                   trained_on: str | None = None, trained_subsample: str | None = None,
                   dataset: str | None = None, run: str | None = None) -> dict[str, Any]:
    """The JSON metadata of an exported file (also ``Classifier.metadata``); ``resizing`` is the
    backbone's :func:`mmrl.models.towers.image_resizing`."""
    image_size = resizing["resolution"]
    return {
        "kind": FILE_KIND, "version": FILE_VERSION, "mmrl_version": __version__,
        "classes": list(classnames), "template": template, "logits": kind,
        "input": {"name": INPUT_NAME, "shape": ["N", 3, image_size, image_size], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", len(classnames)], "dtype": "float32"},
        "input_size": image_size,
        "preprocessing": preprocessing_spec(image_size, resizing["interpolation"], resizing["resize_mode"]),
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
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path}: its {METADATA_KEY!r} metadata has version {shown(version)}; expected an integer")
    if version > FILE_VERSION:
        raise ValueError(f"{path}: exported-file version {version} is newer than this mmrl reads "
                         f"({FILE_VERSION}); upgrade mmrl")
    return meta


def load_exported(path: str | Path, fmt: str | None = None, *, trust_pt2: bool = False):
    """Open an exported file: ``(run, metadata)`` where ``run(images (N, 3, H, W) float32 Tensor)
    -> (N, C) float32 Tensor`` on the CPU.

    The format is ``fmt`` (``onnx`` / ``torch``) or the suffix (:func:`format_for`), never the
    content. An ONNX file is parsed by onnxruntime and nothing else: plain data, whoever wrote it.
    A ``.pt2`` file is opened with ``torch.export.load``, which may unpickle parts of the archive;
    unpickling can run any code the file's author put in it, so it is opened only with
    ``trust_pt2=True`` (UntrustedFileError otherwise, before the file is read).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported classifier not found: {path}")
    fmt = format_for(path, fmt, choose="format='onnx' or 'torch'")
    if fmt == "torch":
        if not trust_pt2:
            raise UntrustedFileError(
                f"{path}: loading a .pt2 file may run its author's code (torch.export.load unpickles); "
                "pass trust_pt2=True only for a file you would run as a program, or use an .onnx export")
        return _load_pt2(path)
    return _load_onnx(path)


def _load_pt2(path: Path):
    """A .pt2 file the caller trusts (see :func:`load_exported`)."""
    extra = {METADATA_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as e:  # torch raises RuntimeError, KeyError, ... on a foreign zip
        raise ValueError(f"{path}: not a torch.export file ({type(e).__name__}: {clip(str(e))})") from e
    try:
        meta = loads_json(extra[METADATA_FILE] or "null", f"{path}: its {METADATA_FILE}")
    except JSONFileError as e:
        raise ValueError(str(e)) from None
    meta = _check_metadata(meta, path)
    module = program.module()

    def run(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(images)
    return run, meta


def _load_onnx(path: Path):
    """An ONNX file, parsed as ONNX only (a protobuf: parsing it executes nothing)."""
    ort = _require("onnxruntime", "running an ONNX file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        detail = clip(str(e).rsplit("failed:", 1)[-1].strip())  # "Load model from PATH failed:<why>"
        # the content is looked at only to say what the file is: it is never opened as anything but ONNX
        zipped = "; it is a zip archive (a torch.export .pt2?), never opened as one here" \
            if zipfile.is_zipfile(path) else ""
        raise ValueError(f"{path}: not an ONNX model (onnxruntime: {detail}){zipped}; expected an ONNX "
                         "file written by mmrl export") from e
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    try:
        meta = loads_json(raw, f"{path}: its {METADATA_KEY!r} metadata") if raw else None
    except JSONFileError as e:
        raise ValueError(str(e)) from None
    meta = _check_metadata(meta, path)
    name = meta["input"]["name"]

    def run_onnx(images: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {name: images.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)
    return run_onnx, meta
