"""The samplers at scale (issues 28.3, 29.2, 29.3, 29.6): no per-step host syncs in the
fixed-step loops, NaN/Inf reported by method, evaluation and t, half precision kept to the
network, and one rule for devices, SDEs and shapes."""

import warnings

import pytest
import torch
from scoresde.bench.syncs import SyncCount

import scoresde as sd
from scoresde.device import batch_shape, device_of

pytestmark = pytest.mark.usefixtures("one_thread")


def _neg(x, t):          # a torch-only score: no host reads of its own
    return -x


FIXED = [("pc", dict()), ("pc", dict(predictor="reverse_diffusion", corrector="langevin")),
         ("pc", dict(predictor="ancestral", corrector="langevin", langevin_norm="sample")),
         ("pc", dict(predictor="none", corrector="annealed_langevin")),
         ("dpm_solver", dict()), ("dpm_solver", dict(order=2, denoise=True)), ("unipc", dict()),
         ("unipc", dict(order=3, variant="bh2")), ("heun", dict()), ("ipndm", dict(denoise=True))]


def _syncs(sampler, steps, **opts):
    with SyncCount() as c:
        sd.sample(_neg, sd.VPSDE(), (8, 3), sampler=sampler, steps=steps,
                  generator=torch.Generator().manual_seed(0), **opts)
    return c


@pytest.mark.parametrize("sampler,opts", FIXED, ids=[f"{s}-{'-'.join(map(str, o.values()))}" for s, o in FIXED])
def test_fixed_step_samplers_make_a_constant_number_of_host_syncs(sampler, opts):
    """200 steps: two syncs in all (the end-of-run NaN/Inf check), the same as at 20 steps."""
    c200, c20 = _syncs(sampler, 200, **opts), _syncs(sampler, 20, **opts)
    assert c200.n == c20.n <= 2, (c200.by, c20.by)


def test_ode_sampler_adds_no_sync_per_step_of_its_own():
    """Fixed-grid rk4: torchdiffeq's own loop compares times on the host (about one a step);
    scoresde's right-hand side reads nothing (the float(u) per evaluation is gone).  Adaptive
    dopri5: torchdiffeq decides every step on the host; ours stay a constant."""
    c200 = _syncs("ode", 200, method="rk4")
    c20 = _syncs("ode", 20, method="rk4")
    assert c200.by["scoresde"] == c20.by["scoresde"] <= 8, c200.by
    assert c200.n <= 200 + 30, c200.by                         # at most one a step in all
    with SyncCount() as c:
        out = sd.sample(_neg, sd.VPSDE(), (8, 3), sampler="ode", generator=torch.Generator().manual_seed(0))
    assert c.by["scoresde"] <= 8 and out.nfe > 50, c.by


def test_reverse_sde_sampler_adds_no_sync_per_step_of_its_own():
    """torchsde's fixed-step loop compares its time tensors on the host (two a step in torchsde
    0.2.x); the reverse-time SDE's f, g and Brownian increments read none."""
    c200, c20 = _syncs("sde", 200), _syncs("sde", 20)
    assert c200.by["scoresde"] == c20.by["scoresde"] <= 8, c200.by
    assert c200.n <= 2 * 200 + 20, c200.by


# -- non-finite values ------------------------------------------------------------------------
def _nan_below(t_bad, rows=None):
    """The exact N(0, I) score -x, NaN for t < t_bad (in ``rows`` only, if given)."""
    calls = []

    def score(x, t):
        calls.append(float(t[0]))
        out = -x
        if float(t[0]) < t_bad:
            out = out.clone()
            if rows is None:
                out[:] = float("nan")
            else:
                out[rows] = float("nan")
        return out

    return score, calls


ALL = [("pc", dict(steps=40)), ("pc", dict(steps=20, corrector="langevin")), ("ode", dict()),
       ("ode", dict(method="rk4", steps=20)), ("sde", dict(steps=40)), ("dpm_solver", dict(steps=15)),
       ("unipc", dict(steps=15)), ("heun", dict(steps=10)), ("ipndm", dict(steps=15))]


