"""The SMC sampler's moves between steps: systematic resampling (pooled over each observation's cloud),
Langevin (MALA / ULA) rejuvenation moves and the path-space move's terms."""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch

from ..samplers import SamplerContext
from ..sde import SDE, _transition, expand_to
from .operators import LinearOperator

Tensor = torch.Tensor


def _langevin_moves(score_fn, op: LinearOperator, obs_shape: Tuple[int, ...], x: Tensor, s: float, moves: int,
                    snr: float, C: int, P: int, ctx: SamplerContext, extra: Callable[[Tensor], Tensor],
                    free: Callable[[Tensor], Tensor], kernel: str = "mala",
                    score: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, float]:
    """``moves`` Langevin moves on the SMC's level-s target pi_s (resample-move, Gilks & Berzuini 2001).

    grad log pi_s(x) = G(x) = score(x, s) + ``extra(x)`` (the Gaussian observation term of the
    level's target), restricted to the directions ``free`` keeps (pinned coordinates stay put).
    Proposal: preconditioned Langevin, x' = x + D G(x) + sqrt(2 D) z, D a constant step on the
    observed subspace (V V^T) and another on its complement (the observation term is far stiffer
    than the prior near t = 0; one shared step would freeze the unobserved block).  Each step is
    d = 2 (snr |z| / |G|)^2 on its subspace (Song et al. 2021's corrector rule), the norms averaged
    over a cloud and taken before the move, so all particles of a cloud share D.

    ``kernel="ula"`` accepts every proposal (unadjusted: biased by O(D)).  ``"mala"`` (default)
    accepts with the Metropolis-Hastings ratio of MALA (Roberts & Tweedie 1996), the unknown
    log pi_s(x') - log pi_s(x) replaced by the trapezoidal line integral of the score,
    (G(x) + G(x')) . (x' - x) / 2 (the score-only MH correction of Sjoberg et al., "MCMC-correction
    of score-based diffusion models for model composition", 2023): exact when p_s is Gaussian,
    O(|x' - x|^3) otherwise, so the move is exactly invariant on Gaussians and the bias vanishes far
    faster than ULA's as D -> 0.  The score at the proposal is needed anyway for the next move, so
    MALA costs no extra score evaluation.  ``score``: score(x, s) if already known (it is not
    re-evaluated).  Returns (x, score(x, s), acceptance rate).
    """
    B = x.shape[0]
    tvec = torch.full((B,), s, dtype=x.dtype, device=x.device)

    def obs(v_: Tensor) -> Tensor:
        return op.embed(op.obs_coords(v_), obs_shape)

    def step_of(g_: Tensor, z_: Tensor) -> Tensor:
        gn = g_.reshape(C, P, -1).norm(dim=2).mean(1)
        zn = z_.reshape(C, P, -1).norm(dim=2).mean(1)
        d = torch.where(gn > 0, 2 * (snr * zn / gn.clamp_min(1e-30)) ** 2, torch.zeros_like(gn))
        return expand_to(d.repeat_interleave(P), x)

    def flat(v_: Tensor) -> Tensor:
        return v_.reshape(B, -1).to(torch.float64)

    sc = score_fn(x, tvec) if score is None else score
    acc_sum = 0.0
    for _ in range(moves):
        g = free(sc + extra(x))
        z = free(ctx.randn_like(x))
        g_o, z_o = obs(g), obs(z)
        g_p, z_p = g - g_o, z - z_o
        d_o, d_p = step_of(g_o, z_o), step_of(g_p, z_p)
        xp = x + d_o * g_o + torch.sqrt(2 * d_o) * z_o + d_p * g_p + torch.sqrt(2 * d_p) * z_p
        scp = score_fn(xp, tvec)
        if kernel == "ula":
            x, sc = xp, scp
            acc_sum += 1.0
            continue
        gp = free(scp + extra(xp))
        gp_o = obs(gp)
        gp_p = gp - gp_o

        def log_q(to_o, to_p, g_o_, g_p_):      # log q(to | from) up to a shared constant, per particle
            ro = to_o - d_o * g_o_
            rp = to_p - d_p * g_p_
            qo = torch.where(d_o > 0, ro ** 2 / (4 * d_o.clamp_min(1e-300)), torch.zeros_like(ro))
            qp = torch.where(d_p > 0, rp ** 2 / (4 * d_p.clamp_min(1e-300)), torch.zeros_like(rp))
            return -(flat(qo) + flat(qp)).sum(1)

        dx = xp - x
        dx_o = obs(dx)
        dx_p = dx - dx_o
        log_ratio = (0.5 * (flat(g) + flat(gp)) * flat(dx)).sum(1)
        log_a = log_ratio + log_q(-dx_o, -dx_p, gp_o, gp_p) - log_q(dx_o, dx_p, g_o, g_p)
        u = ctx.rand((B,), torch.float64, x.device)
        ok = torch.log(u) < log_a
        acc_sum += float(ok.double().mean())
        x = torch.where(expand_to(ok, x), xp, x)
        sc = torch.where(expand_to(ok, sc), scp, sc)
    return x, sc, acc_sum / max(moves, 1)


