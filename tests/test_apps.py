"""The sample and likelihood apps (scoresde/apps/sample.py, likelihood.py) on a tiny trained
checkpoint; what the apps share (scoresde/apps/_common.py): user errors as one line and exit 1;
``python -m scoresde APP``."""

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import scoresde as sd
from scoresde.apps import _common, likelihood as likelihood_app, sample as sample_app
from scoresde.apps import train as _train_app  # noqa: F401  (stores train_schema)

from _tiny import CONF, ROOT, TINY, run as run_python


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory trained for a few steps (ring8, VP), with its checkpoint."""
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = OmegaConf.to_container(_compose(TINY + ["eval.n_nll=16", "eval.rtol=1e-4", "eval.atol=1e-4",
                                                  "eval.eps=1e-5"]), resolve=True)
    from scoresde.training import train
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


def test_sample_app_takes_the_centred_prior_and_rejects_an_unknown_one(trained, tmp_path, monkeypatch, capsys):
    ckpt = trained / "checkpoints" / "last.pt"
    _app(monkeypatch, sample_app.main, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'a'}", "n=30",
                                        "sampler=heun", "sampler.steps=3", "sampler.prior=centred", "seed=1"])
    model = sd.load_model(ckpt)
    ref = sd.sample(model, model.sde, (30, 2), sampler="heun", steps=3, prior="centred",
                    generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.load(tmp_path / "a" / "samples.pt"), ref.x)
    info = json.loads((tmp_path / "a" / "sample.json").read_text())
    assert info["options"]["prior"] == "centred" and info["nfe"] == 6 + 1
    assert info["nonfinite"] == 0               # samples holding NaN/Inf (the default raises on any)
    _app(monkeypatch, sample_app.main, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'c'}", "n=30",
                                        "sampler=heun", "sampler.steps=3", "sampler.nonfinite=count", "seed=1"])
    info = json.loads((tmp_path / "c" / "sample.json").read_text())
    assert info["options"]["nonfinite"] == "count" and info["nonfinite"] == 0
    with pytest.raises(SystemExit) as exc:
        _app(monkeypatch, sample_app.main, [f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'b'}",
                                            "sampler.prior=middle"])
    assert exc.value.code == 1 and "unknown prior 'middle'" in capsys.readouterr().err


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


def test_every_hydra_app_reads_the_one_config_location_and_the_old_module_is_gone():
    from scoresde.apps import bench as bench_app
    for app in (_train_app, sample_app, likelihood_app, bench_app):
        assert app.config_path is _common.config_path, app.__name__
    assert (CONF / "train.yaml").is_file() and _common.config_path() in (str(CONF), "pkg://scoresde.conf")
    # the train app lives with the others (a file check: an editable install elsewhere could still
    # resolve the import)
    pkg = Path(sd.__file__).parent
    assert not (pkg / "cli.py").exists() and (pkg / "apps" / "train.py").is_file()


def test_the_user_error_wrapper_exits_1_with_one_line_and_keeps_tracebacks_of_bugs(capsys, monkeypatch):
    import logging
    from scoresde.checkpoints import CheckpointError
    from scoresde.training import TrainingDiverged

    # the handlers an earlier app's Hydra set up write to streams pytest has closed since
    quiet = logging.getLogger("scoresde.tests.quiet")
    quiet.propagate = False
    quiet.addHandler(logging.NullHandler())
    monkeypatch.setattr(_common, "log", quiet)

    def fails(exc):
        raise exc

    for exc in (ValueError("bad value x"), FileNotFoundError("no file y"), CheckpointError("bad ckpt z"),
                TrainingDiverged("nan at step 3")):
        with pytest.raises(SystemExit) as info:
            _common.exit_on_user_error(fails)(exc)
        assert info.value.code == 1
        assert capsys.readouterr().err.splitlines() == [f"error: {exc}"]
    assert _common.exit_on_user_error(lambda a, b=1: a + b)(2, b=3) == 5
    with pytest.raises(KeyError):          # a bug is not a user error
        _common.exit_on_user_error(fails)(KeyError("k"))



# ---------------------------------------------------------------------------------------------
# unknown keys of our own groups, with or without +, are refused with the closest valid key;
# Hydra's own overrides stay Hydra's; a missing mandatory value is one line
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("app, argv, message", [
    ("train", ["trian.steps=100"], "unknown key 'trian' in trian.steps=100; did you mean 'train'?"),
    ("train", ["+trian.steps=100"], "unknown key 'trian' in +trian.steps=100; did you mean 'train'?"),
    ("train", ["train.step=100"], "unknown key 'train.step' in train.step=100; did you mean 'train.steps'?"),
    ("train", ["+train.step=100"], "unknown key 'train.step' in +train.step=100; did you mean 'train.steps'?"),
    # judged on the chosen option's keys, and on the first option of a sweep
    ("train", ["sde=ve", "sde.sigma_mx=3"], "did you mean 'sde.sigma_max'?"),
    ("train", ["-m", "sde=vp,ve", "sde.beta_mx=3"], "did you mean 'sde.beta_max'?"),
    ("train", ["experimnet=quick"], "did you mean 'experiment'?"),
    ("train", ["experiment=quick", "model.widht=8"], "did you mean 'model.width'?"),
    ("train", ["xyzzy=1"], "valid keys: classifier, data, eval, experiment, loss, model, note, optim, sampler, "
                           "sde, seed, task, train"),
    ("sample", ["checkpoint=x.pt", "sampler.stesp=3"], "did you mean 'sampler.steps'?"),
    ("likelihood", ["checkpoint=x.pt", "n_tt=3"], "did you mean 'n_t'?"),
    ("bench", ["+overhead.enabeld=false"], "did you mean 'overhead.enabled'?"),
])
def test_an_unknown_key_is_refused_with_the_closest_valid_one(app, argv, message):
    from scoresde.apps import bench  # noqa: F401  (stores the apps' schemas)
    from scoresde.apps import train  # noqa: F401
    msg = _common.unknown_key_error(app, argv + ["hydra.run.dir=/nonexistent"])
    assert msg is not None and msg.endswith(message), msg


@pytest.mark.parametrize("app, argv", [
    ("train", ["train.steps=100", "seed=3", "sde=ve", "sde.sigma_max=10", "experiment=quick", "train.log_every=7"]),
    ("train", ["-m", "sde=vp,subvp", "seed=1,2", "hydra/launcher=basic", "hydra.sweep.dir=/tmp/x",
               "+hydra.job.env_set.FOO=1", "hydra.job.chdir=true"]),
    ("sample", ["checkpoint=x.pt", "sampler=pc", "sampler.corrector=langevin", "n=3"]),
    ("likelihood", ["checkpoint=x.pt", "data=moons", "data.n_test=10", "method=both"]),
    ("bench", ["quick=true", "overhead.network.width=8"]),
])
def test_valid_overrides_and_hydras_own_pass_the_key_check(app, argv):
    from scoresde.apps import bench  # noqa: F401
    from scoresde.apps import train  # noqa: F401
    assert _common.unknown_key_error(app, argv) is None


def test_plus_with_a_typo_exits_1_in_one_line_instead_of_running_without_the_key(tmp_path, monkeypatch, capsys):
    from _tiny import TINY
    from scoresde.apps import train as train_app
    monkeypatch.setattr(sys, "argv", ["scoresde-train", "+trian.steps=100", f"hydra.run.dir={tmp_path}"] + TINY)
    with pytest.raises(SystemExit) as info:
        train_app.train_main()
    assert info.value.code == 1 and not (tmp_path / "metrics.json").exists()
    assert capsys.readouterr().err.splitlines() == [
        "error: unknown key 'trian' in +trian.steps=100; did you mean 'train'?"]


def test_a_missing_checkpoint_value_is_one_line_without_a_traceback(tmp_path, monkeypatch, capsys):
    for main in (sample_app.main, likelihood_app.main):
        with pytest.raises(SystemExit) as info:
            _app(monkeypatch, main, [f"hydra.run.dir={tmp_path}"])
        err = capsys.readouterr().err
        assert info.value.code == 1 and "Traceback" not in err
        assert err.splitlines() == ["error: checkpoint=... is required: give the path of a checkpoint written by "
                                    "scoresde-train (e.g. checkpoint=outputs/train/<date>/<time>/checkpoints/last.pt)"
                                    ", checkpoint=diffusers:FOLDER or checkpoint=score_sde:FILE score_sde.config=NAME"]


def _help_groups(app):
    """The groups section of ``--help`` as Hydra's help renders it (conf/hydra/help/scoresde.yaml)."""
    from hydra import compose, initialize_config_dir
    from scoresde.apps import train  # noqa: F401  (stores train_schema)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=app, return_hydra_config=True)
        text = cfg.hydra.help.template
    return text.split("== Groups")[1].split("== Config")[0]


