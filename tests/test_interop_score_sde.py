"""score_sde_pytorch checkpoints in and ours out (scoresde.interop.score_sde), against the reference's
own checkpoints and outputs in tests/data/score_sde/ (written by its code at cb1f359f)."""
import json
import os
import shutil

import pytest
import torch

import scoresde as sd
from scoresde.interop import (ScoreSdeCheckpointError, ScoreSdeModel, from_score_sde, load_score_sde_config,
                              score_sde_configs, score_sde_network, score_sde_sde, to_score_sde)
from scoresde.interop.score_sde import _numpy_globals

DATA = os.path.join(os.path.dirname(__file__), "data", "score_sde")
FAMILIES = ["ddpmpp_vp", "ddpmpp_deep_subvp", "ncsnpp_fir_residual_vp", "ncsnpp_fourier_ve",
            "ncsnpp_256_shape_ve", "ddpm_vp", "ncsnpp_options_vp", "ncsnpp_unconditional_ve"]


def _paths(name):
    return os.path.join(DATA, name + ".pth"), os.path.join(DATA, name + ".json")


def _outputs(name):
    return torch.load(os.path.join(DATA, name + "_outputs.pth"), weights_only=True)


@pytest.mark.parametrize("ema", [True, False])
@pytest.mark.parametrize("name", FAMILIES)
def test_score_equals_the_reference_get_score_fn_at_four_times(name, ema):
    ckpt, config = _paths(name)
    model = from_score_sde(ckpt, config, ema=ema)
    ref = _outputs(name)
    x = ref["x"]
    with torch.no_grad():
        for i, t in enumerate(ref["t"].tolist()):
            want = ref["ema" if ema else "raw"]["score"][i]
            got = model(x, torch.full((x.shape[0],), t))
            err = float((got - want).abs().max() / want.abs().max())
            assert err <= 1e-5, f"{name} ema={ema} t={t}: relative error {err:.2e}"


def test_loaded_model_carries_the_configs_sde_and_data_scaling():
    vp = from_score_sde(*_paths("ddpmpp_deep_subvp"))
    assert isinstance(vp.sde, sd.SubVPSDE) and (vp.sde.beta_min, vp.sde.beta_max) == (0.1, 20.0)
    assert vp.data_range == (-1.0, 1.0) and vp.scaler == {"shift": 0.5, "scale": 2.0}
    assert vp.event_shape == (3, 16, 16) and not vp.training
    ve = from_score_sde(*_paths("ncsnpp_256_shape_ve"))
    assert isinstance(ve.sde, sd.VESDE) and (ve.sde.sigma_min, ve.sde.sigma_max) == (0.01, 348.0)
    assert ve.data_range == (0.0, 1.0) and ve.scaler == {"shift": 0.0, "scale": 1.0}


def test_every_shipped_config_is_continuous_and_names_the_headline_ones():
    names = score_sde_configs()
    assert len(names) == 18
    for n in ("vp/cifar10_ddpmpp_continuous", "subvp/cifar10_ddpmpp_deep_continuous",
              "ve/cifar10_ncsnpp_deep_continuous", "ve/celebahq_256_ncsnpp_continuous", "vp/ddpm/cifar10_continuous"):
        assert n in names
    for n in names:
        assert load_score_sde_config(n)["training"]["continuous"] is True


def test_shipped_configs_are_package_data_in_pyproject():
    root = os.path.dirname(os.path.dirname(__file__))
    with open(os.path.join(root, "pyproject.toml")) as f:
        text = f.read()
    assert '"scoresde.interop" = ["score_sde_configs/*/*.json", "score_sde_configs/*/*/*.json"]' in text
    depth = {n.count("/") for n in score_sde_configs()}
    assert depth <= {1, 2}        # the two globs cover every shipped file


