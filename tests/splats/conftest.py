import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Splat tests use tiny tensors: intra-op threads only add synchronisation (and stall on a shared machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
