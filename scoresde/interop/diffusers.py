"""diffusers: their models and schedulers in, our score functions out.

diffusers is an optional extra (``pip install "scoresde[interop]"``); it is imported inside the
functions that need it, never by ``import scoresde``.  :class:`DiscreteVPSDE` and the wrappers
themselves are plain torch.

**The discrete schedule as an SDE.**  A diffusers scheduler holds a table
``alphas_cumprod[k] = prod_{i <= k} (1 - beta_i)``, k = 0..N-1, and its models see
``x_k = sqrt(ac_k) x0 + sqrt(1 - ac_k) eps`` (variance preserving: alpha^2 + sigma^2 = 1).  We
place entry k at the time ``t_k = (k + 1) T / N`` (so t_0 = 1/N = 1e-3, the sampling eps, and
t_{N-1} = T) and add ac = 1 at t = 0.  Then

* linear betas (``beta_schedule="linear"``, DDPM) are Song et al.'s VP SDE discretised (their
  Appendix B): beta_i = beta(t) / N along the grid, so ``VPSDE(beta_min = N beta_start,
  beta_max = N beta_end)``.  The correspondence is not exact: ``log ac_k = sum log(1 - beta_i)``
  differs from ``log alpha(t_k)^2 = -int_0^{t_k} beta`` by the rule's error and by the
  ``beta_i^2 / 2`` terms of ``log(1 - beta_i)``.  For DDPM's table (1e-4, 0.02, N = 1000) the
  log-SNR of the VP SDE at t_k is within **0.047** of the table's at every k (0.047 at k = 0,
  0.034 at k = 999; ``test_linear_table_is_the_vp_sde_to_within_0p05_in_log_snr``), i.e. the
  timestep of the same noise level differs from ``t N - 1`` by up to 3.4 timesteps (0.09 at
  k = 0, -0.60 at k = 500, -3.36 at k = 999).  That is why the time given to the model is
  never ``t N - 1`` but the noise-level match below;
* any other table (``squaredcos_cap_v2``, ``scaled_linear``, ``trained_betas``) becomes a
  :class:`DiscreteVPSDE`: the cumulative ``B(t) = -log alpha(t)^2 = log(1 + exp(-2 lambda))``
  (a smooth, increasing function of the log-SNR lambda that stays finite at t = 0, where
  lambda = +inf) through the N + 1 knots, by monotone piecewise-cubic Hermite interpolation
  (PCHIP, Fritsch & Carlson 1980), so lambda is C^1 and decreasing in t, and
  alpha = exp(-B/2), sigma^2 = 1 - exp(-B), f = -B'/2, g^2 = B' hold exactly
  (``d log alpha / dt = f``, ``d sigma^2 / dt = 2 f sigma^2 + g^2``).  Every sampler and both
  likelihoods then see one SDE that passes through the model's training noise levels;
* ``ScoreSdeVeScheduler`` is the VE SDE, ``VESDE(sigma_min, sigma_max)``.

**Continuous t to the model's timestep.**  A score at time t asks the model at the noise level
of t: the fractional timestep ``k`` with lambda_table(k) = lambda_sde(t), where lambda_table is
the table's :class:`DiscreteVPSDE` at t = (k + 1) T / N (exact at the integers, the PCHIP
interpolant between them; for k in (-1, 0) the segment to ac = 1).  So the model is never asked
at a noise level off the schedule; the only approximation is between integer timesteps, where
the model was never trained anyway.  UNet2DModel's sinusoidal embedding takes float timesteps;
for a model that does not, ``fractional_timesteps=False`` rounds k to the nearest integer (an
error of up to half a timestep: 0.17 in lambda at k = 0, 0.005 at k = 999 for DDPM's table).
For VE, diffusers' NCSN++ takes sigma itself (``ScoreSdeVePipeline`` passes ``sigmas[i]``) and
returns the score: we pass sigma(t), exact in continuous time.

**Prediction types** (alpha^2 + sigma^2 = 1; x = alpha x0 + sigma eps):
``epsilon``: score = -eps / sigma;  ``v_prediction`` (v = alpha eps - sigma x0):
eps = sigma x + alpha v;  ``sample``: score = (alpha x0 - x) / sigma^2.

**Out.**  :func:`to_diffusers` wraps any score function as an epsilon model on diffusers' DDPM
timestep convention with a matching ``DDPMScheduler``; :func:`to_k_diffusion` as a k-diffusion
denoiser ``D(x, sigma)``.  :func:`diffusers_sample` is the standard scheduler loop.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import nn

from ..sde import SDE, VESDE, VPSDE, ScoreFn, as_time, expand_to
from .discrete import DiscreteVPSDE

Tensor = torch.Tensor

__all__ = ['from_diffusers', 'load_diffusers', 'to_diffusers', 'diffusers_sample', 'DiffusersScore', 'DiffusersModel', 'NoisePrediction', 'PREDICTION_TYPES']


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


_INSTALL = 'diffusers is not installed; install the interop extra: pip install "scoresde[interop]"'


def _import_diffusers():
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - exercised by monkeypatching sys.modules
        raise ImportError(_INSTALL) from e
    return diffusers


def _schedule_of(scheduler) -> Tuple[SDE, Optional[DiscreteVPSDE]]:
    """``(sde, table)`` of a diffusers scheduler (``table`` None for VE)."""
    cfg = scheduler.config
    if type(scheduler).__name__ == "ScoreSdeVeScheduler":
        return VESDE(sigma_min=float(cfg.sigma_min), sigma_max=float(cfg.sigma_max)), None
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is None:
        raise ValueError(f"unsupported scheduler {type(scheduler).__name__}: expected a scheduler with an "
                         "alphas_cumprod table (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, "
                         "UniPCMultistepScheduler, EulerDiscreteScheduler, ...) or ScoreSdeVeScheduler")
    table = DiscreteVPSDE(ac)
    linear = (cfg.get("beta_schedule", None) == "linear" and cfg.get("trained_betas", None) is None
              and not cfg.get("rescale_betas_zero_snr", False))
    if linear:
        n = table.N
        return VPSDE(beta_min=n * float(cfg.beta_start), beta_max=n * float(cfg.beta_end)), table
    return table, table


def _model_output(out) -> Tensor:
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class DiffusersScore(nn.Module):
    """A diffusers model as ``score_fn(x, t)`` with ``.sde`` (built by :func:`from_diffusers`).

    ``timestep(t)`` is what the model is given at time t: the fractional table index of t's noise
    level (alphas_cumprod schedulers) or sigma(t) (VE), in float32 or wider whatever the model's
    dtype.  The model runs in its own dtype; the score comes back in x's.
    """

    def __init__(self, unet: nn.Module, sde: SDE, table: Optional[DiscreteVPSDE], prediction_type: str,
                 fractional_timesteps: bool = True, model_kwargs: Optional[dict] = None):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {list(PREDICTION_TYPES)}")
        self.unet = unet
        self.sde = sde
        self.table = table
        self.prediction_type = prediction_type
        self.fractional_timesteps = bool(fractional_timesteps)
        self.model_kwargs = dict(model_kwargs or {})

    def timestep(self, t: Tensor) -> Tensor:
        """The model's timestep input at time t ``[B]`` (float64)."""
        t = torch.as_tensor(t).to(torch.float64)
        if self.table is None:   # VE: NCSN++ takes sigma itself
            return self.sde.std(t)
        tt = t if self.sde is self.table else self.table.t_from_log_snr(self.sde.log_snr(t))
        k = self.table.timestep(tt)
        return k if self.fractional_timesteps else torch.round(k)

    def forward(self, x: Tensor, t) -> Tensor:
        t = as_time(t, x)
        k = self.timestep(t)
        p = next(iter(self.unet.parameters()), None)
        mdtype = p.dtype if p is not None else x.dtype
        # the timestep stays float32 or wider: in bfloat16 timestep 993.76 would become 992
        # (diffusers' UNets embed a float32 timestep and cast the embedding to their own dtype)
        k = k.to(torch.promote_types(mdtype, torch.float32))
        out = _model_output(self.unet(x.to(mdtype), k, **self.model_kwargs)).to(x.dtype)
        if self.table is None:   # ScoreSdeVe models return the score
            return out
        al, sg = self.sde.coefs(t, dtype=x.dtype, device=x.device)
        al, sg = expand_to(al, x), expand_to(sg, x)
        if self.prediction_type == "epsilon":
            return -out / sg
        if self.prediction_type == "v_prediction":
            return -(sg * x + al * out) / sg
        return (al * out - x) / sg ** 2

    def extra_repr(self) -> str:
        return f"sde={self.sde!r}, prediction_type={self.prediction_type!r}"