def test_config_as_name_dict_json_yaml_or_configdict_builds_the_same_network(tmp_path):
    yaml = pytest.importorskip("yaml")
    _, path = _paths("ncsnpp_fourier_ve")
    with open(path) as f:
        cfg = json.load(f)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))

    class ConfigDictLike:
        def to_dict(self):
            return cfg

    shapes = []
    for c in (cfg, path, str(tmp_path / "c.yaml"), ConfigDictLike()):
        torch.manual_seed(0)
        net = score_sde_network(c)
        shapes.append({k: (tuple(v.shape), float(v.double().sum())) for k, v in net.state_dict().items()})
    assert all(s == shapes[0] for s in shapes)


@pytest.mark.parametrize("config, exc, match", [
    ("vp/cifar10_ddpmpp", ValueError, "unknown score_sde config 'vp/cifar10_ddpmpp'.*vp/cifar10_ddpmpp_continuous"),
    ("/nonexistent/config.json", FileNotFoundError, "/nonexistent/config.json"),
    (42, TypeError, "config must be"),
])
def test_bad_config_references_are_errors_naming_them(config, exc, match):
    with pytest.raises(exc, match=match):
        load_score_sde_config(config)


@pytest.mark.parametrize("edit, match", [
    (lambda c: c["model"].pop("nf"), r"config\.model\.nf"),
    (lambda c: c["training"].update(continuous=False), "continuous is False"),
    (lambda c: c["model"].update(name="ncsnv2"), "ncsnv2"),
    (lambda c: c["training"].update(sde="foo"), "config.training.sde"),
    (lambda c: c.pop("data"), r"config\.data"),
])
def test_bad_config_contents_are_errors_naming_the_field(edit, match):
    cfg = load_score_sde_config("vp/cifar10_ddpmpp_continuous")
    edit(cfg)
    with pytest.raises(ValueError, match=match):
        load_score_sde_config(cfg)


# -- damaged checkpoints ------------------------------------------------------------------------
def _damaged(tmp_path, edit):
    ckpt, config = _paths("ncsnpp_fourier_ve")
    with torch.serialization.safe_globals(_numpy_globals()):
        state = torch.load(ckpt, weights_only=True)
    edit(state)
    out = tmp_path / "damaged.pth"
    torch.save(state, out)
    return out, config


@pytest.mark.parametrize("edit, match", [
    (lambda s: s["model"].pop("module.all_modules.5.Conv_1.weight"), r"missing keys \['all_modules.5.Conv_1.weight'\]"),
    (lambda s: s["model"].update({"module.extra.weight": torch.zeros(1)}), r"unexpected keys \['extra.weight'\]"),
    (lambda s: s["ema"]["shadow_params"].pop(), r"EMA list has \d+ tensors.*\d+ trainable parameters"),
    (lambda s: s["ema"]["shadow_params"].__setitem__(4, torch.zeros(2)), r"EMA entry 4 \('all_modules.3.weight'\)"),
    (lambda s: s.pop("ema"), "no EMA weights"),
    (lambda s: s.pop("model"), "no 'model' entry"),
])
def test_damaged_checkpoints_are_errors_naming_what_is_wrong(tmp_path, edit, match):
    path, config = _damaged(tmp_path, edit)
    with pytest.raises(ScoreSdeCheckpointError, match=match):
        from_score_sde(path, config)


def test_wrong_shape_tensor_is_an_error_naming_key_and_shapes(tmp_path):
    path, config = _damaged(tmp_path, lambda s: s["model"].update(
        {"module.all_modules.1.weight": torch.zeros(64, 31)}))
    with pytest.raises(ScoreSdeCheckpointError, match=r"'all_modules.1.weight' has shape \[64, 31\].*\[64, 32\]"):
        from_score_sde(path, config)


def test_checkpoint_of_another_config_is_an_error_not_a_half_loaded_model():
    ckpt, _ = _paths("ddpmpp_vp")
    with pytest.raises(ScoreSdeCheckpointError, match="does not match the config's network"):
        from_score_sde(ckpt, _paths("ncsnpp_fir_residual_vp")[1])


