"""conf/: every config and every experiment preset composes and builds the library's objects; the
schemas reject typos and wrong types naming the key; user configs plug in; the config ships in the
wheel."""

import dataclasses
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

import scoresde as sd
from scoresde.apps import _common, train as _train_app  # noqa: F401  (stores the train schemas)
from scoresde.apps import likelihood as likelihood_app, sample as sample_app  # noqa: F401
from scoresde.apps.schema import SCHEMAS
from scoresde.data import DATASETS
from scoresde.nn import MODELS
from scoresde.training import build_from_config

from _tiny import CONF, ROOT

SCHEMA_GROUPS = {"sde": sd.sde.SDES, "model": MODELS, "data": DATASETS, "sampler": sd.samplers.SAMPLERS,
                 "loss": sd.losses.LOSSES}


def _compose(name="train", overrides=(), hydra=False, config_dir=CONF):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra)


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", sorted(SCHEMA_GROUPS))
def test_every_group_option_names_a_registered_constructor_and_uses_its_schema(group):
    for opt in _options(group):
        node = _compose(overrides=[f"{group}={opt}"])[group]
        assert node.name in SCHEMA_GROUPS[group], (group, opt)
        assert OmegaConf.get_type(node) is SCHEMAS[f"{group}/{node.name}"], (group, opt)
        assert f"/schema/{group}/{node.name}@_here_" in (CONF / group / f"{opt}.yaml").read_text()


def test_every_registered_constructor_has_a_config():
    for group, registry in SCHEMA_GROUPS.items():
        names = {OmegaConf.load(f).get("name") for f in (CONF / group).glob("*.yaml")}
        assert set(registry) <= names, (group, sorted(set(registry) - names))


def test_every_sampler_config_builds_its_sampler_and_runs_on_the_exact_score():
    sde = sd.VPSDE()
    mix = sd.ring8()
    for opt in _options("sampler"):
        cfg = OmegaConf.to_container(_compose("sample", ["checkpoint=x", f"sampler={opt}"]).sampler)
        name = cfg.pop("name")
        sd.build_sampler(name, **cfg)   # eps and prior included: the sampler takes them as call defaults
        if name in ("dpm_solver", "heun", "unipc"):   # cheap enough to run here
            out = sd.sample(mix.score_fn(sde), sde, (4, 2), sampler=name, **cfg)
            assert out.x.shape == (4, 2) and out.nfe > 0


