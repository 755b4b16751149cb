"""Devices, precision, logging and progress display shared by training and evaluation."""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import torch
from tqdm import tqdm

from mmrl.config import ConfigError
from mmrl.errors import shown
from mmrl.models import load_backbone

LOG = logging.getLogger("mmrl")
T = TypeVar("T")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# --------------------------------------------------------------------------- device / precision
def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda``/``cuda:N`` checked to exist."""
    spec = "auto" if spec is None else str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as e:
        raise ConfigError(f"device = {shown(spec)}: expected auto, cpu, cuda or cuda:N ({e})") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device = {shown(spec)}, but CUDA is not available here (use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device = {shown(spec)}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on other GPUs; on the CPU bf16 where the CPU
    computes bf16 natively (AVX512-BF16 / AMX), else fp32. The decision and its reason:
    :func:`mmrl.engine.precision.choose_precision`."""
    from mmrl.engine.precision import choose_precision  # here: precision imports this module

    return choose_precision(precision, device)[0]


def autocast(device: torch.device, precision: str):
    """Autocast context for ``bf16``/``fp16``; a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


# --------------------------------------------------------------------------- logging
# ``LOG.error(..., extra=FILE_ONLY)``: into train.log, not onto the console (where the command
# line prints the same error as its one line).
FILE_ONLY = {"mmrl_file_only": True}


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "mmrl_file_only", False)


class _LogFileHandler(logging.FileHandler):
    """A FileHandler whose failed write (a full disk) is said once, as one line naming the file:
    logging's own handler prints a traceback for every record it cannot write. The run goes on;
    its results are written by the code that writes them, which fails naming its own file."""

    _warned = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self._warned:
            self._warned = True
            err = sys.exc_info()[1]
            reason = getattr(err, "strerror", None) or err
            print(f"mmrl: warning: cannot write {self.baseFilename}: {reason}; its log lines are lost",
                  file=sys.stderr, flush=True)


class _Formatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def log_to_file(path: str | Path) -> Iterator[None]:
    """Append the ``mmrl`` logger's records (INFO and up) to ``path`` while inside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _LogFileHandler(path, encoding="utf-8")
    handler.setFormatter(_Formatter())
    handler.setLevel(logging.INFO)
    old_level = LOG.level
    if LOG.getEffectiveLevel() > logging.INFO:
        LOG.setLevel(logging.INFO)
    LOG.addHandler(handler)
    try:
        yield
    finally:
        LOG.removeHandler(handler)
        handler.close()
        LOG.setLevel(old_level)


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment, not the one at set-up: a stderr replaced
    later (a notebook, a test's capture, a redirect) is followed instead of written after close."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_cli_logging(verbose: bool = False) -> None:
    """Console output of the ``mmrl`` logger for the command line (stderr, once)."""
    if any(getattr(h, "_mmrl_console", False) for h in LOG.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_not_file_only)
    handler._mmrl_console = True  # type: ignore[attr-defined]
    LOG.addHandler(handler)
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)


# --------------------------------------------------------------------------- progress
def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def use_tty_progress(progress: bool | None) -> bool:
    """None = a tqdm bar when stderr is a terminal."""
    if progress is not None:
        return progress
    return sys.stderr.isatty()


class Progress:
    """Iterate with a tqdm bar (ETA) on a TTY, else plain log lines every ``interval`` s.

    ``set(**values)`` shows running values (loss, accuracy) in the bar or the lines.
    """

    def __init__(self, iterable: Iterable[T], total: int, desc: str, tty: bool, interval: float = 30.0):
        self.iterable, self.total, self.desc, self.interval = iterable, total, desc, interval
        self.values: dict[str, str] = {}
        self.bar = None
        if tty:
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def set(self, **values) -> None:
        self.values = {k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()}
        if self.bar is not None:
            self.bar.set_postfix(self.values, refresh=False)

    def __iter__(self) -> Iterator[T]:
        start = last = time.monotonic()
        done = 0
        try:
            for item in self.iterable:
                yield item
                done += 1
                if self.bar is not None:
                    self.bar.update(1)
                    continue
                now = time.monotonic()
                if now - last >= self.interval and done < self.total:
                    last = now
                    eta = (now - start) / done * (self.total - done)
                    extra = " ".join(f"{k} {v}" for k, v in self.values.items())
                    LOG.info("%s: %d/%d %s (ETA %s)", self.desc, done, self.total, extra, _fmt_time(eta))
        finally:
            if self.bar is not None:
                self.bar.close()


def check_method_fits(backbone, method_cfg, source: str | None = None) -> None:
    """ConfigError (naming ``source``, e.g. the run's config.yaml) when the method's settings do not
    fit the backbone (J deeper than a tower): the one check before a model is built on it."""
    try:
        method_cfg.validate(backbone.vision_layers, backbone.text_layers)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}" if source else str(e)) from e


def load_backbone_checked(spec: str, device: torch.device | str = "cpu", pretrained: bool = True):
    """``mmrl.models.load_backbone`` with a bad spec reported as a ConfigError (key ``backbone``)."""
    try:
        return load_backbone(spec, pretrained=pretrained, device=device)
    except ValueError as e:
        raise ConfigError(f"backbone = {shown(spec)}: {e}") from e
