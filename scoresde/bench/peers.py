"""Peers in our benchmark: diffusers' schedulers on the same exact scores, rows beside ours.

Each peer is a diffusers scheduler run by :func:`scoresde.interop.diffusers_sample` on the
problem's exact mixture score exported by :func:`scoresde.interop.to_diffusers` (for the VP SDE
DDPM's own linear table, beta_start = beta_min / N, beta_end = beta_max / N, N = 1000; the
exported model answers timestep k with the exact eps at the time of the table's noise level k).
No schedule maths is repeated here: the scheduler is ``Class.from_config(ddpm.config)`` with the
peer's options, so what is measured is diffusers' own code on our scores.

**NFE** is the number of model calls the loop made (counted, never computed): one per step for
DPM-Solver++ 2M / 3M, UniPC, DEIS, LMS, Euler and DDIM; ``2 steps - 1`` for Heun (two
evaluations a step, one on its last step to sigma = 0).  A budget b gives ``steps = b`` (Heun:
``(b + 1) // 2``, so its NFE is b or b - 1).

**End point.**  Every peer starts at timestep N - 1 (t = T, the same prior draw z as our
samplers) and ends with its last step from timestep 0 (t = T / N = 1e-3) to sigma = 0, i.e. at
the denoiser's output (their defaults: ``final_sigmas_type="zero"``, DDIM's ``set_alpha_to_one``);
our samplers stop at t = eps = 1e-3.  So a peer's ``ode_err`` is measured against the float64
dopri5 reference from the same z (at ``Bench.ref_tol``) followed by the exact Tweedie denoiser
at eps, ``x0 = (x + sigma^2 score(x, eps)) / alpha``, which is exactly the map the peer
approximates.  W2 against the mixture is measured as for ours.

diffusers is the optional ``interop`` extra: :func:`peer_rows` returns no rows and
:func:`peers_available` says why when it is not installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .. import metrics
from ..sde import expand_to
from .runner import Bench, TimedScore, _fmt_options

Tensor = torch.Tensor

__all__ = ["PeerSpec", "PEERS", "peers_available", "peer_steps", "peer_rows"]


@dataclass(frozen=True)
class PeerSpec:
    """A diffusers scheduler by class name, its options over the exported config, and how many
    evaluations its steps take (``nfe(steps)``: ``per_step * steps - saved_last``)."""

    label: str
    scheduler: str
    options: Dict[str, Any] = field(default_factory=dict)
    per_step: int = 1
    saved_last: int = 0

    def nfe(self, steps: int) -> int:
        return self.per_step * steps - self.saved_last

    def steps(self, budget: int) -> int:
        """The most steps whose NFE fits in ``budget`` (at least 1)."""
        return max(1, (int(budget) + self.saved_last) // self.per_step)


# The schedulers issue 15 names, at diffusers' defaults except the order where it names one.
PEERS: Dict[str, PeerSpec] = {p.label: p for p in [
    PeerSpec("diffusers dpm++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    PeerSpec("diffusers dpm++ 3M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    PeerSpec("diffusers unipc", "UniPCMultistepScheduler"),
    PeerSpec("diffusers deis", "DEISMultistepScheduler"),
    PeerSpec("diffusers lms", "LMSDiscreteScheduler"),
    PeerSpec("diffusers euler", "EulerDiscreteScheduler"),
    PeerSpec("diffusers ddim", "DDIMScheduler"),
    PeerSpec("diffusers heun", "HeunDiscreteScheduler", per_step=2, saved_last=1),
]}


def peers_available() -> Tuple[bool, str]:
    """``(True, version)`` when diffusers imports, else ``(False, the reason and the extra)``."""
    try:
        import diffusers
    except ImportError as e:
        return False, f'diffusers is not installed ({e}); pip install "scoresde[interop]" to run the peers'
    return True, f"diffusers {diffusers.__version__}"


def peer_steps(label: str, budget: int) -> int:
    """Steps of peer ``label`` at an NFE budget; unknown labels raise ValueError listing them."""
    if label not in PEERS:
        raise ValueError(f"unknown peer {label!r}; valid peers: {list(PEERS)}")
    return PEERS[label].steps(budget)


def _denoised_reference(bench: Bench, p, sde_name: str, seed: int) -> Tensor:
    """The bench's reference flow from z to eps, then the exact denoiser at eps (float64, CPU)."""
    key = ("denoised", p.name, sde_name, seed)
    if key not in bench._ref:
        sde, score = p.sde(sde_name), p.score_fn(sde_name)
        x = bench.reference(p, sde_name, seed).to(p.dtype)
        t = torch.full((x.shape[0],), bench.eps, dtype=x.dtype)
        al, sg = sde.coefs(t, dtype=x.dtype)
        with torch.no_grad():
            x0 = (x + expand_to(sg ** 2, x) * score(x, t)) / expand_to(al, x)
        bench._ref[key] = x0.to(torch.float64).cpu()
    return bench._ref[key]


