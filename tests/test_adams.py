"""The variable-step Adams PEC solver (scoresde/likelihood/adams.py) on ODEs with closed-form solutions."""
import math

import pytest
import torch

from scoresde.likelihood.adams import adams_pec, adams_weights


def test_weights_integrate_polynomials_exactly_on_unequal_nodes():
    nodes = [0.0, 0.3, 0.45, 1.1, 1.3]
    a, b = 1.3, 1.9
    for deg in range(len(nodes)):
        w = adams_weights(nodes, a, b)
        quad = sum(wj * u ** deg for wj, u in zip(w, nodes))
        assert quad == pytest.approx((b ** (deg + 1) - a ** (deg + 1)) / (deg + 1), rel=1e-12)


def test_step_weights_are_the_two_lagrange_integrals_to_the_last_bit():
    # the one-pass form (even node counts) must give the floats of the predictor's and the
    # corrector's separate integrals, and both must be adams_weights' numbers
    import random

    from scoresde.likelihood.adams import _lagrange_integrals, _step_weights

    rng = random.Random(0)
    for k in range(1, 9):
        for _ in range(200):
            b = rng.uniform(0.01, 2.0)
            nodes = sorted(rng.uniform(-3.0, 0.0) * b for _ in range(k - 1)) + [0.0]
            s = [v / b for v in nodes]
            pred, corr = _step_weights(nodes, 0.0, b)
            assert pred == _lagrange_integrals(s, b)
            assert corr == _lagrange_integrals(s + [1.0], b)
        assert pred == pytest.approx(adams_weights(nodes, 0.0, b), rel=1e-10, abs=1e-14)
        assert corr == pytest.approx(adams_weights(nodes + [b], 0.0, b), rel=1e-10, abs=1e-14)
    with pytest.raises(ValueError, match="even number of nodes"):
        _lagrange_integrals([-0.5, -0.2, 0.0], 1.0, corrector=True)


