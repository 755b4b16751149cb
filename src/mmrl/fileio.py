"""Atomic file writes: a crash or ``kill -9`` leaves either the old file or the new one.

Written to a temporary file in the same folder, fsynced, then ``os.replace``d.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text_atomic(text: str, path: str | Path) -> None:
    write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(obj: Any, path: str | Path, *, indent: int | None = 2) -> None:
    write_text_atomic(json.dumps(obj, indent=indent) + "\n", path)


def read_json_or_none(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None when absent, unreadable or not an object
    (e.g. cut short by a writer that crashed)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_writable_dir(folder: str | Path, hint: str) -> Path:
    """Create ``folder`` (and parents) if needed and prove that files can be created in it.

    Raises :class:`mmrl.errors.NotWritableError` naming the folder, the reason and ``hint``
    (how to write elsewhere) -- before any work whose result would then be lost. A real
    file is created and removed: permission bits, read-only mounts and full disks all show.
    """
    from mmrl.errors import NotWritableError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mmrl-write-test.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise NotWritableError(f"cannot write into {folder}: {reason}; {hint}") from e
    return folder