def test_truncated_and_missing_files_are_errors_naming_them(tmp_path):
    ckpt, config = _paths("ncsnpp_fourier_ve")
    data = open(ckpt, "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScoreSdeCheckpointError, match="cut.pth"):
        from_score_sde(cut, config)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        from_score_sde(tmp_path / "nothere.pth", config)


def test_weights_only_loading_allows_the_optimizer_numpy_scalar_and_nothing_else(tmp_path):
    import numpy as np
    ckpt, config = _paths("ddpmpp_vp")          # one reference training step: lr is a numpy.float64
    with torch.serialization.safe_globals(_numpy_globals()):
        state = torch.load(ckpt, weights_only=True)
    assert isinstance(state["optimizer"]["param_groups"][0]["lr"], np.float64)
    from_score_sde(ckpt, config)                  # loads
    state["optimizer"]["extra"] = np.arange(3)    # a numpy array needs numpy's _reconstruct: not allowed
    bad = tmp_path / "array.pth"
    torch.save(state, bad)
    with pytest.raises(ScoreSdeCheckpointError, match="array.pth"):
        from_score_sde(bad, config)


# -- ours out -----------------------------------------------------------------------------------
def _trained_here(config, gen):
    """A model built and trained here (two AdamW steps of the denoising loss) and its EMA."""
    torch.manual_seed(0)
    model = ScoreSdeModel(score_sde_network(config), config)
    ema = ScoreSdeModel(score_sde_network(config), config)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x0 = torch.randn(2, *model.event_shape, generator=gen)
    for _ in range(2):
        t = torch.rand(2, generator=gen) * 0.9 + 0.1
        mean, std = model.sde.marginal(x0, t)
        std = std.reshape(-1, 1, 1, 1)
        z = torch.randn(x0.shape, generator=gen)
        loss = (model(mean + std * z, t) * std + z).square().mean()     # sigma^2-weighted DSM
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.mul_(0.5).add_(0.5 * p)
    return model, ema


@pytest.mark.parametrize("name", ["ddpmpp_vp", "ncsnpp_fourier_ve", "ddpm_vp"])
def test_export_reloads_bit_identically_with_ema_and_raw_weights(tmp_path, name, gen):
    config = _paths(name)[1]
    model, ema = _trained_here(config, gen)
    path = to_score_sde(model, tmp_path / "out" / "checkpoint_7.pth", config, ema=ema, step=7)
    raw = from_score_sde(path, config, ema=False)
    averaged = from_score_sde(path, config, ema=True)
    for ours, back in ((model, raw), (ema, averaged)):
        a, b = ours.net.state_dict(), back.net.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, *model.event_shape, generator=gen)
    t = torch.tensor([0.25, 0.75])
    with torch.no_grad():
        assert torch.equal(model.eval()(x, t), raw(x, t))
    assert not list(tmp_path.joinpath("out").glob("*.tmp"))       # written atomically


def test_export_has_the_reference_layout_and_an_adam_state_it_can_restore(tmp_path, gen):
    config = _paths("ncsnpp_fourier_ve")[1]
    model, _ = _trained_here(config, gen)
    path = to_score_sde(model, tmp_path / "c.pth", config, step=3)
    state = torch.load(path, weights_only=True)
    assert sorted(state) == ["ema", "model", "optimizer", "step"] and state["step"] == 3
    assert all(k.startswith("module.") for k in state["model"]) and "module.all_modules.0.W" in state["model"]
    assert len(state["ema"]["shadow_params"]) == sum(p.requires_grad for p in model.parameters())
    assert state["ema"]["decay"] == load_score_sde_config(config)["model"]["ema_rate"]
    # the reference restores the optimizer with Adam(model.parameters()) -- every parameter, W included
    fresh = score_sde_network(config)
    adam = torch.optim.Adam(fresh.parameters(), lr=2e-4)
    adam.load_state_dict(state["optimizer"])
    assert len(adam.param_groups[0]["params"]) == len(list(fresh.parameters()))


