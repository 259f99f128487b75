"""scoresde.interop against diffusers itself (real diffusers, tiny random UNet2DModels, nothing
downloaded) and against closed forms (Gaussian mixtures)."""

import math
import subprocess
import sys

import pytest
import torch

import scoresde as sd
from scoresde.interop import DiscreteVPSDE

diffusers = pytest.importorskip("diffusers", reason="the interop extra: pip install 'scoresde[interop]'")
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       EulerDiscreteScheduler, ScoreSdeVeScheduler, UNet2DModel, UniPCMultistepScheduler)

F64 = torch.float64


def tiny_unet(seed: int = 0, channels: int = 1, **kw) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw)
    return unet.double().eval()


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


# -- packaging ----------------------------------------------------------------------------------

def test_import_scoresde_does_not_import_diffusers():
    code = "import sys, scoresde; print('diffusers' in sys.modules, hasattr(scoresde, 'interop'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)   # makes `import diffusers` raise
    with pytest.raises(ImportError, match=r'pip install "scoresde\[interop\]"'):
        sd.interop.to_diffusers(sd.ring8().score_fn(sd.VPSDE()), sd.VPSDE())


# -- the discrete schedule as an SDE -----------------------------------------------------------

@pytest.mark.parametrize("table", [
    DDPMScheduler(beta_schedule="linear").alphas_cumprod.double(),
    DDPMScheduler(beta_schedule="scaled_linear").alphas_cumprod.double(),
    DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double(),
    torch.cumprod(1 - torch.linspace(1e-4, 0.02, 10, dtype=F64), 0),          # few knots: PCHIP's end slope 0
], ids=["linear", "scaled_linear", "cosine", "ten_knots"])
def test_t_from_log_snr_by_inverse_table_and_newton_matches_the_bisection_to_1e_10(table):
    """The precomputed inverse table + Newton steps (no per-call bisection) against the 60-step
    bisection it replaced, on a fine grid of t, the tiny times near 0 and past T."""
    sde = DiscreteVPSDE(table)
    t = torch.cat([torch.linspace(0.0, 1.0, 20001, dtype=F64), torch.logspace(-14, -2, 300, dtype=F64),
                   torch.tensor([1.0001, 1.2], dtype=F64)])
    lam = sde.log_snr(t)
    fast, ref = sde.t_from_log_snr(lam), sde._t_from_log_snr_bisect(lam)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-10)


def test_t_from_log_snr_costs_a_few_dozen_ops_not_a_bisection():
    """Counted aten ops of one call on a [1000] batch: the bisection took thousands."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    sde = DiscreteVPSDE(DDPMScheduler(beta_schedule="linear").alphas_cumprod.double())
    lam = sde.log_snr(torch.linspace(0.01, 0.99, 1000, dtype=F64))
    sde.t_from_log_snr(lam)                     # builds the inverse table once
    with Count():
        sde.t_from_log_snr(lam)
    fast = Count.n
    Count.n = 0
    with Count():
        sde._t_from_log_snr_bisect(lam)
    assert fast < 400 and Count.n > 10 * fast, (fast, Count.n)


def test_diffusers_score_keeps_the_timestep_float32_for_a_bf16_model():
    """A bf16 UNet gets the fractional timestep in float32 (993.76, not bf16's 992)."""
    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones((), dtype=torch.bfloat16))

        def forward(self, x, k):
            seen.append(k)
            return x * self.w

    table = DiscreteVPSDE(DDPMScheduler(beta_schedule="linear").alphas_cumprod.double())
    score = sd.interop.diffusers.DiffusersScore(Net(), table, table, "epsilon")
    t = table.time_of_timestep(torch.tensor([993.76], dtype=F64)).float()
    out = score(torch.zeros(1, 2), t)
    assert out.dtype == torch.float32 and seen[0].dtype == torch.float32
    assert float(seen[0]) == pytest.approx(993.76, abs=1e-3)


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "scaled_linear", "linear"])
def test_table_sde_is_consistent_and_passes_through_the_table(schedule):
    table = DDPMScheduler(beta_schedule=schedule).alphas_cumprod.double()
    sde = DiscreteVPSDE(table)
    # the knots: entry k at t = (k + 1) / N
    tk = (torch.arange(1000, dtype=F64) + 1) / 1000
    torch.testing.assert_close(sde.mean_coef(tk) ** 2, table, rtol=1e-12, atol=0)
    # f = d log alpha / dt and g^2 = d sigma^2/dt - 2 f sigma^2, by autograd, inside cells and across knots
    t = torch.linspace(1e-4, 1.0, 777, dtype=F64, requires_grad=True)
    dlog_a, = torch.autograd.grad(torch.log(sde.mean_coef(t)).sum(), t)
    var = sde.std(t) ** 2
    dvar, = torch.autograd.grad(var.sum(), t)
    f, g2 = sde.drift_coef(t).detach(), sde.diffusion(t).detach() ** 2
    torch.testing.assert_close(dlog_a, f, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dvar, 2 * f * var.detach() + g2, rtol=1e-9, atol=1e-9)
    # log-SNR strictly decreasing on a fine grid (PCHIP keeps the monotone data monotone), g > 0
    lam = sde.log_snr(torch.linspace(0.0, 1.0, 20001, dtype=F64))
    assert bool((lam[1:] < lam[:-1]).all())
    assert bool((g2 > 0).all())
    # t_from_log_snr inverts log_snr; scalars agree with the tensor functions
    tt = torch.rand(500, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(tt)), tt, rtol=0, atol=1e-13)
    s = sde.scalars(0.37)
    x = torch.tensor([0.37], dtype=F64)
    assert s.alpha == pytest.approx(float(sde.mean_coef(x)), rel=1e-14)
    assert s.g == pytest.approx(float(sde.diffusion(x)), rel=1e-14)


