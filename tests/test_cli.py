"""The Hydra train app: every config composes and builds, typos fail naming the key, and the app
runs end to end into its run directory."""

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import scoresde as sd
from scoresde import cli
from scoresde.train import build_from_config

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ["sde", "model", "data", "loss", "optim", "train", "eval", "sampler"]
# The U-Net needs image data; image folders and torchvision sets need files on disk
# (tests/test_image_app.py builds them from images it writes).
PAIRED = {("model", "unet"): ["data=digits"]}
NEEDS_FILES = {("data", "image_folder"), ("data", "torchvision")}


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_config_path_falls_back_to_the_checkout():
    path = cli.config_path()
    assert path == "pkg://scoresde.conf" or Path(path) == CONF


def test_every_option_of_every_group_composes_and_builds():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for group in GROUPS:
            options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
            assert options, group
            for opt in options:
                if (group, opt) in NEEDS_FILES:
                    continue
                overrides = [f"{group}={opt}", *PAIRED.get((group, opt), [])]
                cfg = OmegaConf.to_container(compose(config_name="train", overrides=overrides), resolve=True)
                if group in ("sde", "model", "data", "loss"):
                    cfg["data"]["n_test"] = 8
                    model, data, loss = build_from_config(cfg)
                    assert model(data.test[:2], torch.full((2,), 0.5)).shape == data.test[:2].shape


def test_experiment_presets_compose_and_change_what_they_state():
    presets = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert "ring8_likelihood" in presets
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in presets:
            compose(config_name="train", overrides=[f"experiment={name}"])
        cfg = compose(config_name="train", overrides=["experiment=ring8_likelihood"])
    assert cfg.loss.weighting == "likelihood" and cfg.loss.importance_sampling


def test_defaults_are_ring8_vp_mlp():
    cfg = _compose()
    assert (cfg.data.name, cfg.sde.name, cfg.model.name, cfg.seed) == ("ring8", "vp", "mlp", 0)


@pytest.mark.parametrize("override, key", [("train.setps=3", "setps"), ("optim.learning_rate=1", "learning_rate"),
                                           ("train.steps=many", "steps")])
def test_typo_fails_at_composition_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException, match=key):
        _compose([override])