@pytest.mark.parametrize("sampler,opts", ALL, ids=[f"{s}-{len(o)}" for s, o in ALL])
def test_a_nan_score_raises_naming_the_sampler_the_evaluation_and_t(sampler, opts):
    score, calls = _nan_below(0.5)
    with pytest.raises(sd.NonFiniteError) as err:
        sd.sample(score, sd.VPSDE(), (6, 2), sampler=sampler, generator=torch.Generator().manual_seed(0), **opts)
    k = next(i for i, t in enumerate(calls) if t < 0.5) + 1
    msg = str(err.value)
    assert f"sampler {sampler!r}" in msg and f"score evaluation {k} of {len(calls)}" in msg
    assert f"t = {calls[k - 1]:.6g}" in msg


@pytest.mark.parametrize("sampler,opts", ALL, ids=[f"{s}-{len(o)}" for s, o in ALL])
def test_nonfinite_count_keeps_going_and_counts_the_bad_samples(sampler, opts):
    score, _ = _nan_below(0.5, rows=torch.tensor([0, 3]))
    if sampler == "ode" and "method" not in opts:
        # an adaptive solver's error norm is NaN: it cannot go on, and says why
        with pytest.raises(sd.NonFiniteError, match="the solver stopped"):
            sd.sample(score, sd.VPSDE(), (6, 2), sampler=sampler, nonfinite="count", **opts)
        return
    out = sd.sample(score, sd.VPSDE(), (6, 2), sampler=sampler, generator=torch.Generator().manual_seed(0),
                    nonfinite="count", **opts)
    bad = (~torch.isfinite(out.x).all(1)).sum()
    assert out.nonfinite == int(bad) >= 2
    if not (sampler == "pc" and opts.get("corrector") == "langevin"):   # the batch-mean step couples rows
        assert out.nonfinite == 2 and torch.isfinite(out.x[[1, 2, 4, 5]]).all()


def test_nonfinite_option_is_checked():
    with pytest.raises(ValueError, match="nonfinite"):
        sd.sample(_neg, sd.VPSDE(), (2, 2), nonfinite="ignore")
    with pytest.raises(ValueError, match="nonfinite"):
        sd.build_sampler("pc", nonfinite="maybe")


def test_log_likelihood_and_elbo_raise_on_nan_and_count_on_request():
    score, _ = _nan_below(0.3, rows=torch.tensor([1]))
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(sd.NonFiniteError, match=r"log_likelihood: .*evaluation \d+ of \d+ \(t = "):
        sd.log_likelihood(score, sd.VPSDE(), x, method="rk4", options={"step_size": 0.05})
    res = sd.log_likelihood(score, sd.VPSDE(), x, method="rk4", options={"step_size": 0.05}, nonfinite="count")
    assert res.nonfinite == 1 and torch.isfinite(res.logp[[0, 2]]).all()
    with pytest.raises(sd.NonFiniteError, match=r"elbo: .*\(t = "):
        sd.elbo(score, sd.VPSDE(), x, n_t=50, generator=torch.Generator().manual_seed(1))
    res = sd.elbo(score, sd.VPSDE(), x, n_t=50, generator=torch.Generator().manual_seed(1), nonfinite="count")
    assert res.nonfinite == 1 and torch.isfinite(res.elbo[[0, 2]]).all()


@pytest.mark.parametrize("method,kw", [("pigdm", dict(sampler="pc", steps=20)), ("smc", dict(steps=10, particles=2)),
                                       ("replacement", dict(steps=20))])
def test_sample_posterior_raises_on_nan_and_counts_on_request(method, kw):
    score, _ = _nan_below(0.5)
    op = sd.ops.Mask(torch.tensor([True, False]))
    y = torch.zeros(4, 1)
    with pytest.raises(sd.NonFiniteError, match=f"{method!r}"):
        sd.sample_posterior(score, sd.VPSDE(), op, y, method=method, generator=torch.Generator().manual_seed(0), **kw)
    res = sd.sample_posterior(score, sd.VPSDE(), op, y, method=method, generator=torch.Generator().manual_seed(0),
                              nonfinite="count", **kw)
    assert res.nonfinite == int((~torch.isfinite(res.x).all(1)).sum()) > 0


def test_sample_posterior_splits_score_calls_by_max_rows():
    rows = []

    def score(x, t):
        rows.append(x.shape[0])
        return -x

    op = sd.ops.Mask(torch.tensor([True, False]))
    sd.sample_posterior(score, sd.VPSDE(), op, torch.zeros(10, 1), method="smc", steps=5, particles=2,
                        generator=torch.Generator().manual_seed(0), max_rows=4)
    assert max(rows) == 4


