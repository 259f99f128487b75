"""The variable-step Adams PEC solver (scoresde/adams.py) on ODEs with closed-form solutions."""
import math

import pytest
import torch

from scoresde.adams import adams_pec, adams_weights


def test_weights_integrate_polynomials_exactly_on_unequal_nodes():
    nodes = [0.0, 0.3, 0.45, 1.1, 1.3]
    a, b = 1.3, 1.9
    for deg in range(len(nodes)):
        w = adams_weights(nodes, a, b)
        quad = sum(wj * u ** deg for wj, u in zip(w, nodes))
        assert quad == pytest.approx((b ** (deg + 1) - a ** (deg + 1)) / (deg + 1), rel=1e-12)


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
