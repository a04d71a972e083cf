"""Suite-wide fixtures.

One intra-op thread per test: the suite's models are small and the machines it runs on (CI
included) have two shared cores, where two contending OpenMP threads are measured to be slower
than one. (The skip guard lives in tests/_skip_guard.py, registered by the root conftest.py so
that it also sees the contract property tests the plugin generates outside tests/.)
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
