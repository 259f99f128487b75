"""NCSN++ / DDPM++ and DDPM: score_sde_pytorch's state_dict layout (its checkpoints in
tests/data/score_sde/, written by its code at commit cb1f359f by make_fixtures.py there), its
parameter counts, FIR resampling against the upfirdn2d definition, options and errors.  That the
scores equal the reference's own outputs is tested through the loader, tests/test_interop_score_sde.py."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scoresde as sd
from scoresde.interop import score_sde_network
from scoresde.interop.score_sde import _numpy_globals
from scoresde.nn import DDPM, NCSNpp, build_model
from scoresde.nn.layers_pp import FIRDownConv2d, downsample_fir, upsample_fir
from scoresde.score import ScoreModel

DATA = os.path.join(os.path.dirname(__file__), "data", "score_sde")
FAMILIES = ["ddpmpp_vp", "ddpmpp_deep_subvp", "ncsnpp_fir_residual_vp", "ncsnpp_fourier_ve",
            "ncsnpp_256_shape_ve", "ddpm_vp", "ncsnpp_options_vp", "ncsnpp_unconditional_ve"]


def _config(name):
    with open(os.path.join(DATA, name + ".json")) as f:
        return json.load(f)


def _checkpoint(name):
    with torch.serialization.safe_globals(_numpy_globals()):
        return torch.load(os.path.join(DATA, name + ".pth"), weights_only=True)


def test_raw_and_ema_fixtures_differ_so_the_two_tests_are_distinct():
    ref = torch.load(os.path.join(DATA, "ddpmpp_vp_outputs.pth"), weights_only=True)
    assert (ref["ema"]["score"] - ref["raw"]["score"]).abs().max() > 1e-2 * ref["ema"]["score"].abs().max()


@pytest.mark.parametrize("name", FAMILIES)
def test_state_dict_keys_shapes_and_order_equal_the_reference(name):
    ours = score_sde_network(_config(name)).state_dict()
    theirs = _checkpoint(name)["model"]
    assert [k.removeprefix("module.") for k in theirs] == list(ours)
    assert all(ours[k.removeprefix("module.")].shape == v.shape and ours[k.removeprefix("module.")].dtype == v.dtype
               for k, v in theirs.items())


def test_fourier_weights_are_a_frozen_parameter_outside_the_ema_list():
    net = score_sde_network(_config("ncsnpp_fourier_ve"))
    names = [n for n, p in net.named_parameters() if not p.requires_grad]
    assert names == ["all_modules.0.W"]
    trainable = sum(p.requires_grad for p in net.parameters())
    assert trainable == len(_checkpoint("ncsnpp_fourier_ve")["ema"]["shadow_params"])


def _upfirdn_1axis(x, k, up, down, pad0, pad1):
    """The upfirdn definition along the last axis, sample by sample: zero insertion, padding, convolution
    with k (not correlation), decimation."""
    n = x.shape[-1]
    u = np.zeros(x.shape[:-1] + (n * up,))
    u[..., ::up] = x
    u = np.concatenate([np.zeros(x.shape[:-1] + (pad0,)), u, np.zeros(x.shape[:-1] + (pad1,))], axis=-1)
    L = u.shape[-1] - len(k) + 1
    out = np.stack([sum(u[..., o + j] * k[len(k) - 1 - j] for j in range(len(k))) for o in range(L)], -1)
    return out[..., ::down]


def _upfirdn_2d(x, k1, up, down, pad0, pad1):
    """Separable kernel k1 k1^T / sum^2 (times gain for up): the definition along both axes."""
    y = _upfirdn_1axis(x, k1, up, down, pad0, pad1)
    return np.swapaxes(_upfirdn_1axis(np.swapaxes(y, -1, -2), k1, up, down, pad0, pad1), -1, -2)


@pytest.mark.parametrize("kernel", [(1, 3, 3, 1), (1, 2, 3), (1, 5, 2, 7, 3, 1)])
def test_fir_resampling_equals_the_upfirdn_definition(kernel, gen):
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    k1 = np.asarray(kernel, dtype=np.float64) / np.sum(kernel)
    n = len(kernel)
    want_up = _upfirdn_2d(x.numpy(), k1 * 2, 2, 1, (n - 1) // 2 + 1, (n - 2) // 2)      # gain 4 = 2 x 2
    want_down = _upfirdn_2d(x.numpy(), k1, 1, 2, (n - 1) // 2, (n - 2) // 2)
    np.testing.assert_allclose(upsample_fir(x.float(), kernel).double().numpy(), want_up, rtol=0, atol=1e-5)
    np.testing.assert_allclose(downsample_fir(x.float(), kernel).double().numpy(), want_down, rtol=0, atol=1e-5)
    # the conv-then-down layer: blur padded by ((p + 1) // 2, p // 2), p = n - 2 + 2, then a stride-2 3x3 conv
    layer = FIRDownConv2d(3, 4, kernel)
    p = n - 2 + 2
    blurred = torch.from_numpy(_upfirdn_2d(x.numpy(), k1, 1, 1, (p + 1) // 2, p // 2)).float()
    want = F.conv2d(blurred, layer.weight, layer.bias, stride=2)
    torch.testing.assert_close(layer(x.float()), want, rtol=0, atol=1e-5)


def test_fir_up_then_constant_image_keeps_its_level_inside():
    x = torch.ones(1, 2, 8, 8)
    assert torch.allclose(upsample_fir(x)[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))
    assert torch.allclose(downsample_fir(x)[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))


def test_build_model_registry_builds_both_networks_and_they_train(gen):
    for name, kw in (("ncsnpp", dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                                     fir=True, progressive="output_skip", progressive_input="residual")),
                     ("ddpm", dict(nf=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(4,)))):
        net = build_model(name, data_shape=(3, 8, 8), init_scale=0.1, **kw) if name == "ncsnpp" else \
            build_model(name, data_shape=(3, 8, 8), **kw)
        model = ScoreModel(net, sd.VPSDE())
        x = torch.randn(2, 3, 8, 8, generator=gen)
        loss = model(x, torch.tensor([0.3, 0.7])).square().mean()
        loss.backward()
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("kw", [dict(progressive="residual", resblock_type="ddpm", resamp_with_conv=True),
                                dict(progressive="residual", progressive_input="input_skip",
                                     progressive_combine="cat")])
def test_paths_the_reference_cannot_run_still_give_shapes_and_gradients(kw, gen):
    # the reference's non-FIR layerspp.Upsample passes 'nearest' as scale_factor: ours upsamples
    net = NCSNpp(image_size=8, num_channels=3, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                 init_scale=0.1, **kw)
    x = torch.randn(2, 3, 8, 8, generator=gen, requires_grad=True)
    out = net(x, torch.tensor([0.2, 0.9]))
    assert out.shape == x.shape
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kw, match", [
    (dict(resblock_type="resnet"), "resblock_type"),
    (dict(progressive="skip"), "progressive"),
    (dict(embedding_type="sinusoidal"), "embedding_type"),
    (dict(scale_by_sigma=True), "scale_by_sigma"),
    (dict(fir=True, resblock_type="ddpm", resamp_with_conv=True), "FIR upsampling with a convolution"),
    (dict(fir=True, progressive="residual"), "FIR upsampling with a convolution"),
    (dict(fir_kernel=(1,), fir=True), "fir_kernel"),
    (dict(nf=6), "GroupNorm over 18 channels"),
    (dict(image_size=10), "image_size"),
])
def test_bad_options_raise_value_errors_naming_them(kw, match):
    base = dict(image_size=16, num_channels=3, nf=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))
    with pytest.raises(ValueError, match=match):
        NCSNpp(**{**base, **kw})


def test_ddpm_needs_widths_that_are_multiples_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        DDPM(image_size=16, nf=16)


def test_input_of_the_wrong_shape_is_an_error_naming_it():
    net = NCSNpp(image_size=8, num_channels=3, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    with pytest.raises(ValueError, match="expects x of shape"):
        net(torch.zeros(1, 3, 16, 16), torch.zeros(1))


FULL_SIZE = {  # the reference's counts, tests/data/score_sde/reference_parameter_counts.json
    "vp/cifar10_ddpmpp_continuous": (dict(), 61_804_419),
    "vp/cifar10_ddpmpp_deep_continuous": (dict(num_res_blocks=8), 106_632_579),
    "vp/cifar10_ncsnpp_continuous": (dict(fir=True, progressive_input="residual"), 62_693_251),
    "ve/cifar10_ncsnpp_continuous": (dict(fir=True, progressive_input="residual", embedding_type="fourier",
                                          scale_by_sigma=True, centered=False), 62_758_915),
    "ve/cifar10_ncsnpp_deep_continuous": (dict(num_res_blocks=8, fir=True, progressive_input="residual",
                                               embedding_type="fourier", scale_by_sigma=True, centered=False),
                                          107_587_075),
}


def test_full_size_counts_here_are_the_recorded_reference_counts():
    with open(os.path.join(DATA, "reference_parameter_counts.json")) as f:
        recorded = json.load(f)["counts"]
    want = {k: v for k, (_, v) in FULL_SIZE.items()} | {"vp/ddpm/cifar10_continuous": 35_218_947}
    assert {k: recorded[k] for k in want} == want


@pytest.mark.slow
@pytest.mark.parametrize("config", list(FULL_SIZE) + ["vp/ddpm/cifar10_continuous"])
def test_full_size_parameter_counts_equal_the_reference(config):
    if config == "vp/ddpm/cifar10_continuous":
        net, want = build_model("ddpm", data_shape=(3, 32, 32)), 35_218_947
    else:
        kw, want = FULL_SIZE[config]
        net = build_model("ncsnpp", data_shape=(3, 32, 32), **kw)
    assert sum(p.numel() for p in net.parameters()) == want