def test_table_sde_interpolant_is_scipy_pchip():
    interpolate = pytest.importorskip("scipy.interpolate")
    table = DDPMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=50).alphas_cumprod.double()
    sde = DiscreteVPSDE(table)
    knots = torch.arange(51, dtype=F64) / 50
    B = torch.cat([torch.zeros(1, dtype=F64), -torch.log(table)])
    ref = interpolate.PchipInterpolator(knots.numpy(), B.numpy())
    t = torch.linspace(0, 1, 1001, dtype=F64)
    ours, dours = sde.cum_beta(t)
    torch.testing.assert_close(ours, torch.from_numpy(ref(t.numpy())), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(dours, torch.from_numpy(ref(t.numpy(), 1)), rtol=1e-10, atol=1e-10)


def test_table_sde_likelihood_is_the_exact_density():
    """The probability-flow likelihood under a cosine-table SDE equals the mixture's log density:
    f, g, alpha and sigma are one SDE."""
    sde = DiscreteVPSDE(DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod)
    mix = sd.GaussianMixture(torch.ones(2), torch.tensor([[-1.0, 0.5], [1.0, 0.0]], dtype=F64),
                             torch.full((2,), 0.3 ** 2, dtype=F64))
    x = mix.sample(6, generator=torch.Generator().manual_seed(1), dtype=F64)
    ll = sd.log_likelihood(mix.score_fn(sde), sde, x, divergence="exact", rtol=1e-7, atol=1e-7, eps=1e-5)
    # what is left: the prior's mismatch at T (alpha(1)^2 = 1.6e-9) and the cut at eps
    torch.testing.assert_close(ll.logp, mix.log_prob(x), rtol=0, atol=2e-3)


def test_table_sde_refuses_a_zero_terminal_snr():
    sched = DDPMScheduler(rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        sd.interop.from_diffusers(tiny_unet(), sched)


# -- in: schedulers and their SDEs -------------------------------------------------------------

def test_linear_table_is_the_vp_sde_to_within_0p05_in_log_snr():
    sched = DDPMScheduler()
    score_fn = sd.interop.from_diffusers(tiny_unet(), sched)
    assert type(score_fn.sde) is sd.VPSDE
    assert score_fn.sde.beta_min == pytest.approx(0.1, rel=1e-12)
    assert score_fn.sde.beta_max == pytest.approx(20.0, rel=1e-12)
    ac = sched.alphas_cumprod.double()
    tk = (torch.arange(1000, dtype=F64) + 1) / 1000
    dlam = score_fn.sde.log_snr(tk) - 0.5 * torch.log(ac / (1 - ac))
    # the discretisation error of DDPM's table against the VP SDE (module docstring figures)
    assert float(dlam.abs().max()) == pytest.approx(0.0473, abs=5e-4)
    assert float(dlam[-1]) == pytest.approx(0.0339, abs=5e-4)
    # in timesteps: the noise-level match k(t_k) vs the naive k = t_k N - 1: 0.09 at k = 0, 0.39 at
    # k = 100, -0.60 at k = 500, -3.36 at k = 999 (the largest)
    off = score_fn.timestep(tk) - torch.arange(1000, dtype=F64)
    assert float(off[0]) == pytest.approx(0.090, abs=0.005)
    assert float(off[-1]) == pytest.approx(-3.356, abs=0.005)
    assert float(off.abs().max()) == pytest.approx(3.356, abs=0.005)
    # the model is asked at the table's own noise level, to float64 rounding, at integer timesteps
    k = torch.tensor([0.0, 17.0, 500.0, 999.0], dtype=F64)
    t = score_fn.sde.t_from_log_snr(score_fn.table.log_snr(score_fn.table.time_of_timestep(k)))
    torch.testing.assert_close(score_fn.timestep(t), k, rtol=0, atol=1e-9)


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "scaled_linear"])
def test_other_tables_give_the_table_sde_with_timestep_tN_minus_1(schedule):
    sched = DDIMScheduler(beta_schedule=schedule)
    score_fn = sd.interop.from_diffusers(tiny_unet(), sched)
    assert isinstance(score_fn.sde, DiscreteVPSDE)
    torch.testing.assert_close(score_fn.sde.alphas_cumprod, sched.alphas_cumprod.double())
    t = torch.tensor([1e-3, 0.25, 1.0], dtype=F64)
    torch.testing.assert_close(score_fn.timestep(t), t * 1000 - 1, rtol=0, atol=1e-12)


