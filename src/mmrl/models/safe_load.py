"""Read CLIP backbones and the authors' Dassl checkpoints without running code from the file.

Two kinds of files here cannot be read with ``torch.load(weights_only=True)``:

* OpenAI's CLIP files (``ViT-B-16.pt`` as downloaded by ``clip.load``) are TorchScript
  archives; ``torch.jit.load`` would compile and run the TorchScript code they carry.
* The released MMRL/MMRL++ checkpoints (Dassl ``model.pth.tar-N``) pickle optimizer and
  scheduler *objects* next to the state dict; ``weights_only=False`` would import and call
  whatever the pickle names.

Both are PyTorch zip archives with the same layout::

    <prefix>/data.pkl          pickle of the object tree (protocol 2)
    <prefix>/data/<key>        raw little-endian bytes of storage <key>
    <prefix>/byteorder         "little" (absent in old archives: little)
    <prefix>/version           archive format version
    <prefix>/code/__torch__/...  TorchScript source       (TorchScript only)
    <prefix>/constants.pkl, constants/<key>                (TorchScript only)

In ``data.pkl`` a tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
requires_grad, backward_hooks)`` and its storage a persistent id
``('storage', torch.<Dtype>Storage, key, location, numel)`` (numel in elements; in bytes for
``torch.UntypedStorage``). A TorchScript module is ``GLOBAL '__torch__.<module path> <Class>'``,
``EMPTY_TUPLE``, ``NEWOBJ``, then ``BUILD`` with a dict of its attributes in declaration order:
parameters, buffers and other tensors, plain values (``training``, ...) and submodules (again
``__torch__`` objects; ``ModuleList``/``Sequential`` children are named ``"0"``, ``"1"``, ...).

:class:`RestrictedUnpickler` reads such a pickle with an allow-list: tensors, storages, plain
containers, dtypes, ``torch.Size``/``torch.device``. Every other global (``__torch__`` classes,
``torch.optim.AdamW``, Dassl's scheduler, ``os.system``, ...) becomes an inert
:class:`Placeholder` class; calling it (REDUCE/NEWOBJ) only records the arguments and BUILD on it
only records the state. Nothing named in the file is imported or called. It is the pure-Python
``pickle._Unpickler`` (rather than the C ``pickle.Unpickler``) so that the object-creating opcodes
(REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST, BUILD) can be overridden, not only ``find_class``:
a stock BUILD can set ``__setstate__`` on an instance and then call it.

Nor may a file make us allocate much more memory than it occupies on disk:

* a storage record must be exactly as large as the pickle declares (numel * itemsize), and
  only those bytes are inflated, once, into the tensor's own buffer;
* records are read only while the archive inflates to at most :data:`MAX_INFLATION` times its
  size on disk (plus :data:`INFLATION_SLACK`), and no record above that slack may inflate
  more than :data:`MAX_INFLATION` times its compressed size: ``torch.save`` and
  ``torch.jit.save`` store weight records uncompressed (ratio 1) and deflate gains little on
  float weights (~1.1x), so a high ratio means a zip bomb (a 3 MB file inflating to 3 GB);
* ``data.pkl`` may hold at most :data:`MAX_PICKLE_BYTES` (real ones hold ~160 bytes per
  tensor: tens to hundreds of KB), a safetensors header at most :data:`MAX_SAFETENSORS_HEADER`;
* a tensor may not span more bytes than its storage holds (numel * itemsize <= the storage's
  bytes): expanded (stride-0) or overlapping views, which saved weights never are, would turn
  a small record into an arbitrarily large tensor as soon as it is copied or cast.

:func:`check_weights` refuses NaN / Inf and non-float tensors where float weights are expected.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

__all__ = [
    "CheckpointFormatError",
    "Placeholder",
    "RestrictedUnpickler",
    "check_weights",
    "load_clip_state_dict",
    "load_dassl_checkpoint",
    "read_torch_zip",
]


class CheckpointFormatError(ValueError):
    """A file is not in a format we can read safely, or is damaged."""


# What a file may make us allocate (see the module docstring for why these values).
MAX_INFLATION = 10                   # inflated / on-disk bytes: of the archive, and of each record
INFLATION_SLACK = 1 << 20            # 1 MiB: small archives and records are not held to the ratio
MAX_PICKLE_BYTES = 16 << 20          # data.pkl; 16 MiB is ~100,000 tensors
MAX_SAFETENSORS_HEADER = 16 << 20    # its JSON header (safetensors itself allows 100 MB)
_READ_CHUNK = 16 << 20               # records are inflated into their buffer this much at a time


# ----------------------------------------------------------------------------- placeholders
class Placeholder:
    """Inert stand-in for a class or function named in a pickle.

    Each global the unpickler does not allow becomes a fresh subclass whose ``module`` and
    ``name`` say what the file asked for. "Calling" it (REDUCE/NEWOBJ/OBJ) creates an instance
    that only keeps ``ph_args``/``ph_kwargs``; BUILD only stores ``ph_state``; the items that
    pickle feeds to dict/list/set subclasses (SETITEMS/APPENDS/ADDITEMS, e.g. an optimizer's
    ``defaultdict`` state keyed by parameters) go to ``ph_items``/``ph_list``. No method of the
    named class ever runs, since the class is never imported.
    """

    module: str = "?"
    name: str = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        self = object.__new__(cls)
        object.__setattr__(self, "ph_args", args)
        object.__setattr__(self, "ph_kwargs", kwargs)
        object.__setattr__(self, "ph_state", None)
        object.__setattr__(self, "ph_items", [])  # (key, value) pairs: keys may be unhashable
        object.__setattr__(self, "ph_list", [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # args are kept by __new__
        pass

    # what the SETITEM(S), APPEND(S) and ADDITEMS opcodes call
    def __setitem__(self, key: Any, value: Any) -> None:
        self.ph_items.append((key, value))

    def append(self, item: Any) -> None:
        self.ph_list.append(item)

    def extend(self, items: Any) -> None:
        self.ph_list.extend(items)

    def add(self, item: Any) -> None:
        self.ph_list.append(item)

    def __repr__(self) -> str:
        return f"<placeholder {self.module}.{self.name}>"


def _is_placeholder_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Placeholder)


# ----------------------------------------------------------------------------- storages
# Storage classes as named in pickles -> element dtype (torch.save and TorchScript both
# write the legacy typed-storage class; an untyped storage counts bytes).
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
# dtypes pickle as GLOBAL 'torch <name>'; the table is built from torch itself, not the file.
_DTYPES: dict[str, torch.dtype] = {n: getattr(torch, n) for n in dir(torch)
                                   if isinstance(getattr(torch, n), torch.dtype)}


class _StorageType:
    """What GLOBAL 'torch FloatStorage' etc. resolve to: just the element dtype."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"<storage type {self.name}>"