def from_diffusers(unet: nn.Module, scheduler, prediction_type: Optional[str] = None,
                   fractional_timesteps: bool = True, model_kwargs: Optional[dict] = None) -> DiffusersScore:
    """A diffusers model and its scheduler as a score function ``score_fn(x, t)`` with ``.sde``.

    ``.sde``: ``VPSDE(N beta_start, N beta_end)`` for linear betas, ``VESDE(sigma_min, sigma_max)``
    for ``ScoreSdeVeScheduler``, a :class:`DiscreteVPSDE` of the table otherwise (see the module
    docstring for the correspondence and its error).  ``prediction_type`` defaults to the
    scheduler config's; ``model_kwargs`` are passed to every model call (e.g. class labels).
    Every scoresde sampler and the likelihood take the result as it is::

        score_fn = sd.interop.from_diffusers(unet, scheduler)
        out = sd.sample(score_fn, score_fn.sde, (16, 3, 32, 32), sampler="ode")
    """
    sde, table = _schedule_of(scheduler)
    if prediction_type is None:
        prediction_type = scheduler.config.get("prediction_type", "epsilon") if table is not None else "epsilon"
    return DiffusersScore(unet, sde, table, prediction_type, fractional_timesteps, model_kwargs)


def load_diffusers(path, device=None, dtype: Optional[torch.dtype] = None, **kwargs) -> DiffusersScore:
    """:func:`from_diffusers` on a local folder: a pipeline folder (``model_index.json`` with
    ``unet/`` and ``scheduler/``) or any folder with ``unet/`` and ``scheduler/`` subfolders.
    Nothing is downloaded (``local_files_only``).  ``kwargs`` go to :func:`from_diffusers`."""
    import json
    import os

    diffusers = _import_diffusers()
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"not a folder: {path!r} (expected a diffusers model folder)")
    names = {"unet": "UNet2DModel", "scheduler": "DDPMScheduler"}
    index = os.path.join(path, "model_index.json")
    if os.path.isfile(index):
        with open(index) as fh:
            spec = json.load(fh)
        for part in names:
            if part in spec and isinstance(spec[part], (list, tuple)) and len(spec[part]) == 2:
                names[part] = spec[part][1]
    for part in names:
        if not os.path.isdir(os.path.join(path, part)):
            raise ValueError(f"{path!r} has no {part}/ subfolder (a diffusers model folder has unet/ and scheduler/)")
    for part, cls in names.items():
        if not hasattr(diffusers, cls):
            raise ValueError(f"{path!r}: diffusers has no class {cls!r} for {part}/")
    unet = getattr(diffusers, names["unet"]).from_pretrained(path, subfolder="unet", local_files_only=True)
    sched = getattr(diffusers, names["scheduler"]).from_pretrained(path, subfolder="scheduler", local_files_only=True)
    unet.eval()
    if device is not None or dtype is not None:
        unet.to(device=device, dtype=dtype)
    return from_diffusers(unet, sched, **kwargs)


