"""The reverse-time SDE sampler through torchsde (scoresde/samplers/reverse_sde.py): the Brownian
increments and the SRK's order."""

import math

import pytest
import torch

import scoresde as sd



pytestmark = pytest.mark.usefixtures("one_thread")


def test_grid_brownian_increments_and_space_time_levy_area():
    """W ~ N(0, dt); U = dt (W / 2 + H) with H ~ N(0, dt / 12) independent of W (torchsde's
    convention): Var U = dt^3 / 3, Cov(W, U) = dt^2 / 2; queries must walk the grid in order."""
    from scoresde.samplers.reverse_sde import _GridBrownian

    n, h = 200_000, 0.1
    g = torch.Generator().manual_seed(0)
    # chunks of 5 numbers per pixel: 2 steps (W and H each) a chunk, so the walk crosses chunks
    bm = _GridBrownian((n, 1), h, lambda m: torch.randn(m, n, 1, generator=g, dtype=torch.float64),
                       torch.float64, "cpu", levy=True, steps=3, chunk_elements=5 * n)
    for k, dt in ((0, h), (1, h), (2, 0.04)):  # a shorter last step
        W, U = bm(k * h, k * h + dt, return_U=True)
        assert bm(k * h, k * h + dt) is W  # asking again gives the same increment
        se = 5 / math.sqrt(n)
        assert abs(float(W.var()) / dt - 1) < 5 * math.sqrt(2 / n)
        assert abs(float(W.mean())) / math.sqrt(dt) < se
        assert abs(float(U.var()) / (dt ** 3 / 3) - 1) < 5 * math.sqrt(2 / n)
        assert abs(float((W * U).mean()) / (dt ** 2 / 2) - 1) < 0.02
    with pytest.raises(RuntimeError, match="next step"):
        bm(5 * h, 6 * h)
    plain = _GridBrownian((4, 1), h, lambda m: torch.randn(m, 4, 1, generator=g), torch.float32, "cpu", levy=False,
                          steps=1)
    plain(0.0, h)
    with pytest.raises(RuntimeError, match="Levy"):
        plain(0.0, h, return_U=True)


def test_srk_is_more_accurate_than_euler_on_the_same_noise():
    """SRA1 (strong order 1.5 for additive noise) against Euler-Maruyama (0.5) on the reverse SDE
    of a Gaussian, whose score is exact: both from the same prior draw and Brownian increments
    summed over the coarse steps' fine sub-steps, the error to a 1024-step Euler solution must
    shrink faster for srk, and at 32 steps be several times smaller."""
    from scoresde.samplers.reverse_sde import _GridBrownian

    sde = sd.VPSDE()
    mix = sd.GaussianMixture(torch.ones(1), torch.zeros(1, 2), 0.25 * torch.eye(2)[None])
    score = mix.score_fn(sde)
    n = 400
    fine = 1024
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, 2, generator=g)
    dW = torch.randn(fine, n, 2, generator=g, dtype=torch.float64)  # unit-variance fine increments
    dH = torch.randn(fine, n, 2, generator=g, dtype=torch.float64)
    span = sde.T - 1e-3

    def run(method, steps):
        # feed the solver W and U on its coarse grid built from the fine path: W = sum dW_j sqrt(h_f);
        # U = int_0^dt W ds, by the fine steps' own W and space-time areas
        hf, r = span / fine, fine // steps
        import scoresde.samplers.reverse_sde as sm
        orig = sm._GridBrownian
        k = [0]

        class Coarse(orig):
            def __init__(self, size, h, draw, dtype, device, levy, steps, **kw):
                super().__init__(size, h, draw, dtype, device, levy, steps, **kw)

            def __call__(self, ta, tb=None, return_U=False, return_A=False):
                j = int(round(float(ta) / self._h))
                if j != self._k:
                    w = dW[j * r:(j + 1) * r] * math.sqrt(hf)
                    cum = torch.cumsum(w, 0) - w  # W at the start of each fine step
                    u_f = hf * (0.5 * w + dH[j * r:(j + 1) * r] * math.sqrt(hf / 12))
                    self._W = w.sum(0).float()
                    self._U = (cum * hf + u_f).sum(0).float()
                    self._k = j
                return (self._W, self._U) if return_U else self._W

        sm._GridBrownian = Coarse
        try:
            out = sd.sample(score, sde, (n, 2), sampler="sde", method=method, steps=steps, x_init=x0,
                            generator=torch.Generator().manual_seed(1))
        finally:
            sm._GridBrownian = orig
        return out.x.double()

    ref = run("srk", fine)
    err = {(m, s): float((run(m, s) - ref).norm(dim=1).mean()) for m in ("euler", "srk") for s in (16, 32)}
    assert err[("srk", 32)] * 3 < err[("euler", 32)], err
    assert err[("srk", 16)] / err[("srk", 32)] > err[("euler", 16)] / err[("euler", 32)], err
