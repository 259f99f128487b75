"""The sync counter (scoresde/bench/syncs.py) counts scalar reads, attributes them, and excludes by identity."""
import torch

from scoresde.bench.syncs import SyncCount


def test_sync_count_counts_each_scalar_read_and_skips_excluded_tensors():
    a, b = torch.tensor(1.5), torch.tensor([2.0, 3.0])
    with SyncCount(exclude=[a]) as s:
        float(a)                      # excluded by identity
        float(b.sum())
        bool(b[0] > 1)
        b.mul(2)                      # no read
    assert s.n == 2 and s.by == {"other": 2}


def test_sync_count_names_the_library_that_read():
    import scoresde as sd
    sde = sd.VPSDE()
    with SyncCount() as s:
        sd.sample(lambda x, t: -x, sde, (4, 2), sampler="heun", steps=3, generator=torch.Generator().manual_seed(0))
    assert s.n >= 1 and set(s.by) == {"scoresde"}
