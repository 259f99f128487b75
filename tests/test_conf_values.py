"""Configs fuzzed (issue 28.4): every typed field of every schema given a wrong type, and every
field with a natural range given a value outside it, ends as one ``error: ...`` line naming the
key and exit status 1.

The walk composes in-process: each base config once (Hydra's compose API), then each field's
override merged into it as Hydra merges an override (``_common._merge_override``) and the error
turned into the apps' line (``_common.composition_error_line``); out-of-range values go to the
library constructor the app hands the node to, through the apps' error path
(``_common.exit_on_user_error``).  The full path of the apps' command line
(``_common.check_overrides``) runs in-process once per app, and each app once as a subprocess.
"""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode, StringNode

import scoresde as sd
from scoresde.apps import _common
from scoresde.apps import bench as _bench_app, eval as _eval_app, likelihood as _lk_app  # noqa: F401
from scoresde.apps import sample as _sample_app, train as _train_app  # noqa: F401
from scoresde.nn import MODELS
from scoresde.training import EvalConfig, OptimConfig, TrainConfig

from _tiny import CONF, ROOT, run

APP_CONFIGS = {"train": [], "sample": ["checkpoint=x"], "likelihood": ["checkpoint=x"],
               "eval_app": ["checkpoint=x"], "bench": []}


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _bases():
    """(label, config name, overrides, node walked: None for the whole config)."""
    out = [(name, name, extra, None) for name, extra in APP_CONFIGS.items()]
    for group in ("sde", "model", "data", "loss"):
        out += [(f"{group}={o}", "train", [f"{group}={o}"], group) for o in _options(group)]
    out += [(f"sampler={o}", "sample", ["checkpoint=x", f"sampler={o}"], "sampler") for o in _options("sampler")]
    out += [("classifier=mlp", "train", ["task=classifier", "classifier=mlp"], "classifier")]
    return out


def _leaves(node, prefix=""):
    """``(key, node)`` of every typed scalar below ``node`` (Any-typed ones are unchecked by design)."""
    for k in node.keys():
        if prefix == "" and k == "hydra":
            continue
        child = node._get_node(k)
        key = f"{prefix}{k}"
        if isinstance(child, DictConfig):
            yield from _leaves(child, key + ".")
        elif isinstance(child, (IntegerNode, FloatNode, BooleanNode, StringNode)):
            yield key, child


def _wrong_values(node):
    """Values of the wrong type for a node: text for a number or a bool, a list for a string."""
    if isinstance(node, StringNode):
        return ["[1,2]"]
    if isinstance(node, IntegerNode):
        return ["abc", "1.5"]
    if isinstance(node, FloatNode):
        return ["abc", "[0.1]"]
    return ["maybe"]                           # bool (OmegaConf reads an integer as a bool: 0 / not 0)


@pytest.fixture(scope="module")
def composed():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return {label: (compose(config_name=name, overrides=extra), node)
                for label, name, extra, node in _bases()}


def _one_line(override, cfg):
    """The apps' one line for ``override`` merged into ``cfg``, or None where it is accepted."""
    o = OverridesParser.create().parse_overrides([override])[0]
    try:
        _common._merge_override(cfg, o)
    except ConfigCompositionException as e:
        return _common.composition_error_line(e)
    return None


def test_every_typed_field_of_every_schema_refuses_a_wrong_type_in_one_line_naming_the_key(composed):
    checked, accepted, groups = 0, [], set()
    for label, (cfg, node) in composed.items():
        root = cfg if node is None else cfg[node]
        prefix = "" if node is None else f"{node}."
        for key, leaf in _leaves(root, prefix):
            groups.add(key.split(".")[0] if "." in key else label)
            for value in _wrong_values(leaf):
                line = _one_line(f"{key}={value}", cfg)
                if line is None:
                    accepted.append(f"{label}: {key}={value}")
                    continue
                assert "\n" not in line and f"'{key}'" in line, (label, key, value, line)
                checked += 1
    assert not accepted, accepted
    assert checked > 500, checked
    # the walk reached every group's schema and every app's own fields
    assert {"sde", "model", "data", "sampler", "loss", "optim", "train", "eval", "classifier", "guidance",
            "inverse", "edit", "overhead"} <= groups, sorted(groups)


def test_a_null_for_a_mandatory_number_is_one_line_naming_the_key(composed):
    cfg, _ = composed["train"]
    line = _one_line("train.steps=null", cfg)
    assert line is not None and "\n" not in line and "'train.steps'" in line


# -- values outside their range: the constructor the app hands the node to -----------------------------
def _call_app_path(fn, capsys, *args):
    """``fn(*args)`` through the apps' error path: (exit status, stderr lines)."""
    with pytest.raises(SystemExit) as info:
        _common.exit_on_user_error(fn)(*args)
    return info.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _sample(node):
    name = node.pop("name")
    return sd.sample(lambda x, t: -x, sd.VPSDE(), (2, 2), sampler=name, **node)


def _build(cls):
    return lambda node: cls(**node)


def _named(registry):
    def build(node):
        return registry[node.pop("name")](**node)
    return build