def test_help_lists_the_apps_own_groups_with_their_choice_and_no_schema_groups():
    train = _help_groups("train")
    assert "schema" not in train, train
    assert "\nsde: subvp, ve, *vp\n" in train and "\nmodel: ddpm, ddpmpp, *mlp, ncsnpp, unet\n" in train and "\nexperiment: " in train
    assert "guidance:" not in train                    # the sample app's group, not the train app's
    sample = _help_groups("sample")
    assert "\nsampler: " in sample and "*ode" in sample and "\nguidance: *cfg\n" in sample
    assert "schema" not in sample and "\nsde: " not in sample and "\nmodel: " not in sample


@pytest.mark.slow
def test_train_help_prints_the_groups_and_not_the_schemas(monkeypatch, capsys):
    from scoresde.apps import train as train_app
    with pytest.raises(SystemExit) as info:           # Hydra's help lists every group first: seconds
        _app(monkeypatch, train_app.train_main, ["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "sde: subvp, ve, *vp\n" in out
    assert "schema" not in out.split("== Config")[0], out


def test_likelihood_json_sets_the_entropy_floor_beside_nll_and_says_why_bits_per_dim_is_null(trained):
    import math
    import re
    out = likelihood_app.checkpoint_likelihood(trained / "checkpoints" / "last.pt", n=20, rtol=1e-3, atol=1e-3,
                                               method="both", n_t=4)
    keys = list(out)
    assert keys[keys.index("nll_se") + 1] == "entropy"
    mix = sd.ring8()                                   # well-separated modes: H = log 8 + H(N(0, 0.25^2 I))
    assert abs(out["entropy"] - (math.log(8) + float(mix.gaussian_entropies()[0]))) < 1e-9
    assert 0 <= out["entropy_se"] < 1e-9
    for p in ("", "elbo_"):
        assert out[p + "bits_per_dim"] is None
        assert keys[keys.index(p + "bits_per_dim") + 1] == p + "bits_per_dim_note"
        assert "continuous" in out[p + "bits_per_dim_note"] and "ring8" in out[p + "bits_per_dim_note"]
    page = (ROOT / "docs" / "outputs.md").read_text()
    assert set(out) | {"checkpoint"} <= set(re.findall(r"`([a-z][a-z0-9_]*)`", page))
