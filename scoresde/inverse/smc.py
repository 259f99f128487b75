"""The sequential Monte Carlo posterior sampler (FPS-SMC in MCGdiff's SVD coordinates; TDS; resample-move):
the driver, its time grids and resampling.  Potentials: :mod:`.smc_potentials`; rejuvenation moves: :mod:`.smc_moves`."""

from __future__ import annotations

import math
from typing import List, Optional

import torch

from ..samplers import SamplerContext
from ..sde import SDE, _transition
from .operators import LinearOperator
from .base import _uniform_grid
from .smc_moves import _langevin_moves, _path_move_terms, _resample_clouds
from .smc_potentials import _smc_tweedie, _smc_twisted

Tensor = torch.Tensor

__all__ = ['smc', 'SMC_GRIDS', 'SMC_POTENTIALS', 'SMC_MOVE_KERNELS']


def smc(score_fn, sde: SDE, op: LinearOperator, y: Tensor, x: Tensor, ctx: SamplerContext, *,
        eps: float, steps: int = 200, particles: Optional[int] = None, ess_threshold: float = 0.5,
        grid: str = "logsnr", potential: str = "path", twist_cov: str = "isotropic",
        moves: int = 0, move_snr: float = 0.3, move_kernel: str = "mala", pool: bool = False,
        oversample: int = 1, info: Optional[dict] = None) -> Tensor:
    """Sequential Monte Carlo for linear inverse problems, exact as particles and steps grow.

    Recommended for one posterior (a batch with one observation), measured to meet issue 13's
    goal on ring8 and the 16-d mixture (benchmarks/results/inverse.md):
    ``potential="twisted", moves=3, pool=True, particles=100, oversample=8`` -- resample-move
    SMC with evidence-pooled clouds, described under "Resample-move" below.

    Three variants, by ``potential``:

    * ``"twisted"``: MCGdiff's potentials (Cardoso et al. 2024, Algorithm 1; the same
      twisting as Wu et al.'s TDS with the exact Gaussian twist of the forward process).  The
      intermediate target at time s is the reverse chain times
      g_s(x_s) = N(alpha_s y_hat; u(x_s), sigma_s^2 + alpha_s^2 (s_y / S)^2), the exact likelihood of
      y_hat given the observed coordinates u(x_s) = V^T x_s under the forward process (u_s = alpha_s u0
      + sigma_s eps, y_hat = u0 + (s_y / S) e); at s -> 0 it is the true likelihood, so the final
      target is p(x0 | y) for the discrete chain.  Proposal: the transition N(m, v I) times g_s
      (Gaussian in u: precision 1 / v + 1 / c_s, c_s the potential's variance; the rest of x
      keeps N(m, v I)), weight N(alpha_s y_hat; u(m), v + c_s) / g_t(x_t).  Each particle is pulled
      towards the observation only as far as the forward process says, with no shared random path.
      Measured on its own, without moves or pooling (then not better than ``"path"``): on
      aniso16 below, 100 steps, 2,000 samples, mode-weight error / W2 over floor 0.27 / 9.2 (500
      particles), 0.04 / 16.7 (2,000).  With ``moves=3, pool=True, particles=100, oversample=8``
      it is the setting that meets issue 13's 16-d goal (see "Resample-move" below).
    * ``"path"`` (default): FPS-SMC as described below.

    * ``"tweedie"``: the twisted diffusion sampler TDS (Wu et al., NeurIPS 2023), twist
      N(y_hat; V^T x0_hat(x_t), Cov) from Tweedie's x0_hat, a proposal guided by it; one backward
      pass a step (``twist_cov="isotropic"``: Cov = r_t^2 I, PiGDM's) or r + 1 (``"jacobian"``: Cov
      = Cov[u0 | x_t] from the score's Jacobian, and the locally optimal Gaussian proposal).  See
      :func:`_smc_tweedie`.

    Why ``"path"`` misses a correlated 16-d posterior (diagnosed; not a coding error).  One 16-d
    Gaussian (``sd.anisotropic(16, 4, seed=0)`` component 0, rotated covariance, eigenvalues
    0.01-1), mask on the first 8 coordinates, y = the component's mean + 1.0 (atypical): the
    chain is then linear-Gaussian, so the exact infinite-particle target of this filter given
    one observation path is a Kalman filter.  That target's unobserved mean is within 0.01-0.03
    of the true posterior mean at 100, 200 and 800 steps (a path-to-path spread that averages out
    over clouds; the covariance error falls as 1 / steps); a plain reference particle filter on
    the same path is off by 0.17 / 0.10 / 0.06 at 400 / 4,000 / 40,000 particles.  So the kernel,
    the tau_i and the SVD coordinates are right, and the error is the particle approximation's:
    the proposal moves the unobserved block by the prior's dynamics given the pinned
    observed block (replacement's move, about 1.2 from this posterior, whose stds are 0.2-0.4),
    the weights have to bridge several posterior stds, and the error decays only about as
    P^-1/4 while the ESS between resamplings looks healthy.  ``"twisted"`` (potentials on the
    observed block only) cannot help, it never informs the unobserved block; ``"tweedie"`` with
    ``twist_cov="jacobian"`` does: on this case its error is 0.018 (100 steps) and 0.008
    (400 steps, 1.7 standard errors), with near-uniform weights (one resampling a cloud).  On
    mixtures the Jacobian twist is not yet usable (aniso16: a mode is lost, mode-weight error
    0.31 at 100 steps), hence not the default; see benchmarks/results/inverse.md.

    The filtering posterior sampler FPS-SMC (Dou & Song, "Diffusion posterior sampling for linear
    inverse problem solving: a filtering perspective", ICLR 2024, Algorithm 2), written in the SVD
    coordinates of MCGdiff (Cardoso, Janati El Idrissi, Le Corff & Moulines, "Monte Carlo guided
    diffusion for Bayesian linear inverse problems", ICLR 2024, Algorithm 1 and its noisy case).

    Coordinates.  A = U diag(S) V^T; u = V^T x are orthonormal coordinates of the observed subspace
    and y_hat = S^-1 U^T y = u0 + (s_y / S) e.  Because the forward noise is isotropic, the forward
    process moves u like any coordinate: u_t = alpha u0 + sigma eps.  Coordinate i is observed
    noiselessly at the time tau_i where sigma / alpha = s_y / S_i (tau_i = 0 for s_y = 0), as
    alpha(tau_i) y_hat_i: conditioning on y is conditioning on those values (MCGdiff, Sec. 3.3).

    The observation path.  From those values a path y_hat_t is drawn once (shared by the
    particles of a cloud) by the forward transitions up the time grid (FPS's "noisy measurement
    sequence", exact: the y-path given y is independent of x0, so conditioning on the whole path
    leaves p(x0 | y) unchanged).  The grid is uniform in t from T to eps with the tau_i in (eps, T)
    added; a tau_i <= eps starts at eps from the data-level value with variance
    sigma^2 - alpha^2 (s_y / S_i)^2 (the truncation at eps that every sampler makes).

    The particle filter.  Target: the reverse chain with transitions N(m(x_t), v I) (the ancestral
    step from t to s, ``sde.ancestral_coefs``) constrained to u_i(x_s) = y_hat_{i,s} for the
    coordinates observed by time s.  The optimal proposal is the transition's Gaussian restricted to
    that constraint (draw, then set the observed coordinates; for a mask and s_y = 0 this is
    replacement's move) and the incremental weight its normalizer
    prod_i N(y_hat_{i,s}; u_i(m(x_t)), v).  Particles are resampled (systematic) when the effective
    sample size falls below ``ess_threshold`` times the cloud size, and once at the end, so the
    returned particles are equally weighted.  As particles grow the filter is consistent for the
    discrete chain; as steps grow the chain's Gaussian transitions become the exact reverse ones.

    Resample-move (``moves > 0``; ``potential`` "path" or "twisted").  Where the error on the
    16-d mixture came from (aniso16, 8 of 16 observed, 2,000 samples, 100 steps; measured): not
    duplicates (about 1,550 distinct of 2,000) and not a low ESS between resamplings (0.07-0.3 at
    worst), but (a) within-mode placement: mode means off by 0.1-0.35 (posterior stds 0.2-0.4), the
    covariances by about as much, falling slowly with particles (one cloud of 2,000: 0.28 / 0.07) and
    steps (1,600 steps: 0.25 / 0.13), since the proposal moves the unobserved block only by the prior's
    dynamics; (b) mode weights: each cloud's mode-0 fraction ends anywhere in 0-1 (true 0.31; 8 clouds
    of 1,000: sd 0.25), decided at t = 0.01-0.2 where the modes separate, so the mode-weight error is
    a cloud-to-cloud variance that more particles per cloud barely reduce.  The fix, each part exact
    in the limit:

    * moves (Gilks & Berzuini, "Following a moving target -- Monte Carlo inference for dynamic
      Bayesian models", JRSS B 2001): after each level's reweighting / resampling, ``moves``
      Langevin moves that leave the level's target invariant (:func:`_langevin_moves`).  Twisted:
      pi_s ~ p_s(x) g_s(x), whose score is the prior score plus the Gaussian observation term
      V (alpha_s y_hat - u(x)) / c_s.  Path: p_s(x) with the active coordinates pinned to the path
      (the filtering target p(x_s | y_{s:T}) equals p_s(x_s | u_s = y_s), the u-path being Markov on its
      own) times, in the noisy case, the forward-transition likelihood of coordinates observed later.
      ``move_kernel="mala"`` (default) corrects each move by Metropolis-Hastings with the score's
      trapezoidal line integral as the energy difference (Sjoberg et al. 2023), exact on Gaussians;
      ``"ula"`` does not (ring8 x1 = 3.6: W2 1.60x the floor with ULA, 0.64x with MALA at 401 NFE).
      A move costs one score evaluation (the score at the accepted state feeds the next SMC step).
    * ``pool=True`` (twisted only; one observation for the batch): the clouds are independent SMCs
      of the same target, and each cloud's evidence estimate Z_c is unbiased (Del Moral 2004), so
      the pooled measure sum_c Z_c sum_p w_cp delta_x_cp is consistent as the number of clouds grows
      at a fixed cloud size; the returned samples are a systematic draw from it.  ``info["cloud_ess"]``
      is the effective number of clouds.  (The path variant's clouds condition on different paths,
      so their Z_c are not comparable: no pooling there.)
    * ``oversample=k`` (needs pool): run k x the batch in particles (k x the compute, the same NFE)
      and return the batch: more clouds, hence a smaller mode-weight variance.

    Measured (aniso16, 2,000 samples, 401 NFE = 100 steps x (1 + 3 moves), seeds 0-1): mode-weight
    error 0.010-0.018 and W2 0.81-1.11x the floor (noise 0), 0.005-0.012 and 0.89-0.95x (noise 0.1),
    against 0.03-0.39 and 5-7x before.  Not the default: pooling needs one observation for the whole
    batch, and oversample costs k x the particles; the default keeps per-sample observations working.

    ``particles``: cloud size (default: the largest divisor of the batch up to 512); the batch is
    split into batch / particles independent clouds, each with its own observation path (y must
    agree within a cloud).  The path's realization leaves an error that more particles in one cloud
    do not remove at a finite number of steps (it vanishes as the steps grow); clouds average it
    out: on ring8 (x1 = 3.6, 400 steps, 8,000 samples) one cloud gave mode-weight errors 0.015-0.043,
    clouds of 1,000 or 200 particles 0.002-0.010.
    NFE = ``steps`` + the number of tau_i inserted; with ``moves``, 1 + (that) x (1 + moves).
    """
    if int(oversample) != oversample or oversample < 1:
        raise ValueError(f"oversample must be a positive integer, got {oversample}")
    if (pool or oversample > 1) and potential != "twisted":
        raise ValueError(f"pool / oversample (evidence-weighted pooling of clouds) need potential='twisted', got {potential!r}")
    if oversample > 1 and not pool:
        raise ValueError("oversample > 1 needs pool=True (the extra particles are pooled across clouds)")
    if pool and not torch.equal(y, y[:1].expand_as(y)):
        raise ValueError("pool=True needs one observation for the whole batch (clouds are pooled)")
    n_out = x.shape[0]
    if oversample > 1:
        more = sde.prior_sample((n_out * (int(oversample) - 1),) + tuple(x.shape[1:]), generator=ctx.generator,
                                dtype=x.dtype, device=ctx.generator.device if ctx.generator is not None else x.device)
        x = torch.cat([x, more.to(x.device)])
        y = y[:1].expand((x.shape[0],) + tuple(y.shape[1:]))
    B = x.shape[0]
    P = max(d for d in range(1, min(B, 512) + 1) if B % d == 0) if particles is None else int(particles)
    if P < 1 or B % P:
        raise ValueError(f"particles must be a positive divisor of the batch size {B}, got {particles}")
    if not 0 <= ess_threshold <= 1:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    C = B // P
    obs_shape = tuple(y.shape[1:])
    yc = y.reshape(C, P, -1)
    if not torch.equal(yc, yc[:, :1].expand_as(yc)):
        raise ValueError("the SMC sampler needs the same observation for every particle of a cloud")
    y_hat = op.whiten(y.reshape((C, P) + obs_shape)[:, 0])                   # [C, r]
    r = y_hat.shape[1]
    S = op.singular_values(torch.float64).cpu().expand(r)
    s_y = op.noise_std
    # tau_i: sigma / alpha = s_y / S_i, i.e. log-SNR = log(S_i / s_y)
    if s_y > 0:
        lam = torch.log(S / s_y)
        tau = sde.t_from_log_snr(lam).to(torch.float64)
        tau = torch.where(lam >= float(sde.log_snr(torch.tensor([eps], dtype=torch.float64))),
                          torch.zeros_like(tau), tau)
        ratio2 = (s_y / S) ** 2
    else:
        tau = torch.zeros(r, dtype=torch.float64)
        ratio2 = torch.zeros(r, dtype=torch.float64)
    if twist_cov not in ("isotropic", "jacobian"):
        raise ValueError(f"unknown twist_cov {twist_cov!r}; valid: ['isotropic', 'jacobian']")
    if potential not in SMC_POTENTIALS:
        raise ValueError(f"unknown potential {potential!r}; valid potentials: {list(SMC_POTENTIALS)}")
    if int(moves) != moves or moves < 0:
        raise ValueError(f"moves must be a non-negative integer, got {moves}")
    if not move_snr > 0:
        raise ValueError(f"move_snr must be positive, got {move_snr}")
    if move_kernel not in SMC_MOVE_KERNELS:
        raise ValueError(f"unknown move_kernel {move_kernel!r}; valid: {list(SMC_MOVE_KERNELS)}")
    if moves and potential == "tweedie":
        raise ValueError("moves (Langevin rejuvenation) are implemented for potential 'path' and 'twisted', not 'tweedie'")
    if potential == "tweedie":
        return _smc_tweedie(score_fn, sde, op, y_hat.repeat_interleave(P, dim=0), ratio2, x, ctx, obs_shape,
                            _smc_grid(sde, steps, eps, grid), C, P, ess_threshold, info,
                            jacobian=twist_cov == "jacobian")
    if potential == "twisted":
        return _smc_twisted(score_fn, sde, op, y_hat.repeat_interleave(P, dim=0), ratio2, x, ctx, obs_shape,
                            _smc_grid(sde, steps, eps, grid), C, P, ess_threshold, info, int(moves), move_snr,
                            n_out if pool else None, move_kernel)
    uniform = _smc_grid(sde, steps, eps, grid)
    extra = sorted({float(v) for v in tau.tolist() if eps < v < sde.T and not any(abs(v - u) < 1e-12 for u in uniform)})
    desc = sorted(set(uniform) | set(extra), reverse=True)
    asc = desc[::-1]
    n = len(asc)
    ctx.expect_nfe((n - 1) * (1 + int(moves)) + (1 if moves else 0))
    # the observation path, [n, C, r] on the ascending grid; start index of each coordinate
    dev, dt = x.device, x.dtype
    at = torch.tensor(asc, dtype=torch.float64)
    start = torch.searchsorted(at, tau - 1e-12).clamp(max=n)                  # first time >= tau_i
    active = torch.arange(n)[:, None] >= start[None, :]                       # [n, r]
    y64 = y_hat.to(torch.float64)
    path = torch.zeros(n, C, r, dtype=torch.float64, device=dev)
    prev = torch.zeros(C, r, dtype=torch.float64, device=dev)
    for j in range(n):
        c = sde.scalars(asc[j])
        z = ctx.randn((C, r), torch.float64, dev)
        first = c.alpha * y64 + torch.sqrt((c.sigma ** 2 - c.alpha ** 2 * ratio2).clamp_min(0)).to(dev) * z
        if j > 0:
            a, v = _transition(c.alpha, c.sigma, *sde.scalars(asc[j - 1])[2:])
            nxt = a * prev + math.sqrt(v) * z
        else:
            nxt = first
        cur = torch.where((start == j).to(dev), first, torch.where((start < j).to(dev), nxt, torch.zeros_like(nxt)))
        path[j] = cur
        prev = cur
    path = path.to(dt).repeat_interleave(P, dim=1)                            # [n, B, r]
    active = active.to(dev)

    def constrain(v: Tensor, j: int) -> Tensor:
        delta = torch.where(active[j], path[j] - op.obs_coords(v), torch.zeros(1, dtype=dt, device=dev))
        return v + op.embed(delta, obs_shape)

    logw = torch.zeros(C, P, dtype=torch.float64, device=dev)
    log_z = torch.zeros(C, dtype=torch.float64, device=dev)      # log of each cloud's evidence estimate
    n_resample = 0
    ess_min = 1.0
    acc_all: List[float] = []
    cached: Optional[Tensor] = None
    x = constrain(x, n - 1)
    for i in range(n - 1):
        ctx.at_step(i + 1)
        t, s = desc[i], desc[i + 1]
        j = n - 2 - i                                                          # ascending index of s
        ct, cs = sde.scalars(t), sde.scalars(s)
        score = score_fn(x, torch.full((B,), t, dtype=dt, device=dev)) if cached is None else cached
        cached = None
        cx, c_score, var = sde.ancestral_coefs(ct.alpha, ct.sigma, cs.alpha, cs.sigma)
        mean = torch.add(x * cx, score, alpha=c_score)
        resid = torch.where(active[j], path[j] - op.obs_coords(mean), torch.zeros(1, dtype=dt, device=dev))
        logw = logw - (0.5 / var) * resid.to(torch.float64).pow(2).sum(1).reshape(C, P)
        x = constrain(torch.add(mean, ctx.randn_like(x), alpha=math.sqrt(var)), j)
        last = i == n - 2
        w = torch.softmax(logw, 1)
        ess = 1.0 / (w ** 2).sum(1)
        ess_min = min(ess_min, float(ess.min()) / P)
        need = torch.ones(C, dtype=torch.bool, device=dev) if last else ess < ess_threshold * P
        res = _resample_clouds(w, logw, need, ctx)
        if res is not None:
            flat, logw, dz = res
            x = x.index_select(0, flat)
            path = path.index_select(1, flat)
            log_z = log_z + dz
            n_resample += int(need.sum())
        if moves:
            extra, free = _path_move_terms(sde, op, s, j, asc, path, active, start, obs_shape)
            x, cached, acc = _langevin_moves(score_fn, op, obs_shape, x, s, int(moves), move_snr, C, P, ctx, extra, free,
                                        move_kernel)
            acc_all.append(acc)
    if info is not None:
        info.update({"resamples": n_resample, "ess_min": ess_min, "ess_final": float(ess.mean()) / P, "grid_points": n, "clouds": C, "particles": P,
                     "log_evidence": log_z.tolist()})
        if acc_all:
            info["move_acceptance"] = sum(acc_all) / len(acc_all)
    return x


SMC_GRIDS = ("logsnr", "time_uniform")


SMC_POTENTIALS = ("tweedie", "twisted", "path")


SMC_MOVE_KERNELS = ("mala", "ula")


def _smc_grid(sde: SDE, steps: int, eps: float, grid: str) -> List[float]:
    """``steps + 1`` times from T down to eps: uniform in the log-SNR lambda (default) or in t."""
    if grid not in SMC_GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid grids: {list(SMC_GRIDS)}")
    if grid == "time_uniform":
        return _uniform_grid(sde, steps, eps)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    lam = [sde.log_snr(torch.tensor([v], dtype=torch.float64)).item() for v in (sde.T, eps)]
    u = torch.linspace(0.0, 1.0, int(steps) + 1, dtype=torch.float64)
    t = [sde.scalar_t_from_log_snr(lam[0] + float(v) * (lam[1] - lam[0])) for v in u]
    t[0], t[-1] = sde.T, eps
    return t