# (base, node, field, out-of-range values, builder): every field with a natural range
RANGES = [
    *[("train", "optim", f, v, _build(OptimConfig)) for f, v in [
        ("lr", [0.0, -1e-3]), ("weight_decay", [-0.1]), ("beta1", [1.0, -0.1]), ("beta2", [1.5]), ("eps", [0.0]),
        ("warmup", [-1]), ("min_lr_ratio", [1.5, -0.5]), ("grad_clip", [0.0, -1.0])]],
    *[("train", "train", f, v, _build(TrainConfig)) for f, v in [
        ("steps", [-1]), ("batch_size", [0]), ("ema_decay", [1.0, -0.5]), ("threads", [0]), ("log_every", [0]),
        ("eval_every", [-1]), ("ckpt_every", [-5]), ("keep", [0]), ("stop_check_every", [0])]],
    *[("train", "eval", f, v, _build(EvalConfig)) for f, v in [
        ("n_nll", [-1]), ("rtol", [0.0, -1e-5]), ("atol", [-1.0]), ("eps", [0.0, 1.5]), ("batch_size", [0]),
        ("n_samples", [-2]), ("bound_repeats", [0])]],
    ("sde=vp", "sde", "beta_min", [-0.1], _named(sd.sde.SDES)),
    ("sde=vp", "sde", "beta_max", [0.05], _named(sd.sde.SDES)),
    ("sde=vp", "sde", "T", [0.0, -1.0], _named(sd.sde.SDES)),
    ("sde=subvp", "sde", "beta_min", [-1.0], _named(sd.sde.SDES)),
    ("sde=ve", "sde", "sigma_min", [0.0, -0.01], _named(sd.sde.SDES)),
    ("sde=ve", "sde", "sigma_max", [0.001], _named(sd.sde.SDES)),
    ("sde=ve", "sde", "T", [0.0], _named(sd.sde.SDES)),
    ("loss=dsm", "loss", "eps", [0.0, -1e-5, 1.0], _named(sd.losses.LOSSES)),
    ("loss=dsm", "loss", "p_uncond", [1.5, -0.1], _named(sd.losses.LOSSES)),
    ("model=mlp", "model", "width", [0], lambda n: MODELS[n.pop("name")](data_shape=(2,), **{
        k: v for k, v in n.items() if k not in ("parameterization", "time_input")})),
    ("model=mlp", "model", "depth", [-1], lambda n: MODELS[n.pop("name")](data_shape=(2,), **{
        k: v for k, v in n.items() if k not in ("parameterization", "time_input")})),
    # (emb_dim and emb_scale: scoresde.nn's checks, which say "embedding dim" / accept a negative scale)
    ("model=mlp", "model", "num_classes", [-1], lambda n: MODELS[n.pop("name")](data_shape=(2,), **{
        k: v for k, v in n.items() if k not in ("parameterization", "time_input")})),
    *[(f"sampler={s}", "sampler", "eps", [0.0, -1e-3, 1.5], _sample) for s in ("ode", "pc", "dpm_solver")],
    ("sampler=ode", "sampler", "rtol", [0.0, -1e-5], _sample),
    ("sampler=ode", "sampler", "atol", [-1.0], _sample),
    ("sampler=ode", "sampler", "trajectory_points", [1, -3], _sample),
    *[(f"sampler={s}", "sampler", "steps", [0, -2], _sample) for s in ("pc", "sde", "dpm_solver", "unipc", "heun",
                                                                        "ipndm")],
    ("sampler=pc", "sampler", "snr", [-0.1], _sample),
    *[(f"sampler={s}", "sampler", "rho", [0.0, -7.0], _sample) for s in ("dpm_solver", "unipc", "heun", "ipndm")],
    ("sampler=dpm_solver", "sampler", "order", [0, 4], _sample),
    ("sampler=unipc", "sampler", "order", [0, 4], _sample),
    ("sampler=ipndm", "sampler", "max_order", [0, 5], _sample),
    # the sample app's inverse and edit nodes: the options functions the app hands them to
    *[("sample", "inverse", f, v, lambda n: _sample_app._inverse.inverse_options(**{**n, "op": "mask"}))
      for f, v in [("n", [0]), ("samples", [0]), ("steps", [0]), ("index", [-1]), ("factor", [0]),
                   ("particles", [0]), ("noise_std", [-0.1]), ("fraction", [0.0, 1.5])]],
    *[("sample", "edit", f, v, lambda n: _sample_app._edit.edit_options(**{**n, "mode": "sdedit"}))
      for f, v in [("n", [0]), ("index", [-1]), ("factor", [0]), ("steps", [0]), ("points", [1]), ("other", [-1]),
                   ("rtol", [0.0, 1.0])]],
]


@pytest.mark.parametrize("base,node,key,values,build", RANGES,
                         ids=[f"{b}-{n}.{k}" for b, n, k, _, _ in RANGES])
