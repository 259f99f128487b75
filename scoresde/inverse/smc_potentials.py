"""The SMC sampler's propagation steps by potential: MCGdiff's Tweedie potential and TDS's twisted one."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch

from ..samplers import SamplerContext
from ..sde import SDE
from .operators import LinearOperator
from .smc_moves import _langevin_moves, _resample_clouds, _systematic

Tensor = torch.Tensor


def _smc_tweedie(score_fn, sde: SDE, op: LinearOperator, y_hat: Tensor, ratio2: Tensor, x: Tensor,
                 ctx: SamplerContext, obs_shape, desc: List[float], C: int, P: int, ess_threshold: float,
                 info: Optional[dict], jacobian: bool = False) -> Tensor:
    """The ``potential="tweedie"`` SMC of :func:`smc`: the twisted diffusion sampler (TDS) of Wu,
    Trippe, Naesseth, Blei & Cunningham ("Practical and asymptotically exact conditional sampling in
    diffusion models", NeurIPS 2023, Algorithm 1), in the whitened SVD coordinates of the operator.

    Twist: g_t(x) = N(y_hat; V^T x0_hat(x, t), kappa_t I + diag((s_y / S)^2)), with Tweedie's
    x0_hat = (x + sigma^2 s(x, t)) / alpha and kappa_t = sigma^2 / (alpha^2 + sigma^2) (the
    variance of x0 given x_t for unit-variance data, PiGDM's r_t^2), an approximation of
    p(y | x_t) that uses the prior (through the score) and so tells the unobserved coordinates
    which way the observation points.  Intermediate target at t_k: the reverse chain (ancestral
    kernels N(m, v I)) times g_{t_k}; proposal x_s ~ N(m + v grad log g_t(x_t), v I); incremental
    weight N(x_s; m, v) g_s(x_s) / (N(x_s; m + v grad, v) g_t(x_t)).  At t = eps, g is
    N(y_hat; V^T x0_hat, ~sigma(eps)^2 + (s_y / S)^2), the likelihood itself up to the truncation at
    eps, so the weighted particles target p(x0 | y) as particles grow, for any choice of kappa
    (kappa only decides how many particles that takes).  For one Gaussian prior and the exact score
    the twist is exact up to kappa's isotropy, so the weights stay nearly uniform.
    Cost (``twist_cov="isotropic"``): one forward and one backward pass through the score a step,
    plus one forward pass at eps for the last weight (NFE = steps + 1; backward passes = steps).

    ``twist_cov="jacobian"`` (``jacobian=True``): Cov = Cov[u0 | x_t] = sigma^2 / alpha^2 (I + sigma^2
    V^T (ds/dx) V) + diag((s_y / S)^2), from r vector-Jacobian products a step (r = number of
    observed coordinates: for small problems only), and the proposal is the locally optimal one,
    N(m, v I) times the twist at s linearized at x_t (:func:`_tds_linear_step`), instead of the
    gradient step (whose weights carry a noise-quadratic term of variance ~ r dlambda / 2 a step).
    For one Gaussian and the exact score, twist and proposal are then exact up to the time
    discretization: the weights stay nearly uniform and the error falls with steps (the 16-d
    test).  Backward passes = r (steps + 1).  Constants of g shared by
    all particles at one time are dropped (weights are normalized within a cloud).
    """
    B, dev, dt = x.shape[0], x.device, x.dtype
    n = len(desc)
    ctx.expect_nfe(n)
    yh = y_hat.to(device=dev, dtype=torch.float64)
    r2 = ratio2.to(device=dev, dtype=torch.float64)
    backward = 0
    extra: Dict[str, Tensor] = {}

    def evaluate(v: Tensor, t: float, want_grad: bool):
        """Score, log g_t (float64, [B]) and grad_x log g_t at time t."""
        nonlocal backward
        c = sde.scalars(t)
        kappa = c.sigma ** 2 / (c.alpha ** 2 + c.sigma ** 2) + r2                # [r]
        tv = torch.full((B,), t, dtype=dt, device=dev)
        extra.clear()
        with torch.enable_grad():
            xg = v.detach().requires_grad_(want_grad or jacobian)
            s = score_fn(xg, tv)
            x0 = (xg + c.sigma ** 2 * s) / c.alpha
            resid = yh - op.obs_coords(x0).to(torch.float64)                        # [B, r]
            if jacobian:
                # Cov[u0 | x_t] = sigma^2 / alpha^2 (I + sigma^2 V^T (ds/dx) V), one VJP a coordinate
                rr = resid.shape[1]
                cols, rows = [], []
                for k in range(rr):
                    e = torch.zeros(B, rr, dtype=dt, device=dev)
                    e[:, k] = 1
                    vk = op.embed(e, obs_shape)
                    jk, = torch.autograd.grad((s * vk).sum(), xg, retain_graph=True)
                    rows.append(jk.detach().reshape(B, -1).to(torch.float64))
                    cols.append(op.obs_coords(jk).to(torch.float64))
                    backward += 1
                Js = torch.stack(cols, 2)                                              # [B, r, r]
                extra["rows"], extra["Js"] = torch.stack(rows, 1), 0.5 * (Js + Js.transpose(1, 2))
                cov = (c.sigma ** 2 / c.alpha ** 2) * (torch.eye(rr, dtype=torch.float64, device=dev)
                                                        + c.sigma ** 2 * 0.5 * (Js + Js.transpose(1, 2)))
                cov = cov.detach() + torch.diag_embed(r2.expand(rr))
                L, _ = torch.linalg.cholesky_ex(cov)
                sol = torch.cholesky_solve(resid[..., None], L)[..., 0]
                lg = -0.5 * (resid * sol.detach()).sum(1) - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
                # the proposal's drift uses sol with cov fixed: lg's gradient through resid only
                lg_for_grad = -0.5 * (resid * sol.detach()).sum(1)
            else:
                lg = -0.5 * (resid ** 2 / kappa).sum(1)
                lg_for_grad = lg
            grad = None
            if want_grad:
                grad, = torch.autograd.grad(lg_for_grad.sum(), xg)
                backward += 1
        return s.detach(), lg.detach(), grad

    score, lg, grad = evaluate(x, desc[0], not jacobian)
    logw = lg.reshape(C, P).clone()                  # the prior draw is the proposal of p_T g_T
    n_resample, ess_min = 0, 1.0
    for i in range(n - 1):
        w = torch.softmax(logw, 1)
        ess = 1.0 / (w ** 2).sum(1)
        ess_min = min(ess_min, float(ess.min()) / P)
        need = ess < ess_threshold * P
        res = _resample_clouds(w, logw, need, ctx)
        if res is not None:
            flat, logw, _ = res
            x, score, lg = (v.index_select(0, flat) for v in (x, score, lg))
            grad = grad.index_select(0, flat) if grad is not None else None
            n_resample += int(need.sum())
            if jacobian:
                extra["rows"], extra["Js"] = extra["rows"].index_select(0, flat), extra["Js"].index_select(0, flat)
        ct, cs = sde.scalars(desc[i]), sde.scalars(desc[i + 1])
        cx, c_score, v = sde.ancestral_coefs(ct.alpha, ct.sigma, cs.alpha, cs.sigma)
        z = ctx.randn_like(x)
        if jacobian:
            x, log_ratio = _tds_linear_step(op, x, score, extra["rows"], extra["Js"], yh, r2, cx, c_score, v, z,
                                            cs, ctx, obs_shape)
        else:
            x = x * cx + c_score * score + v * grad + math.sqrt(v) * z
            gf, zf = grad.reshape(B, -1).to(torch.float64), z.reshape(B, -1).to(torch.float64)
            # log N(x_s; m, v) - log N(x_s; m + v grad, v), with x_s = m + v grad + sqrt(v) z
            log_ratio = -0.5 * v * (gf ** 2).sum(1) - math.sqrt(v) * (gf * zf).sum(1)
        last = i == n - 2
        score, lg_new, grad = evaluate(x, desc[i + 1], not last and not jacobian)
        logw = logw + (log_ratio + lg_new - lg).reshape(C, P)
        lg = lg_new
    w = torch.softmax(logw, 1)
    ess = 1.0 / (w ** 2).sum(1)
    ess_min = min(ess_min, float(ess.min()) / P)
    idx = _systematic(w, ctx)
    x = x.index_select(0, (idx + P * torch.arange(C, device=dev)[:, None]).reshape(-1))
    if info is not None:
        info.update({"resamples": n_resample + C, "ess_min": ess_min, "ess_final": float(ess.mean()) / P,
                     "grid_points": n, "clouds": C, "particles": P, "potential": "tweedie",
                     "backward_passes": backward})
    return x


def _gauss_logpdf(r: Tensor, L: Tensor) -> Tensor:
    """log N(r; 0, L L^T) up to -k/2 log(2 pi), for ``r [B, k]`` and Cholesky factors ``L [B, k, k]``."""
    sol = torch.linalg.solve_triangular(L, r[..., None], upper=False)[..., 0]
    return -0.5 * (sol ** 2).sum(1) - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)


def _tds_linear_step(op: LinearOperator, x: Tensor, score: Tensor, rows: Tensor, Js: Tensor, yh: Tensor,
                     r2: Tensor, cx: float, c_score: float, v: float, z: Tensor, cs, ctx: SamplerContext,
                     obs_shape) -> Tuple[Tensor, Tensor]:
    """One step of the ``twist_cov="jacobian"`` TDS: the locally optimal proposal.

    The twist at s is linearized at x_t with the score's Jacobian rows ``rows [B, r, D]`` =
    (ds/dx)^T v_k taken at t: u(x0_hat_s(x)) ~ u_c + H (x - x_t), H = (V^T + sigma_s^2 rows) / alpha_s,
    u_c = V^T (x_t + sigma_s^2 s_t) / alpha_s, with covariance Q = sigma_s^2 / alpha_s^2 (I + sigma_s^2 Js)
    + diag(r2).  The proposal N(x; m, v I) g^_s(x) is Gaussian; it is drawn by Matheron's rule
    (x' = m + sqrt(v) z, x = x' + v H^T (Q + v H H^T)^-1 (y_hat - u_c - H (x' - x_t) - e), e ~ N(0, Q)),
    and the returned log-ratio is log N(x; m, v) - log q(x) = log Z^ - log g^_s(x) with
    Z^ = N(y_hat; u_c + H (m - x_t), Q + v H H^T): the caller adds log g_s(x_s) - log g_t(x_t).
    """
    B = x.shape[0]
    dt = x.dtype
    xf = x.reshape(B, -1).to(torch.float64)
    m = (x * cx + c_score * score).reshape(B, -1).to(torch.float64)
    a, sg2 = cs.alpha, cs.sigma ** 2
    V = lambda w: op.obs_coords(w.to(dt).reshape(x.shape)).to(torch.float64)        # V^T, [B, D] -> [B, r]
    Hx = lambda w: (V(w) + sg2 * torch.einsum("brd,bd->br", rows, w)) / a
    rr = rows.shape[1]
    eye = torch.eye(rr, dtype=torch.float64, device=x.device)
    Q = (sg2 / a ** 2) * (eye + sg2 * Js) + torch.diag_embed(r2.expand(rr))
    # H H^T from H applied to its own rows: H^T e_k = (V e_k + sg2 rows_k) / a
    Ht = (op.embed(eye.to(dt)[None].expand(B, rr, rr).reshape(B * rr, rr), obs_shape).reshape(B, rr, -1)
          .to(torch.float64) + sg2 * rows) / a                                        # [B, r, D] = (H^T)^T
    HHt = Ht @ Ht.transpose(1, 2)
    Sm = Q + v * HHt
    LS, _ = torch.linalg.cholesky_ex(0.5 * (Sm + Sm.transpose(1, 2)))
    LQ, _ = torch.linalg.cholesky_ex(0.5 * (Q + Q.transpose(1, 2)))
    u_c = V(xf + sg2 * score.reshape(B, -1).to(torch.float64)) / a
    xp = m + math.sqrt(v) * z.reshape(B, -1).to(torch.float64)
    e = torch.einsum("bij,bj->bi", LQ, ctx.randn((B, rr), torch.float64, x.device))
    innov = yh - u_c - Hx(xp - xf) - e
    gain = torch.cholesky_solve(innov[..., None], LS)[..., 0]
    xs = xp + v * torch.einsum("brd,br->bd", Ht, gain)
    log_z = _gauss_logpdf(yh - u_c - Hx(m - xf), LS)
    log_ghat = _gauss_logpdf(yh - u_c - Hx(xs - xf), LQ)
    return xs.to(dt).reshape(x.shape), log_z - log_ghat


def _smc_twisted(score_fn, sde: SDE, op: LinearOperator, y_hat: Tensor, ratio2: Tensor, x: Tensor,
                 ctx: SamplerContext, obs_shape, desc: List[float], C: int, P: int, ess_threshold: float,
                 info: Optional[dict], moves: int = 0, move_snr: float = 0.3,
                 pool_out: Optional[int] = None, move_kernel: str = "mala") -> Tensor:
    """The ``potential="twisted"`` SMC of :func:`smc` (MCGdiff's potentials) on the grid ``desc``.

    ``pool_out``: return that many particles drawn (systematic) from all clouds together, cloud c's
    particle p weighted by Z_c w_cp (Z_c the cloud's evidence estimate; its unbiasedness makes the
    pooled measure consistent as the number of clouds grows at a fixed cloud size).

    ``y_hat [B, r]`` = S^-1 U^T y, ``ratio2 [r]`` = (s_y / S)^2.  Log-weights are kept in float64.
    """
    B, dev, dt = x.shape[0], x.device, x.dtype
    n = len(desc)
    # moves at the last level leave a score behind that nothing uses; elsewhere it feeds the next step
    ctx.expect_nfe((n - 1) * (1 + moves) + (1 if moves else 0))
    yh = y_hat.to(device=dev, dtype=torch.float64)
    r2 = ratio2.to(device=dev, dtype=torch.float64)

    def pot_var(c) -> Tensor:                     # variance of g at a time with scalars c, [r]
        return c.sigma ** 2 + c.alpha ** 2 * r2

    def log_g(u: Tensor, c) -> Tensor:            # log g(x) up to a constant shared by all particles
        var = pot_var(c)
        return -0.5 * ((c.alpha * yh - u.to(torch.float64)) ** 2 / var).sum(1)

    c0 = sde.scalars(desc[0])
    logw = log_g(op.obs_coords(x), c0).reshape(C, P)
    log_z = torch.zeros(C, dtype=torch.float64, device=dev)      # log of each cloud's evidence estimate
    prev_log_g = logw.reshape(-1)
    n_resample = 0
    ess_min = 1.0
    cached: Optional[Tensor] = None
    acc_all: List[float] = []
    for i in range(n - 1):
        t, s = desc[i], desc[i + 1]
        ct, cs = sde.scalars(t), sde.scalars(s)
        # the moves at t left score(x, t) behind (MALA / ULA evaluate it at the accepted state)
        score = score_fn(x, torch.full((B,), t, dtype=dt, device=dev)) if cached is None else cached
        cached = None
        cx, c_score, v = sde.ancestral_coefs(ct.alpha, ct.sigma, cs.alpha, cs.sigma)
        mean = torch.add(x * cx, score, alpha=c_score)
        um = op.obs_coords(mean).to(torch.float64)
        cvar = pot_var(cs)                                                    # [r]
        target = cs.alpha * yh
        # the normalizer of N(u; um, v) g_s(u): N(target; um, v + c_s), minus the previous potential
        lw_new = -0.5 * ((target - um) ** 2 / (v + cvar)).sum(1) - 0.5 * torch.log(v + cvar).sum()
        lw_prev = prev_log_g - 0.5 * torch.log(pot_var(ct)).sum()
        logw = logw + (lw_new - lw_prev).reshape(C, P)
        # proposal: the transition's draw everywhere, its observed coordinates replaced by a draw of
        # the Gaussian product (isotropic v: the observed and unobserved parts are independent)
        prec = 1.0 / v + 1.0 / cvar
        u_mean = (um / v + target / cvar) / prec
        u_new = u_mean + ctx.randn(u_mean.shape, torch.float64, dev) / prec.sqrt()
        x = torch.add(mean, ctx.randn_like(x), alpha=math.sqrt(v))
        x = x + op.embed((u_new - op.obs_coords(x).to(torch.float64)).to(dt), obs_shape)
        prev_log_g = log_g(op.obs_coords(x), cs)
        last = i == n - 2
        w = torch.softmax(logw, 1)
        ess = 1.0 / (w ** 2).sum(1)
        ess_min = min(ess_min, float(ess.min()) / P)
        need = torch.ones(C, dtype=torch.bool, device=dev) if last and pool_out is None else ess < ess_threshold * P
        if last and pool_out is not None:
            need = torch.zeros(C, dtype=torch.bool, device=dev)
        res = _resample_clouds(w, logw, need, ctx)
        if res is not None:
            flat, logw, dz = res
            x = x.index_select(0, flat)
            prev_log_g = prev_log_g.index_select(0, flat)
            log_z = log_z + dz
            n_resample += int(need.sum())
        if moves:
            tgt_u = (cs.alpha * yh).to(dt)
            inv_c = (1.0 / cvar).to(dt)
            x, cached, acc = _langevin_moves(score_fn, op, obs_shape, x, s, moves, move_snr, C, P, ctx,
                                             lambda v_: op.embed(inv_c * (tgt_u - op.obs_coords(v_)), obs_shape),
                                             lambda v_: v_, move_kernel)
            acc_all.append(acc)
            prev_log_g = log_g(op.obs_coords(x), cs)
    cloud_ess = None
    if pool_out is not None:
        lw_all = (log_z[:, None] + logw).reshape(-1)
        log_z = log_z + torch.logsumexp(logw, 1) - math.log(P)
        cz = torch.softmax(log_z, 0)
        cloud_ess = float(1.0 / (cz ** 2).sum())
        idx = _systematic(torch.softmax(lw_all, 0)[None], ctx, pool_out)[0]
        x = x.index_select(0, idx)
        n_resample += 1
    if info is not None:
        info.update({"resamples": n_resample, "ess_min": ess_min, "ess_final": float(ess.mean()) / P, "grid_points": n, "clouds": C, "particles": P,
                     "potential": "twisted", "log_evidence": log_z.tolist()})
        if cloud_ess is not None:
            info["cloud_ess"] = cloud_ess
        if acc_all:
            info["move_acceptance"] = sum(acc_all) / len(acc_all)
    return x