@pytest.mark.parametrize("preset", _options("experiment"))
def test_every_experiment_preset_composes_and_builds(preset, tmp_path):
    text = (CONF / "experiment" / f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_"), preset
    cfg = OmegaConf.to_container(_compose(overrides=[f"experiment={preset}"]), resolve=True)
    cfg["data"]["n_test"] = 8
    if cfg["data"].get("dataset") == "CIFAR10":     # the CIFAR-10 recipes: a tiny set in its layout
        from _cifar import write_tiny_cifar10
        cfg["data"]["root"] = str(write_tiny_cifar10(tmp_path)[0])
    if cfg.get("task") == "classifier":   # a noisy-classifier preset (scoresde.training.classifier)
        from scoresde.training.classifier import build_classifier_from_config

        clf, data = build_classifier_from_config(cfg)
        assert clf.num_classes == data.num_classes and clf.sde.__class__ is sd.build_sde(cfg["sde"]["name"]).__class__
        return
    model, data, loss = build_from_config(cfg)
    assert data.name in (cfg["data"]["name"], cfg["data"].get("dataset")) and model.sde.__class__ is sd.build_sde(cfg["sde"]["name"]).__class__
    assert model.num_classes == (cfg["model"].get("num_classes") or 0)


def test_presets_change_what_they_state():
    base = _compose()
    moons = _compose(overrides=["experiment=moons_subvp"])
    assert (moons.data.name, moons.sde.name, moons.loss.weighting) == ("moons", "subvp", "sigma2")
    assert moons.model == base.model                          # untouched groups stay the defaults
    # a command-line override still wins over the preset
    assert _compose(overrides=["experiment=moons_subvp", "sde=ve"]).sde.name == "ve"


def test_sample_and_likelihood_configs_compose_with_their_defaults():
    s = _compose("sample", ["checkpoint=ck.pt"])
    assert (s.checkpoint, s.n, s.sampler.name) == ("ck.pt", 1000, "ode")
    lk = _compose("likelihood", ["checkpoint=ck.pt"])
    # divergence auto: exact up to D = 64, hutchinson above and under protocol=score_sde
    assert (lk.split, lk.divergence, lk.protocol, lk.eps) == ("test", "auto", "ours", 1e-5)


@pytest.mark.parametrize("name, override, key", [
    ("train", "sde.beta_mn=3", "beta_mn"),
    ("train", "sde.beta_min=abc", "beta_min"),
    ("train", "model.width=wide", "width"),
    ("train", "data.n_test=1.5", "n_test"),
    ("train", "sampler.stpes=3", "stpes"),
    ("train", "loss.weigthing=likelihood", "weigthing"),
    ("train", "loss.importance_sampling=maybe", "importance_sampling"),
    ("train", "loss.eps=tiny", "eps"),
    ("train", "optim.lr=fast", "lr"),
    ("train", "optim.beta=0.9", "beta"),
    ("train", "optim.warmup=1.5", "warmup"),
    ("train", "train.batchsize=8", "batchsize"),
    ("train", "train.ckpt_every=often", "ckpt_every"),
    ("train", "train.progress=sometimes", "progress"),
    ("train", "eval.n_nl=8", "n_nl"),
    ("train", "eval.rtol=loose", "rtol"),
    ("train", "seed=one", "seed"),
    ("sample", "sampler.steps=many", "steps"),
    ("sample", "n=lots", "n"),
    ("likelihood", "divergance=exact", "divergance"),
    ("likelihood", "batch_size=1e3", "batch_size"),
])
def test_typo_or_wrong_type_fails_at_composition_naming_the_key(name, override, key):
    extra = [] if name == "train" else ["checkpoint=x"]
    with pytest.raises(ConfigCompositionException) as info:
        _compose(name, extra + [override])
    text = str(info.value) + str(info.value.__cause__)
    assert key in text


def test_typo_inside_a_user_config_file_fails_naming_the_key(tmp_path):
    (tmp_path / "sde").mkdir()
    (tmp_path / "sde" / "myvp.yaml").write_text("defaults:\n  - /schema/sde/vp@_here_\n  - _self_\n"
                                                "name: vp\nbeta_mx: 30.0\n")
    with pytest.raises(ConfigCompositionException) as info:
        _compose(overrides=[f"hydra.searchpath=[file://{tmp_path}]", "sde=myvp"])
    assert "beta_mx" in str(info.value) + str(info.value.__cause__)


def test_unknown_group_choice_lists_the_valid_options():
    with pytest.raises(MissingConfigException, match="sde/foo") as info:
        _compose(overrides=["sde=foo"])
    assert all(o in str(info.value) for o in ("vp", "subvp", "ve"))


def test_user_config_dir_adds_an_experiment_through_the_searchpath(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /sde: ve\nseed: 7\ntrain:\n  steps: 11\n")
    cfg = _compose(overrides=[f"hydra.searchpath=[file://{tmp_path}]", "experiment=mine"])
    assert (cfg.sde.name, cfg.seed, cfg.train.steps) == ("ve", 7, 11)


@pytest.mark.parametrize("preset, target", [("parallel", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launcher_presets_compose_onto_the_plugins(preset, target):
    pytest.importorskip({"parallel": "hydra_plugins.hydra_joblib_launcher",
                         "slurm": "hydra_plugins.hydra_submitit_launcher"}[preset])
    cfg = _compose(overrides=[f"hydra/launcher={preset}"], hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)


def test_config_path_is_the_package_when_installed_else_the_checkout():
    path = _common.config_path()
    assert path == "pkg://scoresde.conf" or Path(path) == CONF


@pytest.mark.slow
def test_wheel_ships_every_config_and_the_packaged_config_composes(tmp_path):
    """Build the wheel, install it into a fresh directory, compose from pkg://scoresde.conf there."""
    src = tmp_path / "src"
    import shutil
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                             "outputs", "multirun"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", str(src),
                        "-w", str(tmp_path / "whl")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next((tmp_path / "whl").glob("scoresde-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in CONF.rglob("*.yaml"):
        assert f"scoresde/conf/{f.relative_to(CONF).as_posix()}" in names, f
    shipped = list((ROOT / "scoresde" / "interop" / "score_sde_configs").rglob("*.json"))   # package data too
    assert len(shipped) == 18
    for f in shipped:
        assert f"scoresde/{f.relative_to(ROOT / 'scoresde').as_posix()}" in names, f
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # the train app registers its top-level schema (train_schema) as it is imported, as a run does
    code = ("import scoresde.apps._common as c, scoresde.apps.train; from hydra import compose, initialize_config_module;\n"
            "assert c.config_path() == 'pkg://scoresde.conf', c.config_path()\n"
            "with initialize_config_module('scoresde.conf', version_base='1.3'):\n"
            "    cfg = compose('train', overrides=['experiment=moons_subvp'])\n"
            "assert cfg.data.name == 'moons', cfg.data\n"
            "import scoresde; print(scoresde.__file__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert str(site) in r.stdout


def _defaults(schema):
    out = {}
    for f in dataclasses.fields(schema):
        out[f.name] = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "???")
    return out


@pytest.mark.parametrize("group, cls", [("optim", "OptimConfig"), ("train", "TrainConfig"), ("eval", "EvalConfig")])
def test_optim_train_eval_schemas_are_the_dataclasses_fields_and_defaults(group, cls):
    import inspect
    import scoresde.training as tr
    from scoresde.apps.schema import CONFIG_SCHEMAS
    params = inspect.signature(getattr(tr, cls)).parameters
    assert _defaults(CONFIG_SCHEMAS[group]) == {k: p.default for k, p in params.items()}
    # and the composed default config holds exactly them: conf/ restates none of them
    assert OmegaConf.to_container(_compose()[group]) == {k: p.default for k, p in params.items()}


def test_loss_schema_is_the_losses_signature():
    import inspect
    params = inspect.signature(sd.DSMLoss).parameters
    assert _defaults(SCHEMAS["loss/dsm"]) == {"name": "dsm", **{k: p.default for k, p in params.items()}}
    cfg = OmegaConf.to_container(_compose(overrides=["loss=likelihood"]).loss)
    assert cfg == {"name": "dsm", **{k: p.default for k, p in params.items()},
                   "weighting": "likelihood", "importance_sampling": True}
    assert sd.losses.LOSSES["dsm"] is sd.DSMLoss


def test_top_level_seed_default_is_the_trainers():
    import inspect
    assert _compose().seed == inspect.signature(sd.Trainer).parameters["seed"].default


def test_no_config_file_restates_a_default_of_the_code():
    """Each default is stated once, in a signature: an option file sets only what differs."""
    from scoresde.apps.schema import CONFIG_SCHEMAS
    checked = 0
    for group in sorted(SCHEMA_GROUPS) + sorted(CONFIG_SCHEMAS):
        for f in sorted((CONF / group).glob("*.yaml")):
            node = OmegaConf.to_container(OmegaConf.load(f)) or {}
            node.pop("defaults", None)
            schema = CONFIG_SCHEMAS[group] if group in CONFIG_SCHEMAS else SCHEMAS[f"{group}/{node['name']}"]
            defaults = _defaults(schema)
            same = sorted(k for k, v in node.items() if k != "name" and k in defaults and defaults[k] == v
                          and type(defaults[k]) is type(v))
            assert not same, (f"{group}/{f.name} restates the default(s) {same}")
            checked += 1
    assert checked >= 25

