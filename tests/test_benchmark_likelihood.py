"""benchmarks/likelihood.py --bound: its oracles (the adams solver handed the exact Jacobian) solve the same
ODE: at a tight tolerance they agree with a 1e-9 dopri5 solve with the same probe.  The script
reuses scoresde.likelihood's private pieces, so this also catches their drifting apart."""
import importlib.util
import pathlib

import pytest
import torch

import scoresde as sd

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "likelihood.py"


def _module():
    spec = importlib.util.spec_from_file_location("likelihood_benchmark", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["ring8", "aniso8"])
@pytest.mark.parametrize("frame", [False, True])
def test_oracles_match_a_tight_solve_with_the_same_probe(name, frame):
    lb = _module()
    mix, sde = sd.build_mixture(name), sd.VPSDE()
    sf = mix.score_fn(sde)
    x = mix.sample(64, generator=torch.Generator().manual_seed(1)).double()
    probe = lb.probe_like(x)
    truth = sd.log_likelihood(sf, sde, x, divergence="hutchinson", rtol=1e-9, atol=1e-9,
                              generator=torch.Generator().manual_seed(0)).logp
    lp, nfe = lb.oracle_logp(sf, sde, x, probe, 1e-7, frame)
    assert lb.bound_per_dim(lp, truth, mix.dim) < 1e-7
    # and at a loose tolerance it is an honest solve (an error of the tolerance's size, not zero)
    lp_loose, nfe_loose = lb.oracle_logp(sf, sde, x, probe, 1e-3, frame)
    assert nfe_loose < nfe
    assert 1e-7 < lb.bound_per_dim(lp_loose, truth, mix.dim) < 1e-2
