"""Atomic file writes, and the one JSON reader.

Writes: a crash or ``kill -9`` leaves either the old file or the new one (written to a temporary
file in the same folder, fsynced, then ``os.replace``d). Reads: :func:`read_json` /
:func:`loads_json` fail with one line naming the file, whatever the file holds.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from mmrl.errors import UserError


class WriteFailedError(UserError, OSError):
    """A file could not be written (a full disk, a quota, an I/O error): the message names the file.

    An OSError, so code that treats a failed cache write as a warning keeps doing so; a UserError,
    so the command line prints it as one line. ``errno`` is the failed call's."""


def write_failed(path: str | Path, e: OSError) -> WriteFailedError:
    """The error to raise when writing ``path`` failed with ``e`` (the OS's own message often
    names no file, e.g. ``[Errno 28] No space left on device``)."""
    if isinstance(e, WriteFailedError):
        return e
    reason = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk or your quota is full: free space there, or write elsewhere)"
    err = WriteFailedError(f"cannot write {path}: {reason}")
    err.errno = e.errno
    return err


@contextlib.contextmanager
def open_atomic(path: str | Path, mode: str = "wb", newline: str | None = None) -> Iterator[IO]:
    """A file to write ``path`` through: a temporary file in the same folder, fsynced and
    ``os.replace``d over ``path`` when the block ends without an error.

    On any error the temporary file is removed (a full disk leaves no ``.*.tmp`` behind) and
    ``path`` keeps its old content; an OSError becomes :class:`WriteFailedError` naming ``path``.
    ``mode``: ``"wb"`` or ``"w"`` (UTF-8 text, ``newline`` as for :func:`open`: ``""`` for csv), for
    files too large to build in memory first.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": newline})) as f:
            yield f
            f.flush()  # a full disk shows here (or at fsync, on network file systems)
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise write_failed(path, e) from None
    finally:
        if tmp is not None:
            _remove_quietly(tmp)


def _remove_quietly(path: str | Path) -> None:
    """Remove a temporary file if it is there (cleaning up after a failed write must not fail)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read 1 MB at a time (run.json's record of the adapter file;
    the audit's duplicate images)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, os.replace
    (:func:`open_atomic`: WriteFailedError naming ``path`` when it fails, nothing left behind)."""
    with open_atomic(path) as f:
        f.write(data)


def write_text_atomic(text: str, path: str | Path) -> None:
    write_bytes_atomic(text.encode("utf-8"), path)


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN / +-Inf float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps_json(obj: Any, **kw: Any) -> str:
    """``json.dumps`` that always writes valid JSON: a NaN or infinite float (a diverged loss, an
    accuracy of no images) is written as ``null`` instead of Python's invalid ``NaN``/``Infinity``.
    Every JSON the project writes goes through here."""
    return json.dumps(_finite(obj), allow_nan=False, **kw)


def write_json_atomic(obj: Any, path: str | Path, *, indent: int | None = 2) -> None:
    write_text_atomic(dumps_json(obj, indent=indent) + "\n", path)


SAFETENSORS_HEADER_MAX = 100_000_000  # bytes: safetensors' own limit on the JSON header


def read_safetensors_header(path: str | Path) -> dict:
    """The JSON header of a .safetensors file (tensor entries and ``__metadata__``), read without
    torch and without reading the tensors. ValueError naming the file when it is not one."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= SAFETENSORS_HEADER_MAX:
            raise ValueError(f"{path}: not a safetensors file (header of {n} bytes)")
        try:
            header = loads_json(f.read(n), "its header")
        except JSONFileError as e:
            raise ValueError(f"{path}: not a safetensors file ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
    return header


class JSONFileError(UserError, ValueError):
    """A JSON file (or JSON text inside a file) that cannot be read; the message is one line naming
    the file. A ValueError, so callers that treat a damaged file as absent keep doing so."""


def loads_json(text: str | bytes, source: str | Path) -> Any:
    """``json.loads`` whose failures are one :class:`JSONFileError` naming ``source``.

    Every JSON the project reads goes through here (or :func:`read_json`): a file from
    elsewhere may be nested deeper than Python's parser recurses (``[[[[...``, a few bytes
    per level), which raises RecursionError -- not a ValueError -- and would otherwise escape
    as a traceback from wherever the file happens to be read.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONFileError(f"{source}: unreadable JSON: nested more than {JSON_DEPTH_MAX} levels deep "
                            "(no file mmrl reads needs more than a few)") from None
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError of bytes that are not UTF-8
        raise JSONFileError(f"{source}: not valid JSON ({e})") from None


# Python's parser gives up at about its recursion limit (1000 by default); said in the message only.
JSON_DEPTH_MAX = sys.getrecursionlimit()


# The largest JSON file mmrl reads: split files and run files are at most tens of MB (CoOp's
# Food-101 split, ~5 MB), a JSON manifest of ImageNet's 1.28 M training images ~90 MB. Parsed,
# a JSON byte costs Python at most ~24 bytes (``[{},{},...]``: a 64-byte dict per 3 bytes), so
# this bounds what any file handed to mmrl can cost at about 3 GB, and a typical one at ~6x its size.
JSON_MAX_BYTES = 128 * 2**20


def read_json(path: str | Path, max_bytes: int | None = None) -> Any:
    """The JSON value in ``path``. OSError when it cannot be opened; :class:`JSONFileError` naming
    the file when it is not JSON (also when nested too deeply, or not UTF-8), or when it holds
    more than ``max_bytes`` -- decided before it is parsed, and without reading more than
    ``max_bytes + 1`` bytes (a FIFO or /proc file reports no size). Default: JSON_MAX_BYTES."""
    max_bytes = JSON_MAX_BYTES if max_bytes is None else max_bytes
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        cap = f"{max_bytes // 2**20} MiB" if max_bytes >= 2**20 else f"{max_bytes} bytes"
        raise JSONFileError(f"{path}: more than {cap} of JSON; no file mmrl reads is "
                            "that large (a bigger manifest can be a CSV file: path,label[,split])")
    return loads_json(raw, path)


def read_json_or_none(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None when absent, unreadable or not an object
    (e.g. cut short by a writer that crashed, or nested too deeply to parse)."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


WRITE_TEST_BYTES = 4096  # what check_writable_dir writes: an empty file still fits on a full disk


def check_writable_dir(folder: str | Path, hint: str) -> Path:
    """Create ``folder`` (and parents) if needed and prove that files can be written in it.

    Raises :class:`mmrl.errors.NotWritableError` naming the folder, the reason and ``hint``
    (how to write elsewhere) -- before any work whose result would then be lost. A real
    file of a few KB is written, fsynced and removed: permission bits, read-only mounts and
    full disks (where creating an empty file still succeeds) all show.
    """
    from mmrl.errors import NotWritableError

    folder = Path(folder)
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mmrl-write-test.")
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * WRITE_TEST_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise NotWritableError(f"cannot write into {folder}: {reason}; {hint}") from e
    finally:
        if tmp is not None:
            _remove_quietly(tmp)
    return folder