class NoisePrediction(NamedTuple):
    """What :class:`DiffusersModel` returns: ``.sample`` (or ``[0]``) is the predicted noise."""

    sample: Tensor


def _vp_alpha(lam: Tensor) -> Tensor:
    """alpha of the variance-preserving process with log-SNR lam: sqrt(sigmoid(2 lam))."""
    return torch.exp(0.5 * torch.nn.functional.logsigmoid(2.0 * lam))


class DiffusersModel(nn.Module):
    """A score function as a diffusers noise-prediction model (built by :func:`to_diffusers`).

    ``model(sample, timestep).sample`` is eps at DDPM timestep k (a scalar or ``[B]``, integer or
    fractional): k is matched to our time t with the same log-SNR (the table's
    :class:`DiscreteVPSDE`), the VP-scaled sample is taken to our SDE's scale,
    ``x = (alpha(t) / alpha_vp) sample`` (alpha_vp = sqrt(sigmoid(2 lambda)); 1 for VP itself),
    and ``eps = -sigma(t) score(x, t)``, the same noise in both scalings.
    """

    def __init__(self, score_fn: ScoreFn, sde: SDE, table: DiscreteVPSDE):
        super().__init__()
        self.score_fn = score_fn
        if isinstance(score_fn, nn.Module):
            self.score_model = score_fn   # registered, so .to() and .parameters() see it
        self.sde = sde
        self.table = table
        self.calls = 0

    def time_of_timestep(self, timestep, batch: int, device=None) -> Tensor:
        """Our time t (float64, ``[B]``) of DDPM timestep k: the time of the same log-SNR."""
        k = torch.as_tensor(timestep, device=device).to(torch.float64).reshape(-1)
        k = k.expand(batch) if k.numel() == 1 else k
        tt = self.table.time_of_timestep(k)
        return tt if self.sde is self.table else self.sde.t_from_log_snr(self.table.log_snr(tt))

    def forward(self, sample: Tensor, timestep, return_dict: bool = True, **kwargs):
        if kwargs:
            raise ValueError(f"unexpected model arguments {sorted(kwargs)}: a scoresde score function "
                             "takes only (sample, timestep)")
        self.calls += 1
        t = self.time_of_timestep(timestep, sample.shape[0], sample.device)
        al, sg = self.sde.coefs(t, dtype=torch.float64, device=sample.device)
        c = (al / _vp_alpha(self.sde.log_snr(t))).to(sample.dtype)
        x = expand_to(c, sample) * sample
        score = self.score_fn(x, t.to(sample.dtype))
        eps = -expand_to(sg.to(sample.dtype), sample) * score
        return NoisePrediction(eps) if return_dict else (eps,)


