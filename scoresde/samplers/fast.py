"""Few-step deterministic solvers of the probability-flow ODE: DPM-Solver++, UniPC, EDM's Heun.

All three work in the scaled variables of Karras et al. (2022, "EDM") that make every linear SDE
a variance-exploding one:  x~ = x / alpha(t),  sigma~ = sigma(t) / alpha(t) = exp(-lambda(t))
(lambda the log-SNR), with the denoiser (Tweedie's E[x0 | x_t])

    D(x~, t) = (x + sigma^2 score(x, t)) / alpha = x~ + (sigma^2 / alpha) score(alpha x~, t).

The probability-flow ODE is then  dx~/dsigma~ = (x~ - D) / sigma~  for VP, sub-VP and VE alike;
the SDE only fixes the range of sigma~ (t = t_from_log_snr(-log sigma~) in closed form).

Time grids (``grid``), from T down to eps, with ``steps`` steps:

* ``"logsnr"``: uniform in lambda (DPM-Solver's default).
* ``"karras"``: sigma~_i^(1/rho) uniform, rho = ``rho`` (EDM, eq. 5; rho = 7).
* ``"time_uniform"``: uniform in t.
* ``"time_quadratic"``: uniform in sqrt(t) (DPM-Solver's ``time_quadratic``).
* ``"vp_quadratic"``: uniform in sqrt(t_VP), where t_VP is the time at which Song et al.'s default
  VP SDE reaches the same sigma~.  This is DPM-Solver's ``time_quadratic`` for VP carried over to
  every SDE through sigma~ (the probability-flow ODE in (x~, sigma~) does not depend on the SDE,
  so a grid in sigma~ should not either).  Its log-steps are shortest around sigma~ ~ 1 and grow
  towards both ends, where D varies slowly in lambda; it measured best (the default).

End of the trajectory (``denoise``, DPM-Solver++ and Heun).  False: the last step lands on eps and the sample is
x = alpha(eps) x~ (like the ODE sampler).  True: the grid ends at eps one step earlier and a last
step goes to sigma~ = 0; along the exact flow that is the denoiser itself, x0 = D(x~, eps), a
first-order step that costs no extra evaluation for DPM-Solver++ (it reuses D at eps) and one Euler
step for Heun (EDM's Algorithm 1 does the same).  The defaults are the choices that measured best
in benchmarks/samplers.py (see benchmarks/results/samplers.md).
"""

from __future__ import annotations

import math

import torch

from ..sde import SDE
from . import register_sampler

Tensor = torch.Tensor

GRIDS = ("logsnr", "karras", "time_uniform", "time_quadratic", "vp_quadratic")


