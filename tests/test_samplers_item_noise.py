"""Per-item noise (ItemNoise): sample i depends on (seed, i) alone, not on the batching."""
import pytest
import torch

import scoresde as sd
from scoresde.samplers import ItemNoise, item_seed

SAMPLERS = [("pc", dict(predictor="reverse_diffusion", corrector="langevin", langevin_norm="sample", steps=20)),
            ("sde", dict(method="euler", steps=20)),
            ("dpm_solver", dict(steps=8)),
            ("ode", dict(method="rk4", steps=10))]


def _draw(name, opts, seed, batches):
    sde, mix = sd.VPSDE(), sd.ring8()
    out = {}
    for idx in batches:
        x = sd.sample(mix.score_fn(sde), sde, (len(idx), 2), sampler=name, generator=ItemNoise(seed, idx),
                      dtype=torch.float64, **opts).x
        out.update({i: x[k] for k, i in enumerate(idx)})
    return torch.stack([out[i] for i in sorted(out)])


@pytest.mark.parametrize("name,opts", SAMPLERS, ids=[s[0] for s in SAMPLERS])
def test_samples_do_not_depend_on_the_batching(name, opts):
    whole = _draw(name, opts, 7, [list(range(8))])
    halves = _draw(name, opts, 7, [[0, 2, 4, 6], [1, 3, 5, 7]])          # another split, equal batch sizes
    uneven = _draw(name, opts, 7, [[5], [0, 1, 2], [3, 4, 6, 7]])
    assert torch.equal(_draw(name, opts, 7, [[0, 1, 2, 3], [4, 5, 6, 7]]), halves)   # bit for bit
    torch.testing.assert_close(whole, halves, rtol=1e-10, atol=1e-10)              # rounding at most
    torch.testing.assert_close(whole, uneven, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(whole, _draw(name, opts, 8, [list(range(8))]))       # the seed matters


def test_item_streams_do_not_depend_on_chunking():
    a = ItemNoise(0, [3, 9])
    b = ItemNoise(0, [9, 3])
    z = torch.cat([a.randn((2, 2, 5), batch_dim=1), a.randn((3, 2, 5), batch_dim=1)])
    w = b.randn((5, 2, 5), batch_dim=1)
    assert torch.equal(z[:, 0], w[:, 1]) and torch.equal(z[:, 1], w[:, 0])
    assert item_seed(0, 1) != item_seed(1, 0) and item_seed(0, 1) == item_seed(0, 1)


def test_batch_dependent_options_and_wrong_sizes_are_refused():
    sde, mix = sd.VPSDE(), sd.ring8()
    with pytest.raises(ValueError, match="langevin_norm='sample'"):
        sd.sample(mix.score_fn(sde), sde, (4, 2), sampler="pc", corrector="langevin", generator=ItemNoise(0, range(4)))
    with pytest.raises(ValueError, match="ItemNoise of 3 items"):
        sd.sample(mix.score_fn(sde), sde, (4, 2), sampler="dpm_solver", generator=ItemNoise(0, range(3)))


def test_a_torch_generator_keeps_its_one_stream():
    sde, mix = sd.VPSDE(), sd.ring8()
    a = sd.sample(mix.score_fn(sde), sde, (6, 2), sampler="sde", steps=5, generator=torch.Generator().manual_seed(0)).x
    g = torch.Generator().manual_seed(0)
    x = sde.prior_sample((6, 2), generator=g)
    b = sd.sample(mix.score_fn(sde), sde, (6, 2), sampler="sde", steps=5, generator=g, x_init=x).x
    assert torch.equal(a, b)