def to_diffusers(score_fn: ScoreFn, sde: Optional[SDE] = None, num_train_timesteps: int = 1000):
    """A score function (our :class:`ScoreModel`, a mixture's exact score, any ``score_fn``) as a
    diffusers epsilon model plus its scheduler: returns ``(model, scheduler)``.

    ``scheduler`` is a ``DDPMScheduler`` whose table is our SDE's noise levels at the DDPM
    timesteps, entry k at t = (k + 1) T / N: for a VP SDE DDPM's own linear config
    (beta_start = beta_min / N, beta_end = beta_max / N, which ``from_diffusers`` turns back into
    the same VP SDE), for any other SDE ``trained_betas`` giving ac_k = sigmoid(2 lambda(t_k))
    exactly.  It sets ``clip_sample=False`` (our data need not lie in [-1, 1]) and
    ``timestep_spacing="trailing"`` (so DDIM, DPM-Solver, UniPC and Euler all start at k = N - 1,
    our prior at t = T, and end at k = 0, t = T / N, before their last step to sigma = 0).  Any
    alphas_cumprod scheduler runs on it::

        model, ddpm = sd.interop.to_diffusers(score_model)
        sched = DPMSolverMultistepScheduler.from_config(ddpm.config)
        x = sd.interop.diffusers_sample(model, sched, noise, steps=20).x

    Limits (diffusers' own, not the export's): ``DDIMScheduler`` steps from timestep k to
    k - N // steps, so its chain is consistent only when ``steps`` divides N (for N = 1000:
    5, 10, 20, 25, 40, 50, 100, ...; otherwise each step lands up to one timestep off the next
    one); an SDE whose 1 - ac at t = T / N is below float32's resolution (sub-VP: sigma(T/N)^2
    ~ 1e-8) cannot be exported and raises ValueError naming float32.
    """
    diffusers = _import_diffusers()
    if sde is None:
        sde = getattr(score_fn, "sde", None)
        if not isinstance(sde, SDE):
            raise ValueError("to_diffusers needs the SDE: pass sde= (score_fn has no .sde)")
    n = int(num_train_timesteps)
    if n < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    common = dict(num_train_timesteps=n, prediction_type="epsilon", clip_sample=False,
                  timestep_spacing="trailing")
    if type(sde) is VPSDE and abs(sde.T - 1.0) < 1e-12:
        sched = diffusers.DDPMScheduler(beta_schedule="linear", beta_start=sde.beta_min / n,
                                        beta_end=sde.beta_max / n, **common)
    else:
        t = torch.arange(n + 1, dtype=torch.float64) * (sde.T / n)
        log_ac = torch.nn.functional.logsigmoid(2.0 * sde.log_snr(t[1:]))
        log_ac = torch.cat([torch.zeros(1, dtype=torch.float64), log_ac])
        betas = -torch.expm1(log_ac[1:] - log_ac[:-1])
        sched = diffusers.DDPMScheduler(trained_betas=betas.tolist(), **common)
    ac = sched.alphas_cumprod
    if not bool((ac[1:] < ac[:-1]).all()) or not bool((ac < 1).all()):
        raise ValueError(f"{sde!r} cannot be exported with num_train_timesteps={n}: its noise levels at the "
                         "first timesteps are below the resolution of diffusers' float32 alphas_cumprod "
                         f"(smallest 1 - ac_k: {float(1 - ac.double().max()):.3g}); use an SDE whose "
                         "sigma/alpha at t = T/N exceeds about 3e-4")
    table = DiscreteVPSDE(ac, T=sde.T)
    return DiffusersModel(score_fn, sde, table), sched