def time_grid(sde: SDE, n: int, eps: float, grid: str = "logsnr", rho: float = 7.0,
              device=None) -> Tensor:
    """``n + 1`` times (float64) from T down to eps spaced by ``grid`` (see the module docstring)."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; valid grids: {list(GRIDS)}")
    if int(n) != n or n < 1:
        raise ValueError(f"the grid needs at least one step, got {n}")
    ends = torch.tensor([sde.T, eps], dtype=torch.float64, device=device)
    u = torch.linspace(0.0, 1.0, int(n) + 1, dtype=torch.float64, device=device)
    if grid == "time_uniform":
        t = ends[0] + u * (ends[1] - ends[0])
    elif grid == "time_quadratic":
        r = ends.sqrt()
        t = (r[0] + u * (r[1] - r[0])) ** 2
    else:
        lam = sde.log_snr(ends)
        if grid == "vp_quadratic":
            from ..sde import VPSDE
            vp = VPSDE()
            r = vp.t_from_log_snr(lam).sqrt()
            t = sde.t_from_log_snr(vp.log_snr((r[0] + u * (r[1] - r[0])) ** 2))
        elif grid == "logsnr":
            t = sde.t_from_log_snr(lam[0] + u * (lam[1] - lam[0]))
        else:
            if not rho > 0:
                raise ValueError(f"rho must be positive, got {rho}")
            s = torch.exp(-lam / rho)
            t = sde.t_from_log_snr(-rho * torch.log(s[0] + u * (s[1] - s[0])))
    t[0], t[-1] = sde.T, eps  # exact ends despite the round trip through lambda
    return t


class _Denoiser:
    """D(x~, t_i) in the scaled variables at the times of a grid, from the score (see the module docstring).

    The coefficients alpha(t_i) and sigma(t_i)^2 / alpha(t_i) are computed for the whole grid at
    once and kept as Python floats: each call then costs two passes over the batch besides the
    score, not a dozen one-element tensor ops.
    """

    def __init__(self, score_fn, sde: SDE, t: Tensor, x: Tensor):
        self.score_fn = score_fn
        al, sg = sde.mean_coef(t), sde.std(t)
        self.al, self.c = al.tolist(), (sg ** 2 / al).tolist()
        self.t_in = t.to(device=x.device, dtype=x.dtype)  # the score's time input, as before
        self.batch = x.shape[0]

    def __call__(self, xt: Tensor, i: int) -> Tensor:
        score = self.score_fn(xt * self.al[i], self.t_in[i].expand(self.batch))
        return torch.add(xt, score, alpha=self.c[i])


def _check_steps(steps, least: int = 1) -> int:
    if int(steps) != steps or steps < least:
        raise ValueError(f"steps must be an integer >= {least}, got {steps}")
    return int(steps)


def _record_scaled(ctx, t: float, xt: Tensor, al: float) -> None:
    """Record x = alpha x~ at t; the unscaled state costs a pass over the batch, so only when recorded."""
    if ctx.record_on:
        ctx.record(t, xt * al)


def _finish(xt: Tensor, den: _Denoiser, denoise: bool, ctx) -> Tensor:
    """The returned sample: the denoiser's D(x~, t_end) (one more evaluation) or alpha x~ at t_end."""
    if denoise:
        out = den(xt, len(den.al) - 1)
        ctx.record(0.0, out)
        return out
    return xt * den.al[-1]