def test_ve_scheduler_gives_the_ve_sde_and_feeds_sigma_to_the_model():
    unet = tiny_unet(time_embedding_type="fourier", flip_sin_to_cos=True)
    sched = ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0)
    score_fn = sd.interop.from_diffusers(unet, sched)
    assert type(score_fn.sde) is sd.VESDE
    assert (score_fn.sde.sigma_min, score_fn.sde.sigma_max) == (0.01, 50.0)
    x = torch.randn(3, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    sigma = score_fn.sde.std(t)
    with torch.no_grad():
        torch.testing.assert_close(score_fn(x, t), unet(x, sigma).sample)


def test_unknown_scheduler_and_prediction_type_are_refused():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        sd.interop.from_diffusers(tiny_unet(), object.__new__(type("Foo", (), {"config": {}})))
    with pytest.raises(ValueError, match="valid"):
        sd.interop.from_diffusers(tiny_unet(), DDPMScheduler(), prediction_type="score")


class _Twin(torch.nn.Module):
    """The same network predicting v or x0 instead of eps, at the table's noise level of k."""

    def __init__(self, eps_model, table, kind):
        super().__init__()
        self.eps_model, self.table, self.kind = eps_model, table, kind

    def forward(self, x, k):
        eps = self.eps_model(x, k).sample
        al, sg = self.table.coefs(self.table.time_of_timestep(k.to(F64)), dtype=F64)
        al, sg = al.reshape(-1, 1, 1, 1), sg.reshape(-1, 1, 1, 1)
        x0 = (x - sg * eps) / al
        return (al * eps - sg * x0) if self.kind == "v_prediction" else x0


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_epsilon_model_and_its_twin_give_the_same_score(kind, schedule):
    unet = tiny_unet()
    eps_fn = sd.interop.from_diffusers(unet, DDPMScheduler(beta_schedule=schedule))
    twin = _Twin(unet, eps_fn.table, kind)
    twin_fn = sd.interop.from_diffusers(twin, DDPMScheduler(beta_schedule=schedule, prediction_type=kind))
    assert twin_fn.prediction_type == kind
    x = torch.randn(4, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([2e-3, 0.1, 0.6, 1.0], dtype=F64)
    with torch.no_grad():
        a, b = eps_fn(x, t), twin_fn(x, t)
    # the two conversions differ only by rounding, amplified by 1/sigma^2 at small t for x0
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layout", ["pipeline", "subfolders"])
def test_a_folder_saved_with_save_pretrained_loads_to_the_same_score(tmp_path, layout):
    unet, sched = tiny_unet(seed=3), DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    if layout == "pipeline":
        diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path)
        assert (tmp_path / "model_index.json").is_file()
    else:
        unet.save_pretrained(tmp_path / "unet")
        sched.save_pretrained(tmp_path / "scheduler")
    loaded = sd.interop.load_diffusers(tmp_path, dtype=F64)
    direct = sd.interop.from_diffusers(unet, sched)
    assert loaded.prediction_type == "v_prediction" and isinstance(loaded.sde, DiscreteVPSDE)
    x = torch.randn(2, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.05, 0.7], dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), direct(x, t), rtol=0, atol=0)
    # and through from_pretrained directly
    again = UNet2DModel.from_pretrained(tmp_path, subfolder="unet", local_files_only=True).double().eval()
    with torch.no_grad():
        torch.testing.assert_close(sd.interop.from_diffusers(again, sched)(x, t), direct(x, t), rtol=0, atol=0)