def test_a_value_outside_its_range_is_one_error_line_naming_the_key_and_exit_1(composed, capsys, base, node, key,
                                                                               values, build):
    cfg, _ = composed[base]
    for value in values:
        # the value passes the schema (its type is right) ...
        node_cfg = OmegaConf.to_container(cfg[node], resolve=True)
        assert key in node_cfg, (base, node, key)
        assert _one_line(f"{node}.{key}={value}", cfg) is None
        node_cfg[key] = value
        # ... and the constructor refuses it: one line naming the key, exit status 1
        code, lines = _call_app_path(build, capsys, node_cfg)
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (key, value, lines)
        assert key in lines[0], (key, value, lines)


def test_the_range_walk_covers_every_numeric_field_of_the_optim_train_and_eval_schemas():
    from scoresde.apps.schema import CONFIG_SCHEMAS
    import dataclasses
    walked = {(n, k) for _, n, k, _, _ in RANGES}
    for group in ("optim", "train", "eval"):
        for f in dataclasses.fields(CONFIG_SCHEMAS[group]):
            d = f.default
            if isinstance(d, (int, float)) and not isinstance(d, bool) and f.name not in ("seed",):
                assert (group, f.name) in walked, (group, f.name)


# -- the apps' command line: in-process once per app, and one subprocess each --------------------------
APP_ARGS = [("train", ["train.steps=abc"], "train.steps"),
            ("sample", ["checkpoint=x", "n=lots"], "n"),
            ("likelihood", ["checkpoint=x", "rtol=[1e-5]"], "rtol"),
            ("eval_app", ["checkpoint=x", "pr_k=1.5"], "pr_k"),
            ("bench", ["n=abc"], "n"),
            ("train", ["-m", "seed=1,abc"], "seed"),                # a sweep's later value
            ("sample", ["checkpoint=x", "sampler=pc", "sampler.snr=high"], "sampler.snr")]


@pytest.mark.parametrize("name,argv,key", APP_ARGS, ids=[f"{n}-{a[-1]}" for n, a, _ in APP_ARGS])
def test_check_overrides_refuses_a_wrong_type_before_hydra_runs_in_one_line(capsys, name, argv, key):
    with pytest.raises(SystemExit) as info:
        _common.check_overrides(name, argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert info.value.code == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert f"'{key}'" in lines[0], lines


def test_check_overrides_lets_right_values_and_sweeps_through(capsys):
    _common.check_overrides("train", ["-m", "seed=1,2", "train.steps=5", "sde=vp,ve", "optim.lr=1e-3"])
    _common.check_overrides("sample", ["checkpoint=x", "sampler=pc", "sampler.snr=0.2"])
    assert capsys.readouterr().err == ""


_SLOW = pytest.mark.slow      # ~5 s each (a fresh interpreter and Hydra); the train one stays in the default run
SUBPROCESS = [pytest.param("train", ["optim.lr=-1", "train.steps=0", "eval.n_nll=0", "eval.n_samples=0"], "optim.lr",
                           id="train-optim.lr"),
              pytest.param("train", ["train.steps=abc"], "train.steps", id="train-train.steps", marks=_SLOW),
              pytest.param("sample", ["checkpoint=x", "sampler.steps=many"], "sampler.steps", id="sample", marks=_SLOW),
              pytest.param("likelihood", ["checkpoint=x", "batch_size=[2]"], "batch_size", id="likelihood",
                           marks=_SLOW),
              pytest.param("bench", ["floor_repeats=often"], "floor_repeats", id="bench", marks=_SLOW),
              pytest.param("eval", ["checkpoint=x", "kid_subsets=some"], "kid_subsets", id="eval", marks=_SLOW)]


@pytest.mark.parametrize("app,args,key", SUBPROCESS)
def test_each_app_reports_a_bad_value_as_one_error_line_and_exit_1(tmp_path, app, args, key):
    r = run(["-m", "scoresde", app, *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], r.stderr[-2000:]


APP_RANGES = [*[("eval_app", k, [0, -1]) for k in ("floor_repeats", "kid_subsets", "kid_subset_size", "is_splits",
                                                    "pr_k", "feature_batch_size")],
              *[("bench", k, v) for k, v in [("n", [0]), ("floor_repeats", [0]), ("threads", [0]), ("eps", [0.0, 1.5]),
                                             ("ref_tol", [0.0]), ("budgets", [[10, 0]]), ("seeds", [[-1]])]]]


@pytest.mark.parametrize("base,key,values", APP_RANGES, ids=[f"{b}-{k}" for b, k, _ in APP_RANGES])
def test_an_app_setting_outside_its_range_is_one_error_line_before_any_work(composed, capsys, tmp_path, base, key,
                                                                            values):
    """The eval and bench apps check their counts before sampling, loading a network or a grid."""
    cfg, _ = composed[base]
    for value in values:
        bad = cfg.copy()
        if base == "eval_app":
            bad[key] = value
            code, lines = _call_app_path(_eval_app.run_eval, capsys, bad, tmp_path)
        else:
            plain = OmegaConf.to_container(bad, resolve=True)
            plain[key] = value
            code, lines = _call_app_path(_bench_app.run_bench, capsys, plain, tmp_path)
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], lines
        assert not list(tmp_path.iterdir())
