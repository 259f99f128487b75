"""The CIFAR-10 recipes of Song et al. as experiment presets (conf/experiment/cifar10_*.yaml): each
composes to the reference config's optimiser, warm-up, clipping, EMA, batch, SDE, loss reduction,
data options and network size, and its tiny variant (experiment=RECIPE_tiny) trains a few
steps on a tiny CIFAR-format set the test writes, through the streaming loader with flips."""
import json

import pytest
from omegaconf import OmegaConf

from scoresde.apps import train as _train_app  # noqa: F401  (stores the config schemas)
from scoresde.interop import load_score_sde_config
from scoresde.training import train

from _cifar import write_tiny_cifar10
from _tiny import compose_conf

# ours -> the reference config it reproduces, and the SDE's name there
RECIPES = {"cifar10_ddpmpp_continuous": ("vp/cifar10_ddpmpp_continuous", "vp"),
           "cifar10_ddpmpp_deep_continuous": ("vp/cifar10_ddpmpp_deep_continuous", "vp"),
           "cifar10_ddpmpp_deep_continuous_subvp": ("subvp/cifar10_ddpmpp_deep_continuous", "subvp"),
           "cifar10_ncsnpp_continuous": ("ve/cifar10_ncsnpp_continuous", "ve")}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return write_tiny_cifar10(tmp_path_factory.mktemp("cifar"))[0]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_composes_to_the_reference_config(recipe):
    ref_name, sde = RECIPES[recipe]
    ref = load_score_sde_config(ref_name)
    cfg = OmegaConf.to_container(compose_conf("train", [f"experiment={recipe}", "data.root=/nowhere"]), resolve=True)
    o, tr, m, d = ref["optim"], ref["training"], ref["model"], ref["data"]
    assert cfg["optim"]["lr"] == o["lr"] and cfg["optim"]["warmup"] == o["warmup"]
    assert cfg["optim"]["grad_clip"] == o["grad_clip"] and cfg["optim"]["weight_decay"] == o["weight_decay"] == 0
    assert (cfg["optim"]["beta1"], cfg["optim"]["eps"]) == (o["beta1"], o["eps"]) and cfg["optim"]["schedule"] == "constant"
    assert cfg["train"]["batch_size"] == tr["batch_size"] and cfg["train"]["steps"] == tr["n_iters"]
    assert cfg["train"]["ema_decay"] == m["ema_rate"]
    assert cfg["sde"]["name"] == sde and cfg["loss"]["eps"] == 1e-5
    assert cfg["loss"]["reduction"] == ("mean" if tr["reduce_mean"] else "sum") and cfg["loss"]["weighting"] == "sigma2"
    assert cfg["data"]["dataset"] == "CIFAR10" and cfg["data"]["flip"] == d["random_flip"]
    assert cfg["data"]["dequantize"] == d["uniform_dequantization"]
    for key in ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "fir", "progressive",
                "progressive_input", "progressive_combine", "embedding_type", "fourier_scale", "scale_by_sigma",
                "resblock_type", "init_scale", "skip_rescale"):
        assert cfg["model"][key] == m[key], key
    if sde == "ve":   # the reference's [0, 1] data and sigma, in our [-1, 1]: sigma doubled
        assert (cfg["sde"]["sigma_min"], cfg["sde"]["sigma_max"]) == (2 * m["sigma_min"], 2 * m["sigma_max"])
    else:
        assert (cfg["sde"]["beta_min"], cfg["sde"]["beta_max"]) == (m["beta_min"], m["beta_max"])


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_tiny_variant_of_each_recipe_trains_a_few_steps_on_a_cifar_format_set(recipe, cifar_root, tmp_path):
    cfg = OmegaConf.to_container(compose_conf("train", [f"experiment={recipe}_tiny",
                                                        f"data.root={cifar_root}"]), resolve=True)
    assert cfg["model"]["nf"] == 8 and cfg["data"]["stream"] and cfg["data"]["flip"]
    metrics = train(cfg, tmp_path)
    assert metrics["step"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 3
