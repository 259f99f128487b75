"""Record small outputs of the samplers and the likelihood on fixed seeds (tests/data/reference_outputs.json).

Run once, on the code *before* a refactoring that must not change the numbers, from the repository
root:  ``PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tests/data/record_reference_outputs.py``.
``tests/test_reference_outputs.py`` then asserts the refactored code reproduces every value.

The cases keep the option names of the code they were recorded on; the test translates the
values renamed since (``RENAMED_OPTION_VALUES`` there).  Every case is a plain dict so the file
states exactly what ran.
"""

from __future__ import annotations

import json
import os
import sys

import torch

import scoresde as sd

N_SAMPLES = 64
N_LIKELIHOOD = 16
SDES = ("vp", "subvp", "ve")

SAMPLER_CASES = [
    ("pc", dict(predictor="euler_maruyama", corrector="none", steps=40)),
    ("pc", dict(predictor="reverse_diffusion", corrector="none", steps=40)),
    ("pc", dict(predictor="ancestral", corrector="none", steps=40)),
    ("pc", dict(predictor="reverse_diffusion", corrector="langevin", steps=30, langevin_norm="sample")),
    ("pc", dict(predictor="reverse_diffusion", corrector="langevin", steps=30, langevin_norm="batch")),
    ("pc", dict(predictor="euler_maruyama", corrector="annealed_langevin", steps=30)),
    ("pc", dict(predictor="none", corrector="annealed_langevin", steps=30, corrector_steps=2)),
    ("pc", dict(predictor="ancestral", corrector="langevin", steps=20, denoise=False, langevin_norm="batch")),
]
for tv in ("t", "sigma", "log_sigma"):
    SAMPLER_CASES.append(("ode", dict(method="dopri5", time_variable=tv)))
    SAMPLER_CASES.append(("ode", dict(method="rk4", steps=12, time_variable=tv)))
SAMPLER_CASES += [
    ("sde", dict(method="euler", steps=40)),
    ("sde", dict(method="srk", steps=20)),
]
for order in (1, 2, 3):
    SAMPLER_CASES.append(("dpm_solver", dict(steps=10, order=order)))
SAMPLER_CASES += [
    ("dpm_solver", dict(steps=10, order=3, denoise=True, grid="logsnr")),
    ("dpm_solver", dict(steps=8, order=2, lower_order_final=False, grid="karras")),
    ("unipc", dict(steps=10)),
    ("unipc", dict(steps=10, order=2, variant="bh2", grid="time_quadratic")),
    ("unipc", dict(steps=10, order=3, variant="bh2")),
]
for grid in ("logsnr", "karras", "time_uniform", "time_quadratic", "vp_quadratic"):
    SAMPLER_CASES.append(("heun", dict(steps=6, grid=grid)))
SAMPLER_CASES.append(("heun", dict(steps=6, grid="karras", rho=3.0, denoise=True)))

LIKELIHOOD_CASES = []
for tv in ("vp", "t", "log_snr", "sigma"):
    LIKELIHOOD_CASES.append(dict(divergence="exact", time_variable=tv))
    LIKELIHOOD_CASES.append(dict(divergence="hutchinson", probes=2, time_variable=tv))
LIKELIHOOD_CASES.append(dict(divergence="exact", time_variable="vp", method="rk4",
                             options={"step_size": 0.05}))


def sampler_outputs(sde_name: str, sampler: str, opts: dict):
    sde, mix = sd.build_sde(sde_name), sd.ring8()
    out = sd.sample(mix.score_fn(sde), sde, (N_SAMPLES, 2), sampler=sampler,
                    generator=torch.Generator().manual_seed(0), **opts)
    return out.x.double().flatten().tolist(), out.nfe


def likelihood_outputs(sde_name: str, opts: dict):
    sde, mix = sd.build_sde(sde_name), sd.ring8()
    x = mix.sample(N_LIKELIHOOD, generator=torch.Generator().manual_seed(1))
    res = sd.log_likelihood(mix.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(2), **opts)
    return res.logp.double().tolist(), res.z.double().flatten().tolist(), res.nfe


def main(path: str) -> None:
    torch.set_num_threads(1)
    records = {"n_samples": N_SAMPLES, "n_likelihood": N_LIKELIHOOD, "samplers": [], "likelihood": []}
    for s in SDES:
        for sampler, opts in SAMPLER_CASES:
            x, nfe = sampler_outputs(s, sampler, opts)
            records["samplers"].append(dict(sde=s, sampler=sampler, options=opts, x=x, nfe=nfe))
        for opts in LIKELIHOOD_CASES:
            logp, z, nfe = likelihood_outputs(s, opts)
            records["likelihood"].append(dict(sde=s, options=opts, logp=logp, z=z, nfe=nfe))
    with open(path, "w") as fh:
        json.dump(records, fh, separators=(",", ":"))
    print(f"wrote {path}: {os.path.getsize(path) / 1024:.0f} KB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "reference_outputs.json"))
