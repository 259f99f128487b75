"""scoresde.bench.peers: diffusers' schedulers on the exported exact ring8 score, rows in the
engine's format, NFE counted per scheduler, judged against the exact-sample floor."""

import math
import sys

import pytest
import torch

from scoresde import bench
from scoresde.bench import peers

pytest.importorskip("diffusers", reason="the interop extra: pip install 'scoresde[interop]'")

N = 1000
# model calls per budget: one a step, Heun two a step less one (its last step is Euler's)
WANT_NFE = {lab: {5: 5, 10: 10} for lab in peers.PEERS}
WANT_NFE["diffusers heun"] = {5: 5, 10: 9}


@pytest.fixture(scope="module")
def runs():
    torch.set_num_threads(1)
    b = bench.Bench(n=N, floor_repeats=5)
    rows = peers.peer_rows(b, "ring8", "vp", budgets=[5, 10], seeds=[0])
    high = peers.peer_rows(b, "ring8", "vp", budgets=[50], seeds=[0], peers=["diffusers lms"])
    return b, rows, high


def test_every_peer_has_a_row_per_budget_in_the_engines_format(runs):
    _, rows, _ = runs
    assert sorted({r["label"] for r in rows}) == sorted(peers.PEERS)
    assert len(rows) == 2 * len(peers.PEERS)
    for r in rows:
        assert set(bench.FIELDS) <= set(r), sorted(set(bench.FIELDS) - set(r))
        assert r["problem"] == "ring8" and r["sde"] == "vp" and r["n"] == N
        assert math.isfinite(r["w2"]) and math.isfinite(r["w2_ratio"]) and math.isfinite(r["ode_err"])
        assert r["seconds"] > 0 and r["score_seconds"] > 0
    # they aggregate and tabulate with ours
    md = bench.headline(bench.aggregate(rows))
    assert "diffusers heun" in md and "W2 / exact floor" in md


def test_nfe_is_the_counted_model_calls_per_scheduler(runs):
    _, rows, _ = runs
    for r in rows:
        assert r["nfe"] == WANT_NFE[r["label"]][r["budget"]], (r["label"], r["budget"], r["nfe"])
    assert peers.PEERS["diffusers heun"].nfe(peers.peer_steps("diffusers heun", 50)) == 49


def test_a_peer_at_high_nfe_reaches_the_floor_and_converges_to_the_exact_flow(runs):
    b, rows, high = runs
    (r50,) = high
    r10 = next(r for r in rows if r["label"] == "diffusers lms" and r["budget"] == 10)
    # measured at n = 1000: W2/floor about 1.0 at 50 NFE; the floor's own spread at this n is ~20%
    assert r50["w2_ratio"] < 1.3, r50["w2_ratio"]
    # against the exact flow plus the exact denoiser (the map the scheduler approximates):
    # measured 1.4e-1 at 10 NFE, 1.3e-3 at 50; a wrong end point would stall at sigma^2 |score|
    assert r50["ode_err"] < r10["ode_err"] / 20, (r10["ode_err"], r50["ode_err"])
    # and far from the floor at 5 NFE, where the schedulers' step errors dominate
    assert min(r["w2_ratio"] for r in rows if r["budget"] == 5) > 2.0


def test_unknown_peer_and_non_mixture_are_refused():
    b = bench.Bench(n=10)
    with pytest.raises(ValueError, match="valid peers"):
        peers.peer_rows(b, "ring8", "vp", [5], [0], peers=["diffusers plms"])
    with pytest.raises(ValueError, match="neither a mixture"):
        peers.peer_rows(b, "/no/such/checkpoint.pt", "vp", [5], [0])


def test_without_diffusers_the_peers_are_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)   # makes `import diffusers` raise
    ok, why = peers.peers_available()
    assert not ok and 'pip install "scoresde[interop]"' in why
    assert peers.peer_rows(bench.Bench(n=10), "ring8", "vp", [5], [0]) == []
