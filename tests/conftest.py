import pytest
import torch

import scoresde as sd


@pytest.fixture(params=["vp", "subvp", "ve"])
def sde(request):
    return sd.build_sde(request.param)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
