"""Reading image files (PIL), torch-free: one clear error naming the file, and a parallel check
of many files (`mmrl data verify`)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from mmrl.errors import UserError

from .core import Datum


class BadImageError(UserError, RuntimeError):
    """An image file is missing or cannot be decoded (the message names the file)."""


def load_image(path: str) -> Image.Image:
    """Open with PIL and convert to RGB; any failure becomes BadImageError naming `path`.

    (The commands add how to skip such images: ``--set data.skip_bad_images=true`` for
    ``mmrl train``, ``--skip-bad-images`` for ``mmrl eval`` / ``zeroshot``; in Python,
    ``ImageDataset(..., skip_bad=True)``.)
    """
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        if os.path.isdir(path):
            raise BadImageError(f"cannot read image {path}: it is a folder, not an image file") from e
        if not os.path.exists(path):
            raise BadImageError(f"cannot read image {path}: no such file") from e
        if isinstance(e, UnidentifiedImageError):  # its message repeats the path
            raise BadImageError(f"cannot read image {path}: not an image file that PIL can decode") from e
        reason = " ".join(str(e).split())
        raise BadImageError(f"cannot read image {path}: {type(e).__name__}: {reason}") from e


def find_bad_images(items: Sequence[Datum], *, decode: bool = True, workers: int | None = None
                    ) -> list[tuple[str, str]]:
    """[(path, reason)] of the items' images that are absent or (decode=True) fail to decode.

    Each path is checked once; the result follows the item order. Decoding
    runs in threads (PIL releases the GIL while decoding).
    """
    paths = list(dict.fromkeys(d.impath for d in items))

    def check(p: str) -> str | None:
        if not os.path.isfile(p):
            return "absent"
        if decode:
            try:
                load_image(p)
            except BadImageError as e:
                return str(e.__cause__ or e)
        return None

    n = workers or min(8, os.cpu_count() or 1)
    if decode and n > 1 and len(paths) > 1:
        with ThreadPoolExecutor(n) as pool:
            reasons = list(pool.map(check, paths, chunksize=64))
    else:
        reasons = [check(p) for p in paths]
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]