def test_load_diffusers_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        sd.interop.load_diffusers(tmp_path / "nope")
    (tmp_path / "unet").mkdir()
    with pytest.raises(ValueError, match="scheduler/"):
        sd.interop.load_diffusers(tmp_path)


# -- out ----------------------------------------------------------------------------------------

def _our_model(sde, seed=0):
    torch.manual_seed(seed)
    net = sd.nn.build_model("mlp", data_shape=[2], width=32, depth=2)
    with torch.no_grad():   # the output layer starts at zero: give every weight a random value
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return sd.ScoreModel(net, sde).double().eval()


def test_round_trip_gives_back_the_same_score_and_sde():
    model = _our_model(sd.VPSDE())
    exported, sched = sd.interop.to_diffusers(model, model.sde)
    back = sd.interop.from_diffusers(exported, sched)
    assert type(back.sde) is sd.VPSDE
    assert back.sde.beta_min == pytest.approx(0.1, rel=1e-14)
    assert back.sde.beta_max == pytest.approx(20.0, rel=1e-14)
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(5))
    t = torch.linspace(1e-3, 1.0, 64, dtype=F64)
    with torch.no_grad():
        a, b = model(x, t), back(x, t)
    assert rel(b, a) < 1e-12


def test_export_refuses_noise_levels_below_float32_resolution():
    with pytest.raises(ValueError, match="float32"):
        sd.interop.to_diffusers(_our_model(sd.SubVPSDE()), sd.SubVPSDE())


@pytest.mark.parametrize("sde", [sd.VESDE()], ids=["ve"])
def test_export_of_other_sdes_puts_their_noise_levels_in_the_table(sde):
    model = _our_model(sde)
    exported, sched = sd.interop.to_diffusers(model, sde)
    ac = sched.alphas_cumprod.double()
    tk = (torch.arange(1000, dtype=F64) + 1) / 1000
    # ac_k = sigmoid(2 lambda(t_k)), to the float32 of diffusers' table
    torch.testing.assert_close(ac, torch.sigmoid(2 * sde.log_snr(tk)), rtol=1e-5, atol=0)
    # eps at integer k is -sigma score at our t_k, the sample rescaled by alpha / alpha_vp
    x_vp = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(6))
    k = torch.tensor([0, 400, 999])
    t = exported.time_of_timestep(k, 3)
    # diffusers' float32 table: 1 - ac_0 = 1e-4 (VE) carries a relative error of 6e-4, so the
    # time of the same noise level moves by up to 6e-4 / (2 dlambda/dt) = 4e-5
    torch.testing.assert_close(t, tk[k], rtol=0, atol=5e-5)
    al, sg = sde.coefs(t, dtype=F64)
    c = (al * torch.sqrt(1 + (sg / al) ** 2)).reshape(-1, 1)
    with torch.no_grad():
        want = -sg.reshape(-1, 1) * model(c * x_vp, t)
        torch.testing.assert_close(exported(x_vp, k).sample, want, rtol=1e-12, atol=0)


def _first_last_times(model, sched, steps):
    sched.set_timesteps(steps)
    ks = sched.timesteps
    return [float(model.time_of_timestep(k, 1)[0]) for k in (ks[0], ks[-1])]


SCHEDULERS = {"ddim": (DDIMScheduler, 500), "dpm": (DPMSolverMultistepScheduler, 100),
              "unipc": (UniPCMultistepScheduler, 100), "euler": (EulerDiscreteScheduler, 500)}


