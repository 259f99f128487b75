import math

import torch

import scoresde as sd
from scoresde.metrics import gaussian_w2, mode_w2, sliced_w2, exact_floor


def test_gaussian_w2_closed_forms():
    m = torch.zeros(2, dtype=torch.float64)
    c = torch.eye(2, dtype=torch.float64)
    assert float(gaussian_w2(m, c, m + torch.tensor([3.0, 4.0], dtype=torch.float64), c)) == 5.0
    # isotropic scales: W2 = sqrt(D) |s1 - s2|
    got = float(gaussian_w2(m, 4 * c, m, 9 * c))
    assert abs(got - math.sqrt(2) * 1.0) < 1e-12


def test_exact_samples_sit_at_the_floor_and_errors_show():
    mix = sd.ring8()
    g = torch.Generator().manual_seed(0)
    x = mix.sample(10_000, generator=g, dtype=torch.float64)
    st = mode_w2(x, mix)
    assert st.w2 < 0.02 and st.weight_error < 0.03
    assert sum(st.counts) == 10_000
    floor = exact_floor(mix, 10_000)
    assert 0.008 < floor < 0.02
    # a sampler that inflates every mode's std by 10% is clearly worse than the floor
    mode_of = mix.responsibilities(x).argmax(1)
    wide = mix.means[mode_of] + 1.1 * (x - mix.means[mode_of])
    assert mode_w2(wide, mix).w2 > 2 * floor
    # dropping half the modes shows in the weight error
    keep = mode_of < 4
    assert mode_w2(x[keep], mix).weight_error > 0.45


def test_nonfinite_samples_score_infinite():
    mix = sd.ring8()
    x = mix.sample(100, generator=torch.Generator().manual_seed(0))
    x[3, 0] = float("nan")
    st = mode_w2(x, mix)
    assert st.w2 == math.inf and st.nonfinite == 1


def test_sliced_w2_zero_for_equal_sets_and_detects_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    assert sliced_w2(x, x.clone(), generator=g) == 0.0
    d = sliced_w2(x, x + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), n_proj=4000, generator=g)
    # E over unit u in 3-D of (u_1)^2 = 1/3
    assert abs(d - math.sqrt(1 / 3)) < 0.03