@register_sampler("dpm_solver")
def dpm_solver(score_fn, sde: SDE, x: Tensor, ctx, *, eps: float = 1e-3, steps: int = 20,
               order: int = 2, grid: str = "vp_quadratic", rho: float = 7.0, denoise: bool = False,
               lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++", Alg. 2 and its 3rd-order form).

    One evaluation a step: D_i = D(x~_i, t_i); with h = lambda_{i+1} - lambda_i, r_k = h_{i-k} / h,

        x~_{i+1} = e^{-h} x~_i - phi_1 D_i + phi_2 D1 - phi_3 D2,
        phi_1 = expm1(-h),  phi_2 = phi_1 / h + 1,  phi_3 = phi_2 / h - 1/2,

    where D1, D2 are the first and second divided differences of the past D in lambda (order 2:
    D1 = (D_i - D_{i-1}) / r_0 and D2 = 0; order 1: DDIM, D1 = D2 = 0).  The first steps warm up
    with lower orders; ``lower_order_final`` also lowers the order of the last steps (order k at
    most k-th from last), as DPM-Solver's code does for few steps; here always, because the last
    steps are the longest in lambda (sub-VP's sigma~(eps) ~ 1e-4) and high order hurts there.
    NFE = ``steps``.
    """
    steps = _check_steps(steps)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    ctx.expect_nfe(steps)
    n_grid = steps - 1 if denoise else steps
    if n_grid < 1:
        raise ValueError("denoise=True needs steps >= 2")
    t = time_grid(sde, n_grid, eps, grid, rho)
    den = _Denoiser(score_fn, sde, t, x)
    lam = sde.log_snr(t).tolist()  # one host copy of the scalars, not a sync per step
    tt = t.tolist()
    xt = x / den.al[0]
    ctx.record(tt[0], x)
    Ds, hs = [], []
    for i in range(n_grid):
        Ds.append(den(xt, i))
        Ds = Ds[-3:]
        h = lam[i + 1] - lam[i]
        o = min(order, len(Ds))
        if lower_order_final:
            o = min(o, n_grid - i)
        phi1 = math.expm1(-h)
        xt = torch.add(xt * math.exp(-h), Ds[-1], alpha=-phi1)
        if o == 2:
            # - phi1 / 2 * D1, D1 = (D_i - D_{i-1}) / r0
            c = -0.5 * phi1 / (hs[-1] / h)
            xt.add_(Ds[-1], alpha=c).add_(Ds[-2], alpha=-c)
        elif o == 3:
            r0, r1 = hs[-1] / h, hs[-2] / h
            d1_0 = (Ds[-1] - Ds[-2]) / r0
            d1_1 = (Ds[-2] - Ds[-3]) / r1
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            # + phi2 D1 - phi3 D2 with D1 = d1_0 + r0 / (r0 + r1) (d1_0 - d1_1), D2 = (d1_0 - d1_1) / (r0 + r1)
            xt.add_(d1_0, alpha=phi2).add_(d1_0 - d1_1, alpha=phi2 * r0 / (r0 + r1) - phi3 / (r0 + r1))
        hs.append(h)
        _record_scaled(ctx, tt[i + 1], xt, den.al[i + 1])
    return _finish(xt, den, denoise, ctx)


@register_sampler("heun")
def heun(score_fn, sde: SDE, x: Tensor, ctx, *, eps: float = 1e-3, steps: int = 10,
         grid: str = "vp_quadratic", rho: float = 7.0, denoise: bool = False) -> Tensor:
    """Heun's second-order method (Karras et al. 2022, EDM, Algorithm 1), in sigma~.

    With d(x~, sigma~) = (x~ - D) / sigma~ and a step from sigma~_i to sigma~_{i+1}:

        x' = x~ + (sigma~_{i+1} - sigma~_i) d(x~, sigma~_i),
        x~ <- x~ + (sigma~_{i+1} - sigma~_i) [d(x~, sigma~_i) + d(x', sigma~_{i+1})] / 2,

    except for a last step to sigma~ = 0 (``denoise=True``), which is the Euler step x~ <- D, as in
    EDM.  NFE = 2 ``steps`` - 1 with ``denoise``, 2 ``steps`` without.

    Defaults by measurement (ring8, 10,000 samples, benchmarks/samplers.py): EDM's own grid
    (``grid="karras"``, rho = 7) spends its steps at sigma~ far above the data scale when
    sigma~_max is 150 (VP) and its W2 at 20 NFE was 1.1x (VE) to 2.5x (sub-VP) that of
    ``"vp_quadratic"``; ``"time_uniform"`` was better still for VP and sub-VP but worse for VE.
    The final denoising step changed nothing measurable.  Heun remains far behind the multistep
    solvers at equal NFE (two evaluations a step): 7-9x the exact-sample floor at 20 NFE.
    """
    steps = _check_steps(steps)
    n_grid = steps - 1 if denoise else steps
    if n_grid < 1:
        raise ValueError("denoise=True needs steps >= 2")
    ctx.expect_nfe(2 * steps - 1 if denoise else 2 * steps)
    t = time_grid(sde, n_grid, eps, grid, rho)
    den = _Denoiser(score_fn, sde, t, x)
    sig = torch.exp(-sde.log_snr(t)).tolist()
    tt = t.tolist()
    xt = x / den.al[0]
    ctx.record(tt[0], x)
    for i in range(n_grid):
        s0, s1 = sig[i], sig[i + 1]
        d = torch.sub(xt, den(xt, i)).mul_(1.0 / s0)
        xp = torch.add(xt, d, alpha=s1 - s0)
        dp = torch.sub(xp, den(xp, i + 1)).mul_(1.0 / s1)
        xt = torch.add(xt, d, alpha=0.5 * (s1 - s0)).add_(dp, alpha=0.5 * (s1 - s0))
        _record_scaled(ctx, tt[i + 1], xt, den.al[i + 1])
    return _finish(xt, den, denoise, ctx)


@register_sampler("unipc")
def unipc(score_fn, sde: SDE, x: Tensor, ctx, *, eps: float = 1e-3, steps: int = 20, order: int = 1,
          variant: str = "bh1", grid: str = "vp_quadratic", rho: float = 7.0,
          lower_order_final: bool = True) -> Tensor:
    """UniPC multistep with data prediction (Zhao et al. 2023, "UniPC", Algorithms 2-3).

    Each step is a UniP predictor of order p from the last p denoised values, then the UniC
    corrector, which re-uses the evaluation D_{i+1} at the predicted point (needed for the next
    step anyway) to raise the order by one at no cost.  With h = lambda_{i+1} - lambda_i,
    r_k = (lambda_{i-k} - lambda_i) / h and divided differences Dk = (D_{i-k} - D_i) / r_k,

        x~_{i+1} = e^{-h} x~_i - phi_1 D_i - B(h) sum_k a_k Dk,   phi_1 = expm1(-h),

    where the weights a solve R a = b with R_{jk} = r_k^j and b_j = j! h phi_{j+1}(-h) / B(h)
    (the predictor uses a_1 = 1/2 at order 2); B(h) = -h (``"bh1"``) or expm1(-h) (``"bh2"``).
    The corrector adds the new point as r = 1.  The last step skips the corrector, so
    NFE = ``steps``.

    Defaults by measurement (ring8, 10,000 samples, VP/sub-VP/VE, benchmarks/samplers.py): the
    first-order predictor with its corrector (``order=1``, ``"bh1"``: x~ <- e^{-h} x~ + (1 - e^{-h})
    D_i + h/2 (D_{i+1} - D_i), second order overall) was the most robust, W2 within 1.05x the
    exact-sample floor at 20 NFE and about 1.5x at 10; ``order=3, variant="bh2"`` came close at 20
    NFE (1.07-1.15x) but broke down at 10.
    """
    steps = _check_steps(steps)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unknown variant {variant!r}; valid variants: ['bh1', 'bh2']")
    ctx.expect_nfe(steps)
    t = time_grid(sde, steps, eps, grid, rho)
    den = _Denoiser(score_fn, sde, t, x)
    lam = sde.log_snr(t).tolist()
    tt = t.tolist()
    xt = x / den.al[0]
    ctx.record(tt[0], x)
    Ds, lams = [den(xt, 0)], [lam[0]]
    for i in range(steps):
        p = min(order, len(Ds))
        if lower_order_final:
            p = min(p, steps - i)
        last = i == steps - 1
        h = lam[i + 1] - lam[i]
        hh = -h
        phi1 = math.expm1(hh)
        B = hh if variant == "bh1" else phi1
        rks, D1s = [], []
        for k in range(1, p):
            rk = (lams[-(k + 1)] - lams[-1]) / h
            rks.append(rk)
            D1s.append((Ds[-(k + 1)] - Ds[-1]) / rk)
        rks.append(1.0)
        # b_j = j! h phi_{j+1}(hh) / B(h), built by the recursion of the reference code
        hphik = phi1 / hh - 1.0
        fact = 1
        R, b = [], []
        for j in range(1, p + 1):
            R.append([r ** (j - 1) for r in rks])
            b.append(hphik * fact / B)
            fact *= j + 1
            hphik = hphik / hh - 1.0 / fact
        if p > 1:  # order 1 has closed-form weights: no small solve (a few tensor ops) per step
            R64 = torch.tensor(R, dtype=torch.float64)
            b64 = torch.tensor(b, dtype=torch.float64)
        base = torch.add(xt * math.exp(-h), Ds[-1], alpha=-phi1)
        xt_new = base
        if D1s:
            rhos_p = [0.5] if p == 2 else torch.linalg.solve(R64[:-1, :-1], b64[:-1]).tolist()
            xt_new = base.clone()
            for r, d in zip(rhos_p, D1s):
                xt_new.add_(d, alpha=-B * r)
        if not last:
            D_new = den(xt_new, i + 1)
            rhos_c = [0.5] if p == 1 else torch.linalg.solve(R64, b64).tolist()
            # base - B (rho_c (D_new - D_i) + sum_k rho_k Dk), updated in place on base
            xt_new = base.add_(D_new, alpha=-B * rhos_c[-1]).add_(Ds[-1], alpha=B * rhos_c[-1])
            for r, d in zip(rhos_c[:-1], D1s):
                xt_new.add_(d, alpha=-B * r)
            Ds.append(D_new)
            lams.append(lam[i + 1])
            Ds, lams = Ds[-3:], lams[-3:]
        xt = xt_new
        _record_scaled(ctx, tt[i + 1], xt, den.al[i + 1])
    return xt * den.al[-1]