def test_app_runs_end_to_end_into_the_run_dir(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    argv = ["scoresde-train", f"hydra.run.dir={run_dir}", "train.steps=6", "train.batch_size=32",
            "train.log_every=3", "train.progress=false", "model.width=16", "model.depth=1", "model.emb_dim=8",
            "data.n_test=32", "eval.n_nll=8", "eval.n_samples=24", "eval.rtol=1e-3", "eval.atol=1e-3", "seed=5"]
    monkeypatch.setattr(sys, "argv", argv)
    cli.train_main()
    for f in ("checkpoints/last.pt", "metrics.json", "samples.png", "train_log.csv", ".hydra/config.yaml"):
        assert (run_dir / f).is_file(), f
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and {"nll", "kl", "mode_w2", "heldout_loss"} <= set(metrics)
    model = sd.load_model(run_dir / "checkpoints" / "last.pt")
    assert model.checkpoint["config"]["seed"] == 5 and model.checkpoint["config"]["train"]["steps"] == 6


def test_sampler_configs_name_real_samplers_and_their_options():
    import inspect
    from scoresde.samplers import SAMPLERS
    for path in sorted((CONF / "sampler").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        node.pop("defaults", None)
        name = node.pop("name")
        assert name in SAMPLERS, path.name
        params = inspect.signature(SAMPLERS[name]).parameters
        assert set(node) <= set(params), (path.name, sorted(set(node) - set(params)))


# ---------------------------------------------------------------------------------------------
# the sample and likelihood apps on a tiny trained checkpoint; errors as exit codes
# ---------------------------------------------------------------------------------------------
from _tiny import ROOT, TINY, run as run_python  # noqa: E402
from scoresde.apps import likelihood as likelihood_app, sample as sample_app  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory trained for a few steps (ring8, VP), with its checkpoint."""
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = OmegaConf.to_container(_compose(TINY + ["eval.n_nll=16", "eval.rtol=1e-4", "eval.atol=1e-4",
                                                  "eval.eps=1e-5"]), resolve=True)
    from scoresde.train import train
    train(cfg, run_dir)
    return run_dir


def _app(monkeypatch, main, argv):
    monkeypatch.setattr(sys, "argv", ["app"] + argv)
    main()


def test_sample_app_writes_tensor_png_and_json_deterministically(trained, tmp_path, monkeypatch):
    ckpt = trained / "checkpoints" / "last.pt"
    for name in ("a", "b"):
        _app(monkeypatch, sample_app.main, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / name}", "n=50",
                                            "batch_size=20", "sampler=dpm_solver", "sampler.steps=5", "seed=3"])
    _app(monkeypatch, sample_app.main, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'c'}", "n=50",
                                        "sampler=dpm_solver", "sampler.steps=5", "seed=4"])
    xa, xb, xc = (torch.load(tmp_path / n / "samples.pt") for n in "abc")
    assert xa.shape == (50, 2) and torch.isfinite(xa).all()
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert (tmp_path / "a" / "samples.png").stat().st_size > 1000
    info = json.loads((tmp_path / "a" / "sample.json").read_text())
    # three batches (20, 20, 10), one score evaluation a step each
    assert info["nfe_per_batch"] == [5, 5, 5] and info["nfe"] == 15 and info["step"] == 6


def test_sample_app_matches_the_library_call(trained, tmp_path, monkeypatch):
    ckpt = trained / "checkpoints" / "last.pt"
    _app(monkeypatch, sample_app.main, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}", "n=30",
                                        "sampler=heun", "sampler.steps=3", "seed=1"])
    model = sd.load_model(ckpt)
    ref = sd.sample(model, model.sde, (30, 2), sampler="heun", steps=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.load(tmp_path / "samples.pt"), ref.x)


def test_likelihood_app_reproduces_the_trainers_nll_and_reports_kl(trained, tmp_path, monkeypatch):
    ckpt = trained / "checkpoints" / "last.pt"
    _app(monkeypatch, likelihood_app.main, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path}", "n=16",
                                            "batch_size=8", "rtol=1e-4", "atol=1e-4"])
    out = json.loads((tmp_path / "likelihood.json").read_text())
    metrics = json.loads((trained / "metrics.json").read_text())
    # the same 16 held-out points, tolerances and eps as the trainer's evaluation (two batches here);
    # the adaptive solver picks other steps for other batches, so the two agree to the solver's
    # tolerance (rtol=1e-4 of |log p| ~ 12), while a different set of points would differ by ~1 nat
    assert out["n"] == 16 and out["split"] == "test" and len(out["nfe_per_batch"]) == 2
    assert out["nll"] == pytest.approx(metrics["nll"], abs=5e-3)
    assert out["kl"] == pytest.approx(metrics["kl"], abs=5e-3)
    assert out["bits_per_dim"] is None and out["seconds"] > 0 and out["nfe"] == sum(out["nfe_per_batch"])


def test_likelihood_app_train_split_of_a_toy_set_draws_fresh_points(trained, tmp_path, monkeypatch):
    res = likelihood_app.checkpoint_likelihood(trained / "checkpoints" / "last.pt", split="train", n=8,
                                               rtol=1e-3, atol=1e-3)
    assert res["n"] == 8 and res["split"] == "train"
    with pytest.raises(ValueError, match="valid splits"):
        likelihood_app.checkpoint_likelihood(trained / "checkpoints" / "last.pt", split="val")
    with pytest.raises(ValueError, match="valid estimators"):
        likelihood_app.checkpoint_likelihood(trained / "checkpoints" / "last.pt", divergence="skilling")


@pytest.mark.parametrize("main, argv, needle", [
    (sample_app.main, ["checkpoint=/no/such/ckpt.pt"], "/no/such/ckpt.pt"),
    (likelihood_app.main, ["checkpoint=/no/such/ckpt.pt"], "/no/such/ckpt.pt"),
    (sample_app.main, ["checkpoint=x.pt", "sampler=nope"], "sampler/nope"),
    (sample_app.main, [], "checkpoint"),
    (cli.train_main, ["model=transformer"], "model/transformer"),
    (cli.train_main, ["train.stesp=3"], "train.stesp"),
])
def test_app_errors_name_the_problem_and_exit_nonzero(main, argv, needle, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        _app(monkeypatch, main, argv + [f"hydra.run.dir={tmp_path}"])
    assert info.value.code not in (0, None)
    err = capsys.readouterr().err
    assert needle in err, err


def test_a_foreign_file_as_checkpoint_exits_nonzero_naming_it(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(SystemExit) as info:
        _app(monkeypatch, sample_app.main, [f"checkpoint={bad}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert info.value.code == 1 and "notes.pt" in capsys.readouterr().err


def test_python_m_scoresde_runs_an_app_by_name_and_exits_nonzero_on_errors(tmp_path, monkeypatch, capsys):
    r = run_python(["-m", "scoresde", "sample", "checkpoint=/no/such.pt", f"hydra.run.dir={tmp_path}"], cwd=ROOT)
    assert r.returncode == 1 and "checkpoint not found: /no/such.pt" in r.stderr
    from scoresde.__main__ import main
    monkeypatch.setattr(sys, "argv", ["scoresde", "bogus"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2 and "train,sample,likelihood,report" in capsys.readouterr().err