class _LoadedStorage:
    """A storage record read from the archive, viewed with one element dtype."""

    def __init__(self, untyped: torch.UntypedStorage, dtype: torch.dtype, key: str) -> None:
        self.untyped, self.dtype, self.key = untyped, dtype, key


def _check_int(v: object, what: str) -> int:
    if type(v) is not int or v < 0:
        raise pickle.UnpicklingError(f"{what} must be a non-negative int, got {v!r}")
    return v


def _view_problem(sizes: tuple[int, ...], strides: tuple[int, ...], itemsize: int, nbytes: int) -> str | None:
    """Why a tensor of this geometry may not view a storage of ``nbytes`` bytes, or None.

    A tensor spanning more bytes than its storage holds (numel * itemsize > nbytes) repeats
    elements: an expanded (stride-0) or overlapping view. Saved weights never are one, and a
    small record viewed so becomes a huge tensor when copied or cast (a 9 MB file asking 40 GB).
    """
    need = math.prod(sizes) * itemsize
    if need > nbytes:
        return (f"tensor of size {sizes} with strides {strides} spans {need} bytes, more than "
                f"the {nbytes} bytes its storage holds (an expanded or overlapping view; saved weights never are)")
    return None


def _make_tensor(storage: object, offset: object, size: object, stride: object) -> Tensor:
    """A tensor viewing ``storage`` (checked against the storage's real size; ``set_``
    would silently grow a too-small storage)."""
    if not isinstance(storage, _LoadedStorage):
        raise pickle.UnpicklingError(f"tensor rebuilt from {storage!r}, not from a storage record")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise pickle.UnpicklingError(f"bad tensor geometry size={size!r} stride={stride!r}")
    offset = _check_int(offset, "storage offset")
    sizes = tuple(_check_int(s, "tensor size") for s in size)
    strides = tuple(_check_int(s, "tensor stride") for s in stride)
    itemsize = torch.empty((), dtype=storage.dtype).element_size()
    if math.prod(sizes) > 0:
        last = offset + sum((n - 1) * s for n, s in zip(sizes, strides))
        if (last + 1) * itemsize > storage.untyped.nbytes():
            raise pickle.UnpicklingError(
                f"tensor of size {sizes} at offset {offset} overruns storage record "
                f"{storage.key!r} ({storage.untyped.nbytes()} bytes)")
    problem = _view_problem(sizes, strides, itemsize, storage.untyped.nbytes())
    if problem:
        raise pickle.UnpicklingError(f"{problem} (storage record {storage.key!r})")
    t = torch.empty(0, dtype=storage.dtype)
    return t.set_(storage.untyped, offset, torch.Size(sizes), strides)


