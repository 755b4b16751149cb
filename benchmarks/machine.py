"""What a benchmark ran on: CPU, memory, load. Shared by the scripts in benchmarks/."""
from __future__ import annotations

import platform
from pathlib import Path


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where /proc/loadavg does not exist)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def load_text() -> str:
    """The load averages as ``"1.20 0.90 0.70"`` (``"n/a"`` where unknown)."""
    la = load_average()
    return "n/a" if la is None else " ".join(f"{x:.2f}" for x in la)


def _meminfo_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gb() -> float:
    kb = _meminfo_kb("MemTotal")
    return float("nan") if kb is None else kb / 2**20


def mem_available_mb() -> float:
    kb = _meminfo_kb("MemAvailable")
    return float("inf") if kb is None else kb / 1024