def peer_rows(bench: Bench, problem: str, sde_name: str, budgets: Sequence[int], seeds: Sequence[int],
              peers: Optional[Sequence[str]] = None, num_train_timesteps: int = 1000) -> List[Dict[str, Any]]:
    """Rows (:data:`scoresde.bench.FIELDS`) of each peer at each budget and seed, judged like ours.

    ``bench`` supplies the prior draws, the reference solves, the floors and the sample size, so
    peers' rows sit beside ``bench.run_cell``'s in the same tables.  ``problem`` must be a
    mixture (the exact score is what is exported).  Returns ``[]`` when diffusers is missing.
    """
    ok, _ = peers_available()
    if not ok:
        return []
    import diffusers

    from ..interop import diffusers_sample, to_diffusers

    labels = list(PEERS) if peers is None else list(peers)
    for lab in labels:
        peer_steps(lab, 1)   # unknown names fail before any work
    p = bench.problem(problem)
    if p.mixture is None or p.model is not None:
        raise ValueError(f"peers run on exact mixture scores; {problem!r} is not a mixture")
    sde = p.sde(sde_name)
    rows = []
    for lab in labels:
        spec = PEERS[lab]
        for budget in budgets:
            steps = spec.steps(budget)
            for seed in seeds:
                timed = TimedScore(p.score_fn(sde_name), bench.device)
                model, ddpm = to_diffusers(timed, sde, num_train_timesteps=num_train_timesteps)
                sched = getattr(diffusers, spec.scheduler).from_config(ddpm.config, **spec.options)
                z = bench.noise(p, sde_name, seed).to(bench.device, bench.dtype)
                g = bench.sampler_generator(seed)
                out = diffusers_sample(model, sched, z, steps, generator=g)
                if out.nfe != spec.nfe(steps) or timed.calls != out.nfe:
                    raise RuntimeError(f"{lab}: {out.nfe} model calls for {steps} steps, expected {spec.nfe(steps)}")
                x = out.x.detach().to(torch.float64).cpu()
                row: Dict[str, Any] = dict(
                    problem=problem, sde=sde_name, label=lab, sampler=spec.scheduler,
                    options=_fmt_options({**spec.options, "steps": steps}), budget=int(budget), tol="", seed=seed,
                    n=bench.n, nfe=int(out.nfe), seconds=out.seconds, sec_per_nfe=out.seconds / max(out.nfe, 1),
                    score_seconds=timed.seconds / max(timed.calls, 1),
                    overhead=out.seconds / timed.seconds if timed.seconds > 0 else float("nan"))
                if bench.quality:
                    err = (x - _denoised_reference(bench, p, sde_name, seed)).reshape(bench.n, -1).norm(dim=1)
                    err = torch.where(torch.isfinite(err), err, torch.full_like(err, math.inf))
                    ms = metrics.mode_w2(x, p.mixture)
                    floor = bench.w2_floor(p)
                    sw2 = (metrics.sliced_w2(x, p.exact(bench.n, seed, 0), bench.n_proj,
                                             torch.Generator().manual_seed(seed))
                           if torch.isfinite(x).all() else math.inf)
                    row.update(w2=ms.w2, weight_error=ms.weight_error, w2_floor=floor, w2_ratio=ms.w2 / floor,
                               sw2=sw2, sw2_floor=bench.sw2_floor(p), ode_err=float(err.mean()),
                               ode_err_med=float(err.median()))
                else:
                    row.update({k: float("nan") for k in ("ode_err", "ode_err_med", "w2", "weight_error",
                                                          "w2_floor", "w2_ratio", "sw2", "sw2_floor")})
                rows.append(row)
    return rows
