"""The samplers and the likelihood reproduce the outputs recorded on fixed seeds before the
change of variables moved into ``scoresde/flow.py`` (tests/data/reference_outputs.json, written by
tests/data/record_reference_outputs.py on the code of that time).

Tolerance.  The refactoring moved code and kept each update's arithmetic; where a time map now
goes through the SDE's own interface (the likelihood's VP clock: ``VPSDE.t_from_log_snr`` /
``log_snr`` instead of a restated closed form) the float64 times may differ in the last bits,
which would reach the float32 samples and log-densities as a few float32 roundings.  We accept
|new - old| <= 1e-6 + 1e-6 |old|: about 8 float32 ulps at the data's unit scale, so a changed
formula (an error of order the step size, 1e-3 or more) fails at once.  (Measured when the
refactoring landed: every value equal bit for bit, on this CPU with one thread.)  NFE must be
equal: an adaptive solver that took a different step sequence shows there.
"""

import json
import os

import pytest
import torch

import scoresde as sd

PATH = os.path.join(os.path.dirname(__file__), "data", "reference_outputs.json")
with open(PATH) as fh:
    REF = json.load(fh)
N_SAMPLES, N_LIKELIHOOD = REF["n_samples"], REF["n_likelihood"]

# option values renamed since the recording: the likelihood's "log_snr" was log sigma~ = -lambda
RENAMED_OPTION_VALUES = {("time_variable", "log_snr"): "log_sigma"}
RTOL = ATOL = 1e-6


def _translate(opts: dict) -> dict:
    return {k: RENAMED_OPTION_VALUES.get((k, v), v) if isinstance(v, str) else v for k, v in opts.items()}


def _id(rec) -> str:
    return rec["sde"] + "-" + (rec.get("sampler", "ll")) + "-" + ",".join(f"{k}={v}" for k, v in rec["options"].items())


pytestmark = pytest.mark.usefixtures("one_thread")


def test_fixture_covers_every_sampler_sde_and_time_variable():
    assert {r["sampler"] for r in REF["samplers"]} == {"pc", "ode", "sde", "dpm_solver", "unipc", "heun"}
    assert {r["sde"] for r in REF["samplers"]} == {"vp", "subvp", "ve"}
    assert {_translate(r["options"])["time_variable"] for r in REF["likelihood"]} == set(sd.likelihood.TIME_VARIABLES)
    assert len(REF["samplers"]) >= 3 * 30 and len(REF["likelihood"]) == 3 * 9


@pytest.mark.parametrize("rec", REF["samplers"], ids=_id)
def test_samplers_reproduce_the_recorded_samples(rec):
    sde, mix = sd.build_sde(rec["sde"]), sd.ring8()
    out = sd.sample(mix.score_fn(sde), sde, (N_SAMPLES, 2), sampler=rec["sampler"],
                    generator=torch.Generator().manual_seed(0), **_translate(rec["options"]))
    assert out.nfe == rec["nfe"]
    want = torch.tensor(rec["x"], dtype=torch.float64).reshape(N_SAMPLES, 2)
    torch.testing.assert_close(out.x.double(), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rec", REF["likelihood"], ids=_id)
def test_log_likelihood_reproduces_the_recorded_values(rec):
    sde, mix = sd.build_sde(rec["sde"]), sd.ring8()
    x = mix.sample(N_LIKELIHOOD, generator=torch.Generator().manual_seed(1))
    res = sd.log_likelihood(mix.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(2),
                            **_translate(rec["options"]))
    assert res.nfe == rec["nfe"]
    torch.testing.assert_close(res.logp.double(), torch.tensor(rec["logp"], dtype=torch.float64),
                               rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(res.z.double().flatten(), torch.tensor(rec["z"], dtype=torch.float64),
                               rtol=RTOL, atol=ATOL)
