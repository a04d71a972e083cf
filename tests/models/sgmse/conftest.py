import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The suite shares two cores: one intra-op thread is faster than two contending ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
