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


@pytest.fixture(autouse=True)
def _logging_as_found():
    """Each test leaves logging as it found it: a Hydra app run in-process configures the root and
    "scoresde" loggers with handlers bound to that test's captured streams and run directory,
    which later tests would otherwise write to after they were closed ("--- Logging error ---"
    on stderr, where the apps' one-line errors are checked)."""
    import logging
    loggers = [logging.getLogger(), logging.getLogger("scoresde")]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    yield
    for lg, handlers, level, propagate in saved:
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
