import pytest
import torch

import scoresde as sd


@pytest.fixture(params=["vp", "subvp", "ve"])
def sde(request):
    return sd.build_sde(request.param)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test: the mixture score is a few small ops, and threads only
    contend on a shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