@pytest.fixture(scope="module")
def ring8_export():
    sde, mix = sd.VPSDE(), sd.ring8()
    score_fn = mix.score_fn(sde)
    model, ddpm = sd.interop.to_diffusers(score_fn, sde)
    n = 2000
    noise = torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(7))
    return sde, mix, score_fn, model, ddpm, noise


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_diffusers_schedulers_on_the_exported_exact_score_match_our_ode(name, ring8_export):
    """Each scheduler ends where the exact flow ends: from its first timestep's noise level down to
    its last one's, then the denoiser (all four take that last step to sigma = 0).  Our ``ode``
    sampler on the same span from the same noise, plus the exact denoiser, is that reference."""
    sde, mix, score_fn, model, ddpm, noise = ring8_export
    cls, steps = SCHEDULERS[name]
    sched = cls.from_config(ddpm.config)
    model.calls = 0
    out = sd.interop.diffusers_sample(model, sched, noise, steps)
    assert out.nfe == model.calls == steps   # one model call a step
    t0, t1 = _first_last_times(model, cls.from_config(ddpm.config), steps)
    ref = sd.sample(score_fn, sd.VPSDE(T=t0), noise.shape, sampler="ode", eps=t1, x_init=noise, dtype=F64,
                    method="dopri5", rtol=1e-8, atol=1e-8).x
    al, sg = sde.coefs(torch.tensor([t1], dtype=F64))
    ref = (ref + sg ** 2 * score_fn(ref, torch.full((noise.shape[0],), t1, dtype=F64))) / al
    err = rel(out.x, ref)
    # measured: DDIM 500 steps 7.6e-4, Euler 500 steps 7.6e-4, DPM-Solver++(2M) 100 steps 1.0e-3,
    # UniPC 100 steps 7.3e-4 (DDIM: its step N // steps must divide N, so 500 and not 400)
    assert err < 2e-3, err
    # and at the exact-sample floor (mode W2 within 1.5x of exact samples', N = 2000)
    floor = sd.metrics.exact_floor(mix, noise.shape[0])
    assert sd.metrics.mode_w2(out.x, mix).w2 < 1.5 * floor


def test_k_diffusion_denoiser_is_tweedie_and_its_euler_loop_samples():
    sde = sd.VPSDE()
    one = sd.GaussianMixture(torch.ones(1), torch.tensor([[1.0, -2.0]], dtype=F64), torch.tensor([0.5 ** 2], dtype=F64))
    D = sd.interop.to_k_diffusion(one.score_fn(sde), sde)
    # E[x0 | x~] for x~ = x0 + s eps, x0 ~ N(mu, v I): mu + v / (v + s^2) (x~ - mu)
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(8)) * 3
    s = torch.tensor([0.02, 0.3, 1.0, 10.0, 100.0], dtype=F64)
    mu, v = one.means[0], 0.25
    want = mu + (v / (v + s ** 2))[:, None] * (x - mu)
    torch.testing.assert_close(D(x, s), want, rtol=1e-10, atol=1e-10)
    # k-diffusion's sample_euler over a Karras schedule on ring8
    mix = sd.ring8()
    D = sd.interop.to_k_diffusion(mix.score_fn(sde), sde)
    n, steps, rho = 2000, 200, 7.0
    ramp = torch.linspace(0, 1, steps, dtype=F64)
    smax, smin = D.sigma_max ** (1 / rho), D.sigma_min ** (1 / rho)
    sigmas = torch.cat([(smax + ramp * (smin - smax)) ** rho, torch.zeros(1, dtype=F64)])
    xk = torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(9)) * sigmas[0]
    for i in range(steps):
        d = (xk - D(xk, sigmas[i])) / sigmas[i]
        xk = xk + d * (sigmas[i + 1] - sigmas[i])
    assert sd.metrics.mode_w2(xk, mix).w2 < 1.5 * sd.metrics.exact_floor(mix, n)
    with pytest.raises(ValueError, match="positive"):
        D(xk, 0.0)


# -- against diffusers itself, on a tiny random UNet -------------------------------------------

@pytest.fixture(scope="module")
def unet_ddpm():
    unet = tiny_unet(seed=11)
    # A random network is as rough in the timestep as its fastest embedding frequency (1 rad per
    # timestep, period 6), which no 200-step solver resolves: DPM-Solver then stalls at 6e-4 from
    # the exact flow (aliasing).  Trained models are smooth in t; zeroing the two fastest of the
    # four frequencies (1 and 0.1 rad per timestep) makes this one so too.
    with torch.no_grad():
        unet.time_embedding.linear_1.weight[:, [0, 1, 4, 5]] = 0.0
    sched = DDPMScheduler(clip_sample=False)
    score_fn = sd.interop.from_diffusers(unet, sched)
    noise = torch.randn(2, 1, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(12))
    return unet, sched, score_fn, noise


