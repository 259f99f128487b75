"""Property-based tests of the public API's inputs (issue 28.4) with hypothesis: data shapes
(vectors, images, a batch of one), dtypes, t at 0 / eps / T, empty batches.  Every input either
works (the right shape and dtype back, finite) or fails with a ValueError / TypeError that names
the argument, never an IndexError or a RuntimeError from deep inside.

Profiles: "ci" (the default; HYPOTHESIS_PROFILE=ci) keeps each test to a few seconds; "thorough"
(HYPOTHESIS_PROFILE=thorough) runs 20 times the examples.
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scoresde as sd

settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

pytestmark = pytest.mark.usefixtures("one_thread")

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
data_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
sdes = st.sampled_from(["vp", "subvp", "ve"]).map(sd.build_sde)
fast_samplers = st.sampled_from([("pc", dict(steps=3)), ("dpm_solver", dict(steps=3)), ("unipc", dict(steps=3)),
                                 ("heun", dict(steps=2)), ("ipndm", dict(steps=3)),
                                 ("ode", dict(method="euler", steps=3)), ("sde", dict(steps=3))])


def _score(sde):
    """The exact score of N(0, I) data under ``sde``: -x / (alpha^2 + sigma^2)."""
    def score(x, t):
        var = sde.mean_coef(t) ** 2 + sde.std(t) ** 2
        return -x / var.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)
    return score


@given(sde=sdes, shape=data_shapes, batch=st.integers(1, 3), dtype=st.sampled_from(FLOATS), s=fast_samplers)
def test_sample_returns_the_asked_shape_and_dtype_for_any_data_shape(sde, shape, batch, dtype, s):
    name, opts = s
    out = sd.sample(_score(sde), sde, (batch,) + shape, sampler=name, dtype=dtype,
                    generator=torch.Generator().manual_seed(0), **opts)
    assert out.x.shape == (batch,) + shape and out.x.dtype == dtype
    assert torch.isfinite(out.x.float()).all() and out.nonfinite == 0


@given(shape=st.one_of(
    st.lists(st.integers(-3, 0), min_size=1, max_size=3).map(tuple),           # empty or negative sizes
    st.tuples(st.floats(0.5, 3.5), st.integers(1, 3)),                          # a float size
    st.just(()), st.just("ab"), st.just([[2], [3]]), st.integers(-5, 7)))
def test_sample_rejects_a_malformed_shape_naming_it(shape):
    with pytest.raises((ValueError, TypeError), match="shape"):
        sd.sample(_score(sd.VPSDE()), sd.VPSDE(), shape, sampler="dpm_solver", steps=2)


@given(eps=st.one_of(st.floats(-1.0, 0.0), st.floats(1.0, 3.0), st.just(float("nan"))))
def test_sample_rejects_eps_outside_zero_to_T(eps):
    with pytest.raises(ValueError, match="eps"):
        sd.sample(_score(sd.VPSDE()), sd.VPSDE(), (2, 2), eps=eps)


@given(sde=sdes, shape=data_shapes, batch=st.integers(1, 3), dtype=st.sampled_from(FLOATS),
       which=st.sampled_from(["zero", "eps", "T"]))
def test_marginals_and_scores_are_finite_at_t_zero_eps_and_T(sde, shape, batch, dtype, which):
    x0 = torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    t = {"zero": 0.0, "eps": 1e-5, "T": sde.T}[which]
    mean, std = sde.marginal(x0, t)
    assert mean.shape == x0.shape and torch.isfinite(mean.float()).all() and torch.isfinite(std.float()).all()
    model = sd.ScoreModel(sd.nn.build_model("mlp", data_shape=list(shape), width=8, depth=1), sde).to(dtype)
    if which != "zero":                                  # the noise parameterization divides by sigma(t) > 0
        s = model(x0, torch.full((batch,), t))
        assert s.shape == x0.shape and s.dtype == dtype and torch.isfinite(s.float()).all()


@given(sde=sdes, shape=data_shapes, batch=st.integers(1, 3), dtype=st.sampled_from(FLOATS))
def test_log_likelihood_and_elbo_take_any_data_shape_and_float_dtype(sde, shape, batch, dtype):
    x = (0.5 * torch.randn((batch,) + shape, generator=torch.Generator().manual_seed(2))).to(dtype)
    ll = sd.log_likelihood(_score(sde), sde, x, method="euler", options={"step_size": 0.25},
                           generator=torch.Generator().manual_seed(0))
    b = sd.elbo(_score(sde), sde, x, n_t=4, generator=torch.Generator().manual_seed(0))
    for v in (ll.logp, b.elbo):
        assert v.shape == (batch,) and v.dtype in (torch.float32, torch.float64) and torch.isfinite(v).all()


@given(x=st.one_of(
    st.integers(0, 3).map(lambda d: torch.zeros((0,) + (2,) * d)),            # empty batches (and a 1-d x)
    st.just(torch.zeros(3, 2, dtype=torch.int64)), st.just(torch.zeros(3)), st.just(torch.zeros(2, 0)),
    st.just(torch.full((2, 2), float("nan"))), st.just([[0.0, 1.0]])))
def test_likelihoods_reject_bad_data_naming_x(x):
    for fn in (sd.log_likelihood, sd.elbo):
        with pytest.raises((ValueError, TypeError), match="x"):
            fn(_score(sd.VPSDE()), sd.VPSDE(), x)


@given(kw=st.sampled_from([dict(max_rows=0), dict(max_rows=1.5), dict(max_rows=True), dict(nonfinite="skip"),
                           dict(divergence="trace"), dict(batch_size=0)]))
def test_likelihood_options_are_checked_naming_them(kw):
    name = next(iter(kw))
    with pytest.raises((ValueError, TypeError), match=name):
        sd.log_likelihood(_score(sd.VPSDE()), sd.VPSDE(), torch.zeros(2, 2), **kw)


@given(batch=st.integers(0, 3), n_obs=st.integers(1, 3))
def test_sample_posterior_takes_a_batch_of_one_and_rejects_an_empty_one(batch, n_obs):
    op = sd.ops.Mask(torch.arange(4) < n_obs)
    y = torch.zeros(batch, n_obs)
    if batch == 0:
        with pytest.raises(ValueError, match="y"):
            sd.sample_posterior(_score(sd.VPSDE()), sd.VPSDE(), op, y, method="replacement", steps=2)
        return
    out = sd.sample_posterior(_score(sd.VPSDE()), sd.VPSDE(), op, y, method="replacement", steps=3,
                              generator=torch.Generator().manual_seed(0))
    assert out.x.shape == (batch, 4) and torch.isfinite(out.x).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_generator_on_another_device_is_accepted():
    model = sd.ScoreModel(sd.nn.build_model("mlp", data_shape=[2], width=8, depth=1), sd.VPSDE()).cuda()
    a = sd.sample(model, shape=(3, 2), sampler="dpm_solver", steps=3, generator=torch.Generator().manual_seed(0))
    b = sd.sample(model, shape=(3, 2), sampler="dpm_solver", steps=3, generator=torch.Generator("cuda").manual_seed(0))
    assert a.x.device.type == b.x.device.type == "cuda"