# -- mixed precision --------------------------------------------------------------------------
def _bf16_model():
    torch.manual_seed(0)
    spec = {"sde": {"name": "vp"}, "model": {"name": "mlp", "data_shape": [2], "width": 16, "depth": 1}}
    return sd.build_score_model(spec)


@pytest.mark.parametrize("sampler,opts", [("pc", dict(steps=50)), ("ode", dict(method="rk4", steps=10)),
                                          ("dpm_solver", dict(steps=10))])
def test_a_bf16_network_sees_exactly_the_float32_grid_times(sampler, opts):
    model = _bf16_model()
    seen = {}
    for dtype in (torch.float32, torch.bfloat16):
        m = model.to(dtype)
        times = []
        handle = m.net.register_forward_pre_hook(lambda mod, args: times.append(args[1].detach().clone()))
        out = sd.sample(m, shape=(4, 2), sampler=sampler, generator=torch.Generator().manual_seed(0), dtype=dtype,
                        **opts)
        handle.remove()
        assert out.x.dtype == dtype and all(t.dtype == torch.float32 for t in times)
        seen[dtype] = torch.stack(times)
    assert torch.equal(seen[torch.float32], seen[torch.bfloat16])
    n_distinct = torch.unique(seen[torch.bfloat16][:, 0]).numel()
    assert n_distinct == seen[torch.bfloat16].shape[0] or sampler == "ode"   # rk4 revisits its stages' ends


def test_bf16_score_model_takes_float32_input_and_returns_float32():
    model = _bf16_model().to(torch.bfloat16)
    x = torch.randn(5, 2)
    s = model(x, torch.full((5,), 0.3))
    assert s.dtype == torch.float32 and torch.isfinite(s).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s2 = _bf16_model()(x, torch.full((5,), 0.3))
    assert s2.dtype == torch.float32


def test_log_likelihood_of_bf16_data_and_network_keeps_the_log_det_in_float32():
    model = _bf16_model().to(torch.bfloat16)
    x = torch.randn(4, 2).to(torch.bfloat16)
    res = sd.log_likelihood(model, x=x, rtol=1e-3, atol=1e-3)
    assert res.logp.dtype == torch.float32 and torch.isfinite(res.logp).all()


# -- devices, SDEs, shapes --------------------------------------------------------------------
def test_sde_defaults_to_the_scores_and_a_mismatch_warns_naming_both():
    model = _bf16_model()
    out = sd.sample(model, shape=(3, 2), sampler="dpm_solver", steps=5, generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (3, 2)
    with pytest.warns(UserWarning, match=r"VESDE.*VPSDE|VPSDE.*VESDE"):
        sd.sample(model, sd.VESDE(), (3, 2), sampler="dpm_solver", steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sd.sample(model, sd.VPSDE(), (3, 2), sampler="dpm_solver", steps=5)   # equal SDE: no warning
    with pytest.raises(ValueError, match="sde is required"):
        sd.sample(_neg, shape=(2, 2))
    with pytest.raises(TypeError, match="shape=..."):
        sd.sample(model, (3, 2))


def test_shape_may_be_a_batch_size_for_a_model_with_data_shape_and_is_checked():
    model = _bf16_model()
    assert model.data_shape == (2,)
    assert sd.sample(model, shape=4, sampler="dpm_solver", steps=5).x.shape == (4, 2)
    assert sd.sample(model, model.sde, 3, "dpm_solver", steps=5).x.shape == (3, 2)   # positional
    with pytest.raises(ValueError, match=r"shape=10 is a batch size.*data_shape"):
        sd.sample(_neg, sd.VPSDE(), 10)
    for bad, err in (((0, 2), ValueError), ((2.5, 2), TypeError), ("ab", TypeError), (None, ValueError)):
        with pytest.raises(err, match="shape"):
            sd.sample(_neg, sd.VPSDE(), bad)
    assert batch_shape(torch.tensor(3), model) == (3, 2)


def test_device_follows_the_score_module_then_the_data_then_the_generator():
    net = torch.nn.Linear(2, 2).to("meta")
    assert device_of(net, torch.zeros(1), generator=torch.Generator()) == torch.device("meta")
    wrapped = sd.score.RowChunkedScore(sd.score.ScoreModel(net, sd.VPSDE()), 4)
    assert device_of(wrapped) == torch.device("meta")
    assert device_of(_neg, torch.zeros(1, device="meta")) == torch.device("meta")
    assert device_of(_neg, None, generator=torch.Generator()) == torch.device("cpu")
    assert device_of(_neg) == torch.device("cpu")