def test_our_ode_and_diffusers_dpm_solver_end_at_the_same_samples(unet_ddpm):
    """Our dopri5 probability flow on the VP SDE vs diffusers' DPM-Solver++(2M) from the same
    noise.  The span is the scheduler's: from its first timestep's noise level to its last's
    (``final_sigmas_type="sigma_min"``); the SDE is the continuous VP of the linear table.
    Measured: relative error 1.6e-3 at 50 steps, 3.9e-4 at 100, 9.8e-5 at 200: DPM-Solver's
    second order converging onto our ODE's end point."""
    unet, sched, score_fn, noise = unet_ddpm
    errs = {}
    for steps in (100, 200):
        dpm = DPMSolverMultistepScheduler.from_config(sched.config, final_sigmas_type="sigma_min")
        theirs = sd.interop.diffusers_sample(unet, dpm, noise, steps).x
        if steps == 100:
            lam = -torch.log(dpm.sigmas[[0, -1]].double())
            t0, t1 = score_fn.sde.t_from_log_snr(lam).tolist()
            ours = sd.sample(score_fn, sd.VPSDE(0.1, 20.0, T=t0), noise.shape, sampler="ode", eps=t1,
                             x_init=noise, dtype=F64, method="dopri5", rtol=1e-6, atol=1e-6).x
        errs[steps] = rel(ours, theirs)
    assert errs[200] < 1.5e-4, errs
    assert 3.0 < errs[100] / errs[200] < 5.0, errs   # second order: the gap is DPM-Solver's, not a bias
    # integrating the VP SDE's own span [eps, T] = [1e-3, 1] instead is off by the discrete-vs-
    # continuous difference of the ends (0.034 and 0.047 in log-SNR): 3.3e-2, far above the solvers'
    plain = sd.sample(score_fn, score_fn.sde, noise.shape, sampler="ode", eps=1e-3, x_init=noise, dtype=F64,
                      method="dopri5", rtol=1e-5, atol=1e-5)
    assert rel(plain.x, theirs) > 0.01


def test_our_dpm_solver_matches_diffusers_dpm_solver_2m_step_by_step(unet_ddpm):
    """On diffusers' own grid (its timesteps mapped to our t by their noise level), our
    ``dpm_solver`` (order 2, ``denoise=True``) takes the same steps as DPM-Solver++(2M) with
    ``final_sigmas_type="zero"``: 1st order first and last-but-one (diffusers' lower_order_final
    below 15 steps, ours always), 2nd in between, then x0 = D.  Our sampler steps on that grid
    through ``grid=`` (times from T down to eps)."""
    unet, sched, score_fn, noise = unet_ddpm
    steps = 10
    dpm = DPMSolverMultistepScheduler.from_config(sched.config)
    theirs = sd.interop.diffusers_sample(unet, dpm, noise, steps, return_trajectory=True)
    grid = score_fn.sde.t_from_log_snr(-torch.log(dpm.sigmas[:-1].double()))
    ours = sd.sample(score_fn, sd.VPSDE(0.1, 20.0, T=float(grid[0])), noise.shape, sampler="dpm_solver",
                     steps=steps, order=2, denoise=True, eps=float(grid[-1]), grid=grid, x_init=noise, dtype=F64,
                     return_trajectory=True)
    assert ours.nfe == theirs.nfe == steps
    ours_steps = ours.trajectory[1:]   # the states after each step
    assert ours_steps.shape == theirs.trajectory.shape
    errs = [rel(a, b) for a, b in zip(ours_steps, theirs.trajectory)]
    # diffusers steps in float32 (it casts the sample, its lambdas come from float32 sigmas): the
    # steps agree to float32 rounding, 0.5-1.5e-7 measured; the first-order step before the last
    # (k ~ 200 -> 100, measured 7.5e-6, carried into x0) is where a float32 h = lambda_t - lambda_s
    # (lambda ~ 2, h ~ 0.3: 1e-6 relative) meets the random net's large D
    assert max(errs[:-2]) < 1e-6, errs
    assert max(errs[-2:]) < 2e-5, errs
