"""scoresde-eval: samples (a run, .pt, .npz) or a checkpoint -> metrics with the whole protocol."""
import json

import numpy as np
import pytest
import torch

from scoresde.apps import eval as eval_app
from scoresde.data.images import digits_split
from scoresde.metrics import feature_stats, save_stats
from scoresde.metrics.features import sha256_file

from _inception import random_inception_state
from _tiny import compose_conf


def _cfg(overrides):
    return compose_conf("eval_app", overrides)


def _sample_run(tmp_path, x, name="samples.pt"):
    run = tmp_path / "sample_run"
    run.mkdir()
    if name.endswith(".pt"):
        torch.save(x, run / name)
    else:
        k = torch.round(x * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()     # NHWC uint8, as FID tools
        np.savez(run / name, arr_0=k)
    (run / "sample.json").write_text(json.dumps({"checkpoint": "nowhere.pt", "sampler": "dpm_solver",
                                                  "options": {"steps": 10}, "n": x.shape[0], "nfe": 10,
                                                  "nfe_per_batch": [10], "seed": 3}))
    return run


@pytest.fixture(scope="module")
def heldout():
    return ((digits_split(n_test=300, seed=0)[2] + 1) / 2)[:100]


def test_digits_samples_get_fd_digits_with_floor_and_protocol(tmp_path, heldout):
    noisy = (heldout + 0.2 * torch.randn(heldout.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    run = _sample_run(tmp_path, noisy)
    out = eval_app.run_eval(_cfg([f"samples={run}", "kid_subsets=10", "floor_repeats=2"]), tmp_path / "eval")
    m, fl, p = out["metrics"], out["floor"], out["protocol"]
    assert set(m) >= {"fd_digits", "kid_digits", "kid_digits_stderr", "is_digits", "precision", "recall"}
    assert m["fd_digits"] > 3 * fl["fd_digits"] > 0            # noisy digits sit well above the floor
    assert p["n"] == 100 and p["extractor"] == "digits-cnn-v1" and p["resize"] == "none"
    assert len(p["weights_sha256"]) == 64 and p["reference"]["n"] == 1497 and p["reference"]["split"] == "train"
    assert p["samples"]["seed"] == 3 and p["sampler"].startswith("dpm_solver") and "NFE 10" in p["sampler"]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"] == pytest.approx(m)
    md = (tmp_path / "eval" / "eval.md").read_text()
    assert "| fd_digits |" in md and "weights_sha256" in md


def test_uint8_nhwc_npz_scores_as_the_tensor(tmp_path, heldout):
    a = eval_app.run_eval(_cfg([f"samples={_sample_run(tmp_path, heldout)}", "floor=false", "kid_subsets=5"]),
                          tmp_path / "a")
    (tmp_path / "sample_run").rename(tmp_path / "pt_run")
    b = eval_app.run_eval(_cfg([f"samples={_sample_run(tmp_path, heldout, 'samples.npz')}/samples.npz",
                                "floor=false", "kid_subsets=5"]), tmp_path / "b")
    assert b["metrics"]["fd_digits"] == pytest.approx(a["metrics"]["fd_digits"], rel=1e-6)
    assert a["floor"] is None


def test_inception_path_against_a_statistics_file_on_random_weights(tmp_path, monkeypatch):
    w = tmp_path / "random-inception.pth"
    torch.save(random_inception_state(0), w)
    monkeypatch.setattr("scoresde.metrics.inception.INCEPTION_SHA256_PREFIX", sha256_file(w)[:8])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    ref = feature_stats(torch.rand(5, 2048, generator=g), keep_features=True, extractor="inception-v3-tf-2015-12-05",
                        resize="tf1-bilinear-299", weights_sha256=sha256_file(w), dataset="toy", split="train")
    save_stats(ref, tmp_path / "ref.npz")
    torch.save(x, tmp_path / "samples.pt")
    out = eval_app.run_eval(_cfg([f"samples={tmp_path / 'samples.pt'}", f"inception_weights={w}",
                                  f"reference={tmp_path / 'ref.npz'}", "kid_subsets=3", "pr_k=1"]), tmp_path / "eval")
    assert set(out["metrics"]) >= {"fid", "kid", "inception_score", "precision", "recall"}
    p = out["protocol"]
    assert p["extractor"] == "inception-v3-tf-2015-12-05" and p["resize"] == "tf1-bilinear-299"
    assert p["reference_source"]["statistics_file"].endswith("ref.npz") and p["sampler"].startswith("unknown")
    # statistics of another resize are refused, not compared
    save_stats(ref.with_record(resize="clean"), tmp_path / "clean.npz")
    with pytest.raises(ValueError, match="resize"):
        eval_app.run_eval(_cfg([f"samples={tmp_path / 'samples.pt'}", f"inception_weights={w}",
                                f"reference={tmp_path / 'clean.npz'}"]), tmp_path / "eval2")


def test_bad_input_is_a_clear_error(tmp_path, heldout):
    with pytest.raises(ValueError, match="exactly one"):
        eval_app.run_eval(_cfg([]), tmp_path)
    with pytest.raises(FileNotFoundError, match="samples"):
        eval_app.run_eval(_cfg([f"samples={tmp_path}"]), tmp_path)
    torch.save(heldout[:10], tmp_path / "samples.pt")
    with pytest.raises(FileNotFoundError, match="Inception weights"):
        eval_app.run_eval(_cfg([f"samples={tmp_path}", "extractor=inception",
                                f"inception_weights={tmp_path / 'none.pth'}"]), tmp_path / "e")
    stats = feature_stats(torch.rand(5, 64), extractor="other-net", resize="none")
    save_stats(stats, tmp_path / "other.npz")
    with pytest.raises(ValueError, match="extractor"):
        eval_app.run_eval(_cfg([f"samples={tmp_path}", f"reference={tmp_path / 'other.npz'}"]), tmp_path / "e")


def test_a_checkpoint_is_sampled_here_and_scored_against_its_own_data(tmp_path, monkeypatch):
    import sys
    from scoresde.apps import train as train_app
    run = tmp_path / "train"
    monkeypatch.setattr(sys, "argv", ["scoresde-train", "experiment=digits", f"hydra.run.dir={run}",
                                      "train.progress=false", "train.threads=null", "train.tensorboard=false",
                                      "train.steps=2", "train.batch_size=8", "train.log_every=1", "model.nf=8",
                                      "eval.n_samples=4", "sampler.steps=2", "eval.n_nll=0"])
    train_app.train_main()
    ck = run / "checkpoints" / "last.pt"
    out = eval_app.run_eval(_cfg([f"checkpoint={ck}", "n=12", "sampler=dpm_solver", "sampler.steps=2",
                                  "kid_subsets=3", "floor_repeats=1"]), tmp_path / "eval")
    p = out["protocol"]
    assert p["samples"]["checkpoint"] == str(ck) and p["samples"]["nfe_per_batch"] == [2] and p["samples"]["seed"] == 0
    assert p["reference"]["dataset"] and '"name": "digits"' in p["reference"]["dataset"]
    assert (tmp_path / "eval" / "samples.pt").is_file() and (tmp_path / "eval" / "sample.json").is_file()
    # two sampler steps of an untrained network are far from digits
    assert out["metrics"]["fd_digits"] > 5 * out["floor"]["fd_digits"]


def test_python_m_scoresde_eval_exits_nonzero_naming_the_missing_samples(tmp_path):
    from _tiny import ROOT, run
    r = run(["-m", "scoresde", "eval", "samples=/no/such/run", f"hydra.run.dir={tmp_path}"], cwd=ROOT)
    assert r.returncode == 1 and "/no/such/run" in r.stderr