# Safe re-implementations of the functions torch pickles name. They accept only what a real
# file holds and never look anything up by a name from the file.
def _rebuild_tensor(storage, storage_offset, size, stride):  # noqa: ANN001, ANN202
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,  # noqa: ANN001, ANN202
                       backward_hooks=None, metadata=None):
    return _make_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,  # noqa: ANN001, ANN202
                       dtype, metadata=None):
    if not isinstance(dtype, torch.dtype) or not isinstance(storage, _LoadedStorage):
        raise pickle.UnpicklingError("bad _rebuild_tensor_v3 arguments")
    return _make_tensor(_LoadedStorage(storage.untyped, dtype, storage.key), storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):  # noqa: ANN001, ANN202
    if not isinstance(data, Tensor):
        raise pickle.UnpicklingError(f"parameter data is {data!r}, not a tensor")
    return data  # a plain tensor: the caller decides what is trainable


_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):  # noqa: ANN001, ANN202
    # torch wraps tensor subclasses / tensors with python state this way; only the inner
    # rebuild runs, type and state are dropped.
    if func not in _TENSOR_REBUILDERS or not isinstance(args, tuple):
        raise pickle.UnpicklingError(f"refusing _rebuild_from_type_v2 with {func!r}")
    return func(*args)


def _codecs_encode(obj, encoding="utf-8"):  # noqa: ANN001, ANN202
    # protocol 2 writes bytes as _codecs.encode(latin1_str, 'latin1')
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return obj.encode("latin1")


def _reconstructor(cls, base, state):  # noqa: ANN001, ANN202
    # copyreg._reconstructor (protocols 0/1): only ever builds a placeholder
    if not _is_placeholder_class(cls):
        raise pickle.UnpicklingError(f"refusing copyreg._reconstructor for {cls!r}")
    return cls(base, state)


def _identity_tag(value, type_str):  # noqa: ANN001, ANN202
    return value  # torch.jit._pickle.restore_type_tag: the tag is only type info


