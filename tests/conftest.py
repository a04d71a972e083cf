"""Suite-wide fixtures.

One intra-op thread per test: the suite's models are small and the machines it runs on (CI
included) have two shared cores, where two contending OpenMP threads are measured to be slower
than one.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
