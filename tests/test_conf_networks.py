"""The paper's networks as Hydra presets (conf/model/ddpmpp.yaml, ncsnpp.yaml, ddpm.yaml): at full
size they are the reference's CIFAR-10 networks; a tiny variant of each trains a few steps."""
import json

import pytest
from omegaconf import OmegaConf

from scoresde.apps import train as _train_app  # noqa: F401  (stores the config schemas)
from scoresde.nn import build_model
from scoresde.training import train

from _tiny import compose_conf

TINY = {"ddpmpp": ["model.nf=8", "model.ch_mult=[1,2]"], "ncsnpp": ["model.nf=8", "model.ch_mult=[1,2]", "sde=ve"],
        "ddpm": ["model.nf=32", "model.ch_mult=[1,1]"]}
RUN = ["data=digits", "data.n_test=16", "model.num_res_blocks=1", "model.attn_resolutions=[4]",
       "train.steps=3", "train.batch_size=8", "train.log_every=1", "train.progress=false", "train.device=cpu",
       "train.tensorboard=false", "eval.n_nll=0", "eval.n_samples=4", "sampler=dpm_solver", "sampler.steps=2"]


@pytest.mark.parametrize("preset", sorted(TINY))
def test_tiny_variant_of_each_network_preset_trains_a_few_steps(preset, tmp_path):
    cfg = OmegaConf.to_container(compose_conf("train", [f"model={preset}", *RUN, *TINY[preset]]), resolve=True)
    metrics = train(cfg, tmp_path)
    assert metrics["step"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["step"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("preset, sde, count", [("ddpmpp", "vp", 61_804_419), ("ncsnpp", "ve", 62_758_915),
                                                ("ddpm", "vp", 35_218_947)])
def test_presets_are_the_reference_cifar10_networks(preset, sde, count):
    node = OmegaConf.to_container(compose_conf("train", [f"model={preset}", f"sde={sde}"]), resolve=True)["model"]
    kw = {k: v for k, v in node.items() if k not in ("name", "parameterization", "time_input")}
    net = build_model(node["name"], data_shape=(3, 32, 32), **kw)
    assert sum(p.numel() for p in net.parameters()) == count