def _as_list(data):  # noqa: ANN001, ANN202
    if not isinstance(data, (list, tuple)):
        raise pickle.UnpicklingError(f"expected a list, got {type(data).__name__}")
    return list(data)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "tuple"): tuple,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.jit._pickle", "restore_type_tag"): _identity_tag,
    ("torch.jit._pickle", "build_intlist"): _as_list,
    ("torch.jit._pickle", "build_doublelist"): _as_list,
    ("torch.jit._pickle", "build_boollist"): _as_list,
    ("torch.jit._pickle", "build_tensorlist"): _as_list,
}
# What REDUCE/NEWOBJ/OBJ may call besides placeholder classes (compared by identity).
_CALLABLE_IDS = frozenset(id(v) for v in _SAFE_GLOBALS.values())
_ALLOWED_CLASSES = (collections.OrderedDict, dict, list, tuple, set, frozenset, complex, torch.Size)


# ----------------------------------------------------------------------------- archive + unpickler
class _ZipArchive:
    """A PyTorch zip archive: finds ``<prefix>/data.pkl`` and serves ``data/<key>`` records,
    inflating no more than the module docstring's limits allow."""

    def __init__(self, path: Path, zf: zipfile.ZipFile) -> None:
        self.path, self.zf = path, zf
        self._disk_bytes = path.stat().st_size
        self._inflated = 0  # bytes of all records read so far
        names = zf.namelist()
        pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise CheckpointFormatError(
                f"{path}: zip archive that is neither a TorchScript archive nor a torch.save file "
                f"(expected exactly one '<prefix>/data.pkl', found {pkls or 'none'})")
        self.prefix = pkls[0][: -len("data.pkl")]
        self.is_torchscript = (f"{self.prefix}constants.pkl" in names
                               or any(n.startswith(f"{self.prefix}code/") for n in names))
        order = f"{self.prefix}byteorder"
        if order in names:
            info = zf.getinfo(order)
            if info.file_size > 16 or bytes(self.inflate(info)).strip() not in (b"little", b""):
                raise CheckpointFormatError(f"{path}: its byteorder record is not 'little': big-endian (or damaged) "
                                            "archives are not supported")
        self._storages: dict[str, torch.UntypedStorage] = {}

    def inflate(self, info: zipfile.ZipInfo) -> bytearray:
        """The record's bytes, inflated once into a buffer of its declared size (``zipfile``
        never returns more than that), after the inflation limits are checked."""
        size = info.file_size
        if size > INFLATION_SLACK and size > MAX_INFLATION * info.compress_size:
            raise CheckpointFormatError(
                f"{self.path}: record {info.filename!r} would inflate from {info.compress_size} to {size} bytes, "
                f"more than {MAX_INFLATION}x (torch.save stores records uncompressed): refusing a likely zip bomb")
        self._inflated += size
        if self._inflated > MAX_INFLATION * self._disk_bytes + INFLATION_SLACK:
            raise CheckpointFormatError(
                f"{self.path}: its records would inflate to {self._inflated} bytes (record {info.filename!r} "
                f"included), more than {MAX_INFLATION}x its {self._disk_bytes} bytes on disk: refusing a likely zip bomb")
        buf = bytearray(size)
        view = memoryview(buf)
        try:
            with self.zf.open(info) as f:
                done = 0
                while done < size:  # in chunks: f.read(size) would hold a second full-size copy
                    n = f.readinto(view[done:done + _READ_CHUNK])
                    if not n:
                        raise EOFError("fewer bytes than its header declares")
                    done += n
        except (zlib.error, EOFError, zipfile.BadZipFile, NotImplementedError) as e:  # bad data, CRC, method
            raise CheckpointFormatError(f"{self.path}: record {info.filename!r} is damaged: {e}") from e
        return buf

    def storage(self, key: str, nbytes: int) -> torch.UntypedStorage:
        """Storage record ``key``, which must hold exactly the ``nbytes`` the pickle declares."""
        if key not in self._storages:
            name = f"{self.prefix}data/{key}"
            try:
                info = self.zf.getinfo(name)
            except KeyError:
                raise pickle.UnpicklingError(f"storage record {name!r} is missing") from None
            if info.file_size != nbytes:  # larger: bytes that only a zip bomb would need
                raise pickle.UnpicklingError(
                    f"storage record {name!r} has {info.file_size} bytes, the pickle declares {nbytes}")
            buf = self.inflate(info)
            # frombuffer shares buf's memory (no copy); the storage keeps buf alive
            self._storages[key] = (torch.frombuffer(buf, dtype=torch.uint8).untyped_storage()
                                   if nbytes else torch.UntypedStorage(0))
        elif self._storages[key].nbytes() != nbytes:
            raise pickle.UnpicklingError(f"storage record {key!r} declared with {nbytes} bytes and with "
                                         f"{self._storages[key].nbytes()}")
        return self._storages[key]


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Unpickler that never imports or calls anything the file names (see module docstring).

    Args:
        file: binary file holding the pickle.
        archive: serves storage records for persistent ids; None forbids tensors.
    """

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: io.BufferedIOBase, archive: _ZipArchive | None = None) -> None:
        super().__init__(file, encoding="utf-8")
        self._archive = archive
        self._placeholders: dict[tuple[str, str], type] = {}

    # --- name lookup
    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError("global names must be strings")
        if self.proto < 3 and self.fix_imports:  # protocol 2 writes Python 2 names (__builtin__ ...)
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        key = (module, name)
        if key not in self._placeholders:
            self._placeholders[key] = type("Placeholder", (Placeholder,), {"module": module, "name": name})
        return self._placeholders[key]

    def persistent_load(self, pid: Any) -> _LoadedStorage:
        if self._archive is None:
            raise pickle.UnpicklingError("persistent id outside a zip archive")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, stype, key, _location, numel = pid  # location ignored: everything loads on the CPU
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or not key.isalnum():
            raise pickle.UnpicklingError(f"bad storage reference {pid!r}")
        itemsize = torch.empty((), dtype=stype.dtype).element_size()
        nbytes = _check_int(numel, "storage numel") * itemsize
        return _LoadedStorage(self._archive.storage(key, nbytes), stype.dtype, key)

    # --- the opcodes that create objects or set their state
    def _call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise pickle.UnpicklingError("call arguments must be a tuple and a dict")
        if _is_placeholder_class(func) or id(func) in _CALLABLE_IDS:
            return func(*args, **kwargs)
        raise pickle.UnpicklingError(f"refusing to call {func!r}")

    def _new(self, cls: Any, args: Any, kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise pickle.UnpicklingError("NEWOBJ arguments must be a tuple and a dict")
        if _is_placeholder_class(cls):
            return cls(*args, **kwargs)
        if isinstance(cls, type) and cls in _ALLOWED_CLASSES:
            return cls.__new__(cls, *args, **kwargs)
        raise pickle.UnpicklingError(f"refusing to instantiate {cls!r}")

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _load_newobj(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args)

    def _load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args, kwargs)

    def _instantiate(self, klass: Any, args: Any) -> None:  # used by the OBJ and INST opcodes
        self.append(self._call(klass, tuple(args)))

    def _load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Placeholder):
            object.__setattr__(inst, "ph_state", state)
        # Anything else (an OrderedDict's _metadata, a tensor's legacy state) is dropped on
        # purpose: a stock BUILD may setattr arbitrary names, including __setstate__.

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.NEWOBJ[0]] = _load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _load_newobj_ex
    dispatch[pickle.BUILD[0]] = _load_build


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointFormatError(f"{path}: damaged zip archive: {e}") from e


def _unpickle(archive: _ZipArchive) -> Any:
    info = archive.zf.getinfo(f"{archive.prefix}data.pkl")
    if info.file_size > MAX_PICKLE_BYTES:
        raise CheckpointFormatError(f"{archive.path}: {info.filename} holds {info.file_size} bytes, more than the "
                                    f"{MAX_PICKLE_BYTES} allowed (real ones hold ~160 bytes per tensor)")
    data = archive.inflate(info)
    try:
        return RestrictedUnpickler(io.BytesIO(data), archive).load()
    except CheckpointFormatError:  # the archive's limits, already naming the file
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError, IndexError,
            AttributeError, RuntimeError, OverflowError, zipfile.BadZipFile) as e:
        raise CheckpointFormatError(f"{archive.path}: cannot read {archive.prefix}data.pkl safely: {e}") from e


def read_torch_zip(path: str | Path) -> tuple[Any, bool]:
    """Unpickle the object tree of a PyTorch zip archive (torch.save or TorchScript) safely.

    Returns:
        (obj, is_torchscript): tensors are real CPU tensors, every non-allow-listed object a
        :class:`Placeholder`.
    """
    path = _existing(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(f"{path}: not a PyTorch zip archive (legacy torch.save files are "
                                    "not supported; re-save it with a current torch)")
    with _open_zip(path) as zf:
        archive = _ZipArchive(path, zf)
        return _unpickle(archive), archive.is_torchscript


# ----------------------------------------------------------------------------- public loaders
def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return path


def _module_tensors(root: Placeholder, out: dict[str, Tensor]) -> None:
    """Flatten a TorchScript module tree: tensor attributes by dotted name, walking into
    submodules (``__torch__`` objects). Non-tensor attributes are skipped. The walk keeps its own
    stack: a file may nest modules far deeper than Python's recursion limit."""
    seen: set[int] = set()
    todo: list[tuple[Placeholder, str]] = [(root, "")]
    while todo:
        obj, prefix = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        state = obj.ph_state
        if not isinstance(state, dict):
            continue
        subs = []
        for name, value in state.items():
            if not isinstance(name, str):
                continue
            if isinstance(value, Tensor):
                out[prefix + name] = value
            elif isinstance(value, Placeholder) and value.module.startswith("__torch__"):
                subs.append((value, f"{prefix}{name}."))
        todo.extend(reversed(subs))  # depth first, in the file's order, as torch.jit's state_dict