def test_error_shrinks_with_tolerance_and_stays_near_it():
    # dy/du = -u y, y(0) = 1: y = exp(-u^2 / 2); a second component, dz/du = cos u
    f = lambda u, s: (-u * s[0], torch.full_like(s[1], math.cos(u)))  # noqa: E731
    y0 = (torch.ones(3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    errs = []
    for tol in (1e-4, 1e-6, 1e-8):
        (y, z), st = adams_pec(f, y0, 0.0, 3.0, rtol=tol, atol=tol)
        err = max(float((y - math.exp(-4.5)).abs().max()), float((z - math.sin(3.0)).abs().max()))
        errs.append(err)
        assert st.nfe == 1 + st.accepted + st.rejected
        assert err < 10 * tol
    assert errs[0] > errs[1] > errs[2]


def test_nfe_is_one_per_attempted_step():
    calls = []

    def f(u, s):
        calls.append(u)
        return (s[0],)

    (y,), st = adams_pec(f, (torch.ones(1, dtype=torch.float64),), 0.0, 1.0, rtol=1e-6, atol=1e-6)
    assert len(calls) == st.nfe == 1 + st.accepted + st.rejected
    assert min(calls) == 0.0 and max(calls) == 1.0
    assert float(y) == pytest.approx(math.e, rel=1e-5)


@pytest.mark.parametrize("kwargs,match", [(dict(order=0), "order"), (dict(order=2.5), "order")])
def test_bad_order_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        adams_pec(lambda u, s: s, (torch.ones(1),), 0.0, 1.0, rtol=1e-3, atol=1e-3, **kwargs)


def test_backward_interval_raises():
    with pytest.raises(ValueError, match="u1 > u0"):
        adams_pec(lambda u, s: s, (torch.ones(1),), 1.0, 0.0, rtol=1e-3, atol=1e-3)


def _prothero_robinson(lam):
    # dy/du = lam (y - cos u) - sin u, y(0) = 1: y = cos u; the Jacobian is lam, so h lam is what
    # the step's stability sees while the solution itself stays smooth
    def f(u, s):
        return (lam * (s[0] - math.cos(u)) - math.sin(u),)

    def f_jac(u, s):
        return f(u, s), torch.full((s[0].shape[0], 1, 1), lam, dtype=s[0].dtype)

    return f, f_jac


def test_implicit_corrector_takes_fewer_steps_where_stability_bounds_them():
    f, f_jac = _prothero_robinson(-60.0)
    y0 = (torch.ones(3, 1, dtype=torch.float64),)
    (ye,), se = adams_pec(f, y0, 0.0, 2.0, rtol=1e-3, atol=1e-3)
    (yi,), si = adams_pec(f_jac, y0, 0.0, 2.0, rtol=1e-3, atol=1e-3, implicit=True)
    for y in (ye, yi):
        assert float((y - math.cos(2.0)).abs().max()) < 1e-2
    assert si.nfe * 1.5 < se.nfe
    assert si.nfe == 1 + si.accepted + si.rejected


def test_implicit_corrector_converges_like_the_explicit_one():
    f, f_jac = _prothero_robinson(-2.0)
    y0 = (torch.ones(2, 1, dtype=torch.float64),)
    errs = []
    for tol in (1e-4, 1e-7):
        (y,), _ = adams_pec(f_jac, y0, 0.0, 3.0, rtol=tol, atol=tol, implicit=True)
        errs.append(float((y - math.cos(3.0)).abs().max()))
        assert errs[-1] < 10 * tol
    assert errs[1] < errs[0] / 100


def test_a_scalar_jacobian_is_its_identity_blocks():
    # J given as [N, 1] (j_b I per row) is the [N, n, n] blocks j_b I: the same solve to rounding,
    # and as stable where h lam is what bounds the explicit corrector
    lam = torch.tensor([-60.0, -5.0, -0.5], dtype=torch.float64)

    def f(u, s):
        return (lam[:, None] * (s[0] - math.cos(u)) - math.sin(u),)

    y0 = (torch.ones(3, 2, dtype=torch.float64),)
    (yb,), sb = adams_pec(lambda u, s: (f(u, s), torch.diag_embed(lam[:, None].expand(3, 2))), y0, 0.0, 2.0,
                          rtol=1e-3, atol=1e-3, implicit=True)
    (ys,), ss = adams_pec(lambda u, s: (f(u, s), lam[:, None]), y0, 0.0, 2.0, rtol=1e-3, atol=1e-3, implicit=True)
    (_,), se = adams_pec(f, y0, 0.0, 2.0, rtol=1e-3, atol=1e-3)
    assert torch.allclose(ys, yb, rtol=0, atol=1e-12) and ss.nfe == sb.nfe
    assert float((ys - math.cos(2.0)).abs().max()) < 1e-2
    assert ss.nfe * 1.5 < se.nfe


def test_a_wrong_growing_scalar_jacobian_costs_steps_not_accuracy():
    # j > 0 would make 1 - c j vanish at c j = 1; j is capped at 1 / (2 c), so a J that says
    # "growing fast" where df/dy = -1 keeps the answer accurate and only shortens the steps
    f, _ = _prothero_robinson(-1.0)
    y0 = (torch.ones(2, 1, dtype=torch.float64),)
    nfe = {}
    for j in (-1.0, 100.0):
        (y,), st = adams_pec(lambda u, s: (f(u, s), torch.full((2, 1), j, dtype=torch.float64)), y0, 0.0, 1.0,
                             rtol=1e-6, atol=1e-6, implicit=True)
        assert torch.isfinite(y).all() and float((y - math.cos(1.0)).abs().max()) < 1e-5
        nfe[j] = st.nfe
    assert nfe[100.0] > 5 * nfe[-1.0]


@pytest.mark.parametrize("ret,match", [
    (lambda s: (s[0],), "must return"),
    (lambda s: ((s[0],), torch.ones(2, 2, 2, dtype=torch.float64)), r"\[N, n, n\]"),
    (lambda s: ((s[0],), torch.ones(2, 1, dtype=torch.float64)), r"\[N, 1\]"),
    (lambda s: ((s[0],), torch.ones(3, 2, dtype=torch.float64)), r"\[N, n, n\]"),
])
def test_implicit_needs_a_jacobian_of_the_first_tensor(ret, match):
    with pytest.raises(ValueError, match=match):
        adams_pec(lambda u, s: ret(s), (torch.ones(3, 1, dtype=torch.float64),), 0.0, 1.0, rtol=1e-3, atol=1e-3,
                  implicit=True)


@pytest.mark.parametrize("kwargs", [dict(first_step=0.0), dict(max_step=1.5), dict(reject_shrink=-0.1),
                                    dict(max_step=True)])
def test_bad_step_rules_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        adams_pec(lambda u, s: s, (torch.ones(1),), 0.0, 1.0, rtol=1e-3, atol=1e-3, **kwargs)


def test_max_step_bounds_every_step():
    calls = []

    def f(u, s):
        calls.append(u)
        return (torch.zeros_like(s[0]),)   # y' = 0: the controller would grow h 5x a step

    adams_pec(f, (torch.ones(1, dtype=torch.float64),), 0.0, 1.0, rtol=1e-3, atol=1e-3, max_step=0.1)
    assert max(b - a for a, b in zip(calls, calls[1:])) <= 0.1 + 1e-12
    assert len(calls) >= 11


def test_state_tensors_of_different_dtypes_come_back_in_their_own():
    # the state is solved as one flat vector in the promoted dtype; each tensor returns in its dtype
    f, _ = _prothero_robinson(-2.0)

    def f2(u, s):
        return f(u, (s[0],))[0], f(u, (s[1],))[0]

    y0 = (torch.ones(3, 1, dtype=torch.float32), torch.ones(2, 1, dtype=torch.float64))
    (a, b), _ = adams_pec(f2, y0, 0.0, 1.0, rtol=1e-7, atol=1e-7)
    assert a.dtype == torch.float32 and b.dtype == torch.float64 and a.shape == (3, 1) and b.shape == (2, 1)
    assert float((b - math.cos(1.0)).abs().max()) < 1e-6 and float((a - math.cos(1.0)).abs().max()) < 1e-6
