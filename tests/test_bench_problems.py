"""Benchmark problems (scoresde/bench/problems.py): mixtures, checkpoints, networks."""

import math
from pathlib import Path

import pytest
import torch

import scoresde as sd
from scoresde import bench

ROOT = Path(__file__).resolve().parents[1]


def test_load_problem_rejects_a_name_that_is_neither_a_mixture_nor_a_file():
    with pytest.raises(ValueError, match="neither a mixture"):
        bench.load_problem("no/such/checkpoint.pt")
    assert bench.is_checkpoint("no/such/checkpoint.pt") and not bench.is_checkpoint("ring8")


def test_network_problem_is_the_configured_architecture_with_a_moving_flow():
    net = {"name": "mlp", "width": 32, "depth": 1, "embedding": "fourier", "emb_dim": 16, "emb_scale": 16.0,
           "norm": True, "parameterization": "noise", "time_input": "t"}
    p = bench.network_problem("ring8", "vp", net, seed=3)
    assert p.name == "ring8+mlp" and p.mixture is not None and p.dtype == torch.float32
    model = p.score_fn("vp")
    assert isinstance(model, sd.ScoreModel) and model.net.inp.out_features == 32 and len(model.net.blocks) == 1
    x = torch.randn(8, 2)
    with torch.no_grad():
        s = model(x, torch.full((8,), 0.5))
    assert s.shape == x.shape and s.abs().max() > 0  # the zero-initialised output layer was drawn
    again = bench.network_problem("ring8", "vp", net, seed=3).score_fn("vp")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="unknown model"):
        bench.network_problem("ring8", "vp", dict(net, name="mpl"))


@pytest.mark.slow
def test_a_trained_checkpoint_is_a_problem_with_its_own_sde(tmp_path):
    from tests._tiny import TINY, run

    run(["-m", "scoresde", "train"] + TINY + [f"hydra.run.dir={tmp_path / 'train'}"], cwd=ROOT)
    ckpt = tmp_path / "train" / "checkpoints" / "last.pt"
    assert ckpt.is_file()
    cells = bench.expand_grid([str(ckpt)], ["vp", "ve"], [bench.SamplerSpec("dpm", "dpm_solver")], [6], [0])
    assert len(cells) == 1
    row = bench.Bench(n=64, floor_repeats=1).run_cell(cells[0])
    model = sd.load_model(ckpt)
    assert row["sde"] == type(model.sde).__name__ and row["nfe"] == 6
    assert math.isfinite(row["sw2"]) and math.isfinite(row["sw2_floor"]) and math.isfinite(row["ode_err"])