def _torchscript_state_dict(path: Path, root: Any) -> dict[str, Tensor]:
    if not (isinstance(root, Placeholder) and root.module.startswith("__torch__")):
        raise CheckpointFormatError(f"{path}: TorchScript archive whose data.pkl does not hold a module "
                                    f"(found {type(root).__name__})")
    out: dict[str, Tensor] = {}
    _module_tensors(root, out)
    if not out:
        raise CheckpointFormatError(f"{path}: TorchScript archive without any tensors")
    return out


def _plain_state_dict(path: Path, obj: Any) -> dict[str, Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, Placeholder):  # e.g. a pickled nn.Module, which torch.load would rebuild
        raise CheckpointFormatError(f"{path}: holds a pickled {obj.module}.{obj.name} object, not a state dict; "
                                    "refusing to rebuild objects from a file (save its state_dict() instead)")
    if not isinstance(obj, dict):
        raise CheckpointFormatError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out = {(k[len("module."):] if k.startswith("module.") else k): v
           for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not out:
        raise CheckpointFormatError(f"{path}: state dict without tensors")
    return out


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # 8-byte little-endian header length, then the JSON header
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def load_clip_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read an OpenAI-format CLIP backbone without executing anything from it.

    Accepts OpenAI's TorchScript archive (as ``clip.load`` downloads), a ``torch.save`` state
    dict (optionally under ``"state_dict"``; a leading ``module.`` is stripped) or a
    ``.safetensors`` file.

    Returns:
        name -> CPU tensor, dtypes as stored (OpenAI ships fp16). For a TorchScript archive the
        keys are those of ``torch.jit.load(path).state_dict()``: every tensor attribute of every
        submodule, e.g. ``visual.conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``,
        ``positional_embedding``, ``logit_scale`` (OpenAI's files add 0-dim
        ``input_resolution``/``context_length``/``vocab_size``; traced open_clip models their
        ``attn_mask`` buffer).

    Raises:
        CheckpointFormatError: the file is damaged, not one of these formats, or exceeds the
            limits of the module docstring (a zip bomb, an expanded view, a huge header).
    """
    path = _existing(path)
    if _is_safetensors(path):
        with open(path, "rb") as f:  # safetensors checks shapes against the data, not the header's size
            header = int.from_bytes(f.read(8), "little")
        if header > MAX_SAFETENSORS_HEADER:
            raise CheckpointFormatError(f"{path}: safetensors header of {header} bytes, more than the "
                                        f"{MAX_SAFETENSORS_HEADER} allowed (real ones hold ~100 bytes per tensor)")
        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointFormatError(f"{path}: not a readable safetensors file: {e}") from e
    if zipfile.is_zipfile(path):  # TorchScript or torch.save: both through the restricted reader
        with _open_zip(path) as zf:
            archive = _ZipArchive(path, zf)
            obj = _unpickle(archive)
        return _torchscript_state_dict(path, obj) if archive.is_torchscript else _plain_state_dict(path, obj)
    try:  # legacy (pre-zip, uncompressed) torch.save: the weights-only unpickler suffices
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointFormatError(f"{path}: torch.save file holding objects other than tensors and "
                                    f"plain containers; refusing to unpickle it ({str(e).splitlines()[0]})") from e
    except Exception as e:  # torch raises many types for garbage input
        raise CheckpointFormatError(f"{path}: not a recognised CLIP weights format (expected an OpenAI "
                                    f"TorchScript .pt, a torch.save state dict or .safetensors): {e}") from e
    out = _plain_state_dict(path, obj)
    for name, t in out.items():  # the restricted reader checks this for zip archives
        problem = _view_problem(tuple(t.shape), t.stride(), t.element_size(), t.untyped_storage().nbytes())
        if problem:
            raise CheckpointFormatError(f"{path}: {name!r}: {problem}")
    return out


def load_dassl_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read the tensors of ``state_dict`` from a Dassl checkpoint (``model.pth.tar-N``).

    The file is a torch.save zip of ``{"state_dict", "epoch", "optimizer", "scheduler",
    "val_result"}``; the optimizer and scheduler are left as inert placeholders.

    Returns:
        the state dict's tensors under their original names (prefixes such as ``module.``
        kept), as stored (CPU).
    """
    obj, is_torchscript = read_torch_zip(path)
    if is_torchscript:
        raise CheckpointFormatError(f"{path}: is a TorchScript archive, not a Dassl checkpoint")
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        found = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointFormatError(f"{path}: not a Dassl checkpoint: no 'state_dict' dict (found {found})")
    out = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, Tensor)}
    skipped = [str(k) for k in sd if not (isinstance(k, str) and isinstance(sd[k], Tensor))]
    if not out:
        raise CheckpointFormatError(f"{path}: 'state_dict' holds no tensors")
    if skipped:
        warnings.warn(f"{path}: ignoring non-tensor entries of state_dict: {skipped[:10]}", stacklevel=2)
    return out


def check_weights(tensors: Mapping[str, Tensor], where: str) -> None:
    """Refuse tensors that cannot be trained float weights, naming the first one.

    A float tensor holding NaN or +-Inf, or a tensor of any other dtype (an integer, bool or
    complex tensor where a float weight is expected), means a damaged or doctored file; loaded
    into a model it would only surface later as NaN logits or silently cast garbage. Callers
    leave out the entries that are legitimately not float weights (OpenAI's 0-dim int
    ``input_resolution``/``context_length``/``vocab_size``, a causal ``attn_mask`` with -inf).

    Raises:
        CheckpointFormatError: ``"{where}: tensor {name!r} ..."`` saying what is wrong.
    """
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise CheckpointFormatError(f"{where}: tensor {name!r} is {str(t.dtype).removeprefix('torch.')}, "
                                        "where a floating-point weight is expected")
        if not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise CheckpointFormatError(f"{where}: tensor {name!r} holds {nan} NaN and {inf} infinite values "
                                        f"(of {t.numel()}); weights must be finite")
