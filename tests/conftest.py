"""Test-session settings."""
import os
import sys
import tempfile
from pathlib import Path

# OpenMP threads that spin while waiting slow CPU tests down many times over when another
# process shares the cores; must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# precision `auto` is fp32 for every test (and its subprocesses) whatever the machine's CPU: the
# numbers the suite compares (resume bit for bit, exports against eval, DDP against one process)
# are fp32 numbers; on a CPU with native bf16 `auto` would pick bf16. The tests of the bf16 path
# itself ask for bf16 explicitly, and tests/test_cpu_bf16.py checks what `auto` decides.
os.environ["MMRL_CPU_BF16"] = "0"
# Never touch the user's ~/.cache/mmrl: module-scoped fixtures and subprocesses use a scratch
# cache of this session (each test gets its own, see isolated_cache).
os.environ["MMRL_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmrl-test-cache-")
# tests import their shared helpers (tests/helpers.py, tests/fixtures_data.py) by module name
sys.path.insert(0, str(Path(__file__).resolve().parent))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """torch's thread count is process-wide: a test that changes it must not change the numerics
    of the tests after it (bit-identical comparisons with subprocesses depend on it)."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Each test's own split cache (MMRL_CACHE_DIR), so tests never see each other's splits."""
    cache = tmp_path / "_cache"
    monkeypatch.setenv("MMRL_CACHE_DIR", str(cache))
    return cache
