"""Test-session settings."""
import os
import sys
from pathlib import Path

# OpenMP threads that spin while waiting slow CPU tests down many times over when another
# process shares the cores; must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