def diffusers_sample(model: Callable, scheduler, noise: Tensor, steps: int,
                     generator: Optional[torch.Generator] = None, return_trajectory: bool = False):
    """diffusers' standard sampling loop, returning a :class:`~scoresde.samplers.SampleResult`::

        scheduler.set_timesteps(steps)
        x = noise * scheduler.init_noise_sigma
        for k in scheduler.timesteps:
            eps = model(scheduler.scale_model_input(x, k), k).sample
            x = scheduler.step(eps, k, x).prev_sample

    ``noise`` is a standard normal draw ``[B, ...]``; ``nfe`` counts the model calls (one per
    entry of ``scheduler.timesteps``: ``steps`` for the multistep, DDIM, Euler and LMS schedulers,
    ``2 steps - 1`` for ``HeunDiscreteScheduler``, whose last step is an Euler step to sigma = 0);
    ``trajectory`` holds the state after each step (``times``: the timesteps k).  ``generator``
    goes to ``scheduler.step`` where it takes one (the stochastic schedulers), so no draw comes
    from torch's global generator.  ``DDIMScheduler`` needs ``steps`` to divide
    ``num_train_timesteps`` (see :func:`to_diffusers`).
    """
    import inspect

    from ..samplers import SampleResult

    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    scheduler.set_timesteps(int(steps), device=noise.device)
    x = noise * scheduler.init_noise_sigma
    calls, states = 0, []
    takes = "generator" in inspect.signature(scheduler.step).parameters
    step_kw = {"generator": generator} if generator is not None and takes else {}
    if noise.device.type == "cuda":
        torch.cuda.synchronize(noise.device)
    start = time.perf_counter()
    with torch.no_grad():
        for k in scheduler.timesteps:
            eps = _model_output(model(scheduler.scale_model_input(x, k), k))
            calls += 1
            x = scheduler.step(eps, k, x, **step_kw).prev_sample
            if return_trajectory:
                states.append(x.clone())
    if noise.device.type == "cuda":
        torch.cuda.synchronize(noise.device)
    seconds = time.perf_counter() - start
    traj = torch.stack(states) if return_trajectory else None
    times = scheduler.timesteps.detach().to("cpu", torch.float64) if return_trajectory else None
    return SampleResult(x, calls, seconds, traj, times, type(scheduler).__name__, {"steps": int(steps)})