def test_export_refuses_a_model_that_is_not_the_configs(tmp_path, gen):
    config = _paths("ddpmpp_vp")[1]
    model, _ = _trained_here(config, gen)
    with pytest.raises(ValueError, match="SDE"):
        to_score_sde(model, tmp_path / "a.pth", _paths("ddpmpp_deep_subvp")[1])
    with pytest.raises(ValueError, match="does not match|differs"):
        to_score_sde(model.net, tmp_path / "b.pth", _paths("ncsnpp_fir_residual_vp")[1])
    cfg = load_score_sde_config(config)
    cfg["model"]["skip_rescale"] = False          # same parameters, different network
    with pytest.raises(ValueError, match="skip_rescale=True"):
        to_score_sde(model, tmp_path / "c.pth", cfg)
    assert not list(tmp_path.iterdir())


def test_shipped_checkpoint_copies_load_from_any_folder(tmp_path):
    ckpt, config = _paths("ddpm_vp")
    shutil.copy(ckpt, tmp_path / "checkpoint_26.pth")
    assert isinstance(from_score_sde(tmp_path / "checkpoint_26.pth", config), ScoreSdeModel)


with open(os.path.join(DATA, "reference_parameter_counts.json")) as _f:
    RECORDED = json.load(_f)["counts"]       # the reference's own instantiations (make_fixtures.py)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_shipped_configs_build_networks_with_the_reference_parameter_counts(name):
    assert sum(p.numel() for p in score_sde_network(name).parameters()) == RECORDED[name]
    assert isinstance(score_sde_sde(name), (sd.VPSDE, sd.SubVPSDE, sd.VESDE))


def test_load_score_reads_score_sde_checkpoints_with_their_config():
    from scoresde.checkpoints import load_score

    ckpt, config = _paths("ncsnpp_fourier_ve")
    loaded = load_score("score_sde:" + ckpt, device="cpu", score_sde_config=config)
    assert loaded.event_shape == (3, 16, 16) and isinstance(loaded.sde, sd.VESDE)
    assert loaded.meta["source"] == "score_sde" and loaded.meta["step"] == 1004
    assert loaded.meta["scaler"] == {"shift": 0.0, "scale": 1.0}
    with pytest.raises(ValueError, match="needs its score_sde_pytorch config"):
        load_score("score_sde:" + ckpt, device="cpu")


def test_loaded_model_rebuilds_from_its_spec_as_our_checkpoints_do(gen):
    from scoresde.score import build_score_model

    model = from_score_sde(*_paths("ddpmpp_deep_subvp"))
    again = build_score_model(model.spec)
    again.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    t = torch.tensor([0.2, 0.6])
    with torch.no_grad():
        assert torch.equal(again.eval()(x, t), model(x, t))


@pytest.mark.parametrize("name", ["ddpmpp_vp", "ddpmpp_deep_subvp", "ncsnpp_fourier_ve"])
def test_probability_flow_drift_and_hutchinson_divergence_equal_the_reference_likelihoods(name):
    from scoresde.likelihood.divergence import _quadratic_forms

    model = from_score_sde(*_paths(name))
    ref = _outputs(name)
    x, flow = ref["x"], ref["ema"]["flow"]
    D = x[0].numel()
    for i, t in enumerate(flow["t"].tolist()):
        tt = torch.full((x.shape[0],), t)
        with torch.no_grad():
            drift = model.sde.reverse(model, probability_flow=True).sde(x, tt)[0]
        want = flow["drift"][i]
        assert float((drift - want).abs().max() / want.abs().max()) <= 1e-5
        # div(f x - g^2 s / 2) along the probe v: D f(t) - g(t)^2 v^T (grad s) v / 2, the likelihood's terms
        xg = x.clone().requires_grad_(True)
        quad = _quadratic_forms(model(xg, tt), xg, flow["probe"][None], [True])[0]
        f, g = model.sde.drift_coef(tt), model.sde.diffusion(tt)
        div = D * f - 0.5 * g ** 2 * quad
        torch.testing.assert_close(div, flow["div"][i], rtol=1e-5, atol=1e-5 * float(flow["div"][i].abs().max()))
