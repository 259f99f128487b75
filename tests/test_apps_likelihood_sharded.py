"""Sharded likelihood (scoresde/apps/_shard_likelihood.py): per-point noise from (seed, i), one NLL
for any batching and world size (to the solver's tolerance where a solve is batched), shards
written and resumed, torchrun with 2 gloo processes."""
import json
import socket
import sys

import pytest
import torch

from scoresde.apps import likelihood as likelihood_app

from _tiny import TINY, compose_conf, run as run_python

FAST = ["n=6", "rtol=1e-4", "atol=1e-4", "seed=3"]


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    """A tiny MLP on ring8 (2-d, a Gaussian mixture: exact divergence is cheap, kl has a closed form)."""
    from omegaconf import OmegaConf
    from scoresde.apps import train as _train_app  # noqa: F401  (stores train_schema)
    from scoresde.training import train
    run = tmp_path_factory.mktemp("ring8")
    train(OmegaConf.to_container(compose_conf("train", TINY + ["data=ring8"]), resolve=True), run)
    return sorted((run / "checkpoints").glob("*.pt"))[-1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A tiny digits U-Net (nf 8) trained for two steps: 17-level images, so bits/dim with dequantization."""
    from scoresde.apps import train as train_app
    run = tmp_path_factory.mktemp("digits")
    argv = ["scoresde-train", "experiment=digits", f"hydra.run.dir={run}", "train.progress=false",
            "train.threads=null", "train.tensorboard=false", "train.steps=2", "train.batch_size=8",
            "train.log_every=1", "model.nf=8", "eval.n_samples=4", "sampler.steps=2", "eval.n_nll=0"]
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", argv)
    try:
        train_app.train_main()
    finally:
        mp.undo()
    return run / "checkpoints" / "last.pt"


def _with(base, extra):
    """``base`` overrides with those of ``extra`` replacing the same keys (Hydra refuses a key twice)."""
    keys = {e.split("=")[0] for e in extra}
    return [b for b in base if b.split("=")[0] not in keys] + list(extra)


def _nll(monkeypatch, ckpt, out, *extra):
    monkeypatch.setattr(sys, "argv", ["scoresde-likelihood", f"checkpoint={ckpt}", f"hydra.run.dir={out}",
                                      "noise=per_item", *_with(FAST, extra)])
    likelihood_app.main()
    return json.loads((out / "likelihood.json").read_text())


def _per_point(out):
    parts = [torch.load(p, weights_only=True) for p in sorted((out / "shards").iterdir())]
    return {m: torch.cat([q[m]["nll"] for q in parts]) for m in ("ode", "elbo") if m in parts[0]}


def test_batched_ode_nll_does_not_depend_on_the_batch_size_beyond_the_tolerance(ring, tmp_path, monkeypatch):
    a = _nll(monkeypatch, ring, tmp_path / "a", "batch_size=3")
    b = _nll(monkeypatch, ring, tmp_path / "b", "batch_size=4")              # 4 + 2: n not divisible
    assert a["solve"] == "batched" and a["world_size"] == 1 and a["noise"] == "per_item"
    assert len(a["shards"]) == 2 and len(b["nfe_per_batch"]) == 2 and a["bits_per_dim"] is None
    # same points; only the adaptive steps (chosen over each batch) differ: agreement to the tolerance
    pa, pb = _per_point(tmp_path / "a")["ode"], _per_point(tmp_path / "b")["ode"]
    assert not torch.equal(pa, pb)
    torch.testing.assert_close(pa, pb, rtol=0.0, atol=1e-3)
    assert abs(a["nll"] - b["nll"]) < 1e-3 and "kl" in a and "entropy" in a


@pytest.mark.slow
def test_batched_dequantization_draws_are_the_per_point_ones(digits, tmp_path, monkeypatch):
    # point i's u_i in the batched solve is what sd.bits_per_dim draws from point i's generator:
    # batch_size=1 (batched path, exact divergence) equals the library called on each point alone
    import math
    import scoresde as sd
    from scoresde.apps._shard_likelihood import _item_generator
    from scoresde.checkpoints import load_score
    from scoresde.data import build_dataset
    from scoresde.data.images import from_model_range
    extra = ["n=2", "batch_size=1", "eps=1e-2", "rtol=1e-2", "atol=1e-2"]
    a = _nll(monkeypatch, digits, tmp_path / "a", *extra)
    assert a["solve"] == "batched" and a["levels"] == 17
    assert a["bits_per_dim"] == pytest.approx(a["nll"] / (64 * math.log(2.0)))
    score_fn, sde, _, meta = load_score(digits, "cpu", True)
    data_cfg = dict(meta["data"])
    data = build_dataset(data_cfg.pop("name"), **data_cfg)
    k = from_model_range(data.test[:2], 17)
    want = []
    for i in range(2):
        r = sd.bits_per_dim(score_fn, sde, k[i:i + 1], levels=17, data_range=(-17 / 16, 17 / 16),
                            generator=_item_generator(3, i), eps=1e-2, rtol=1e-2, atol=1e-2)
        want.append(-(float(r.logp[0, 0]) + r.log_det))
    torch.testing.assert_close(_per_point(tmp_path / "a")["ode"], torch.tensor(want, dtype=torch.float64),
                               rtol=1e-6, atol=1e-5)


def test_per_point_solves_are_bit_for_bit_independent_of_the_batch_size(digits, tmp_path, monkeypatch):
    # hutchinson probes and the ELBO's draws come from the point's own generator: each point is its own call
    common = ["divergence=hutchinson", "method=both", "n_t=4", "n=3", "eps=1e-2", "rtol=1e-2", "atol=1e-2"]
    a = _nll(monkeypatch, digits, tmp_path / "a", "batch_size=1", *common)
    b = _nll(monkeypatch, digits, tmp_path / "b", "batch_size=2", *common)
    assert a["solve"] == "per_point"
    pa, pb = _per_point(tmp_path / "a"), _per_point(tmp_path / "b")
    assert torch.equal(pa["ode"], pb["ode"]) and torch.equal(pa["elbo"], pb["elbo"])
    assert a["elbo_nll"] == b["elbo_nll"] and a["elbo_minus_ode"] == b["elbo_minus_ode"]


def test_a_killed_run_resumes_from_its_finished_shards(ring, tmp_path, monkeypatch):
    full = _nll(monkeypatch, ring, tmp_path / "run", "batch_size=2")
    shards = sorted((tmp_path / "run" / "shards").iterdir())
    kept = {p.name: p.stat().st_mtime_ns for p in shards[:1]}
    for p in shards[1:]:                                     # as if killed after the first shard
        p.unlink()
    (tmp_path / "run" / "likelihood.json").unlink()
    again = _nll(monkeypatch, ring, tmp_path / "run", "batch_size=2")
    assert {p.name: p.stat().st_mtime_ns for p in sorted((tmp_path / "run" / "shards").iterdir())[:1]} == kept
    assert again["nll"] == full["nll"] and again["nll_se"] == full["nll_se"]
    with pytest.raises(SystemExit):                          # shards of another seed are refused, not mixed
        _nll(monkeypatch, ring, tmp_path / "run", "batch_size=2", "seed=4")


def test_more_than_one_process_needs_per_item_noise(ring, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("scoresde.training.distributed.world_size", lambda: 2)
    monkeypatch.setattr(sys, "argv", ["scoresde-likelihood", f"checkpoint={ring}", f"hydra.run.dir={tmp_path}", "n=4"])
    with pytest.raises(SystemExit) as info:
        likelihood_app.main()
    assert info.value.code == 1 and "noise=per_item" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_each_solve_half_and_match_one_process(ring, tmp_path, monkeypatch):
    one = _nll(monkeypatch, ring, tmp_path / "one", "batch_size=2")
    r = run_python(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                    "-m", "scoresde.apps.likelihood", f"checkpoint={ring}", f"hydra.run.dir={tmp_path / 'two'}",
                    "noise=per_item", *_with(FAST, ["batch_size=2"])], cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "likelihood.json").read_text())
    assert two["world_size"] == 2 and [s["rank"] for s in two["shards"]] == [0, 1, 0]
    # equal batches: the same solves, so equal to one process (to float rounding, at most the tolerance)
    torch.testing.assert_close(_per_point(tmp_path / "two")["ode"], _per_point(tmp_path / "one")["ode"],
                               rtol=1e-4, atol=0.0)
    assert two["nll"] == pytest.approx(one["nll"], rel=1e-4) and two["nfe_per_batch"] == one["nfe_per_batch"]