def _path_move_terms(sde: SDE, op: LinearOperator, s: float, j: int, asc: List[float], path: Tensor,
                     active: Tensor, start: Tensor, obs_shape: Tuple[int, ...]):
    """(extra, free) of the path SMC's level-s target for :func:`_langevin_moves`.

    pi_s(x) ~ p_s(x) prod_{i active} delta(u_i(x) - path_{i,s}) prod_{i pending} N(path_{i,tau_i}; a_i u_i(x), v_i):
    active coordinates are pinned; a coordinate observed only later (tau_i > s, noisy case) carries
    the forward transition (a_i, v_i) from s up to tau_i to its path value there.
    """
    x_dt, dev = path.dtype, path.device
    n = len(asc)
    zero = torch.zeros(1, dtype=x_dt, device=dev)
    act = active[j]
    pend = (start > j) & (start < n)

    def free(v_: Tensor) -> Tensor:
        return v_ - op.embed(torch.where(act, op.obs_coords(v_), zero), obs_shape)

    if not bool(pend.any()):
        return (lambda v_: torch.zeros_like(v_)), free
    cs = sde.scalars(s)
    idx = start.clamp(max=n - 1)
    al = torch.tensor([float(sde.scalars(asc[int(k)]).alpha) for k in idx], dtype=torch.float64)
    sg = torch.tensor([float(sde.scalars(asc[int(k)]).sigma) for k in idx], dtype=torch.float64)
    a, v = _transition(al, sg, float(cs.alpha), float(cs.sigma))
    ok = pend & (v > 0)
    lin = torch.where(ok, a, torch.zeros_like(a)).to(device=dev, dtype=x_dt)
    coef = (lin.double().cpu() / torch.where(ok, v, torch.ones_like(v))).to(device=dev, dtype=x_dt)
    r = len(idx)

    def extra(v_: Tensor) -> Tensor:
        tgt = path[idx.to(dev), :, torch.arange(r, device=dev)].T[: v_.shape[0]]   # [B, r] values at tau_i
        return op.embed(coef * (tgt - lin * op.obs_coords(v_)), obs_shape)

    return extra, free


def _resample_clouds(w: Tensor, logw: Tensor, need: Tensor, ctx: SamplerContext):
    """Systematic resampling of the clouds flagged in ``need [C]`` (the others keep their particles).

    Returns None when no cloud is flagged, else ``(flat, logw, dz)``: ``flat [C P]`` indices into
    the particle batch, the log-weights after (0 in the resampled clouds) and each cloud's
    log-evidence increment, log mean_p w_cp where resampled and 0 elsewhere.
    """
    if not bool(need.any()):
        return None
    C, P = w.shape
    dev = w.device
    idx = torch.where(need[:, None], _systematic(w, ctx), torch.arange(P, device=dev)[None].expand(C, P))
    flat = (idx + P * torch.arange(C, device=dev)[:, None]).reshape(-1)
    dz = torch.where(need, torch.logsumexp(logw, 1) - math.log(P), torch.zeros(C, dtype=logw.dtype, device=dev))
    return flat, torch.where(need[:, None], torch.zeros_like(logw), logw), dz


def _systematic(w: Tensor, ctx: SamplerContext, m: Optional[int] = None) -> Tensor:
    """Systematic resampling (Kitagawa 1996) of each row of ``w [C, P]``: ``m`` (default P) indices a row."""
    C, P = w.shape
    m = P if m is None else int(m)
    g = ctx.generator
    u0 = (torch.rand(C, 1, dtype=torch.float64, generator=g, device=g.device if g is not None else w.device)
          .to(w.device))
    pos = (u0 + torch.arange(m, dtype=torch.float64, device=w.device)[None]) / m
    cdf = torch.cumsum(w, 1)
    cdf[:, -1] = 1.0
    return torch.searchsorted(cdf, pos).clamp(max=P - 1)
