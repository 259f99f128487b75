import math

import pytest
import torch

import scoresde as sd

from scoresde.nn import (MODELS, GaussianFourierProjection, MLPScoreNet, SinusoidalEmbedding, build_model,
                         build_time_embedding, register_model)


def test_fourier_features_are_sin_cos_of_fixed_random_frequencies():
    torch.manual_seed(0)
    emb = GaussianFourierProjection(dim=8, scale=3.0)
    t = torch.tensor([0.0, 0.25, 1.0])
    out = emb(t)
    arg = 2 * math.pi * t[:, None] * emb.W[None]
    assert out.shape == (3, 8)
    assert torch.allclose(out, torch.cat([torch.sin(arg), torch.cos(arg)], 1))
    assert "W" in emb.state_dict()                      # fixed, saved with the model
    assert not any(p is emb.W for p in emb.parameters())


def test_sinusoidal_embedding_matches_ddpm_formula():
    emb = SinusoidalEmbedding(dim=6, scale=1000.0, max_period=10000.0)
    t = torch.tensor([0.0, 0.5])
    out = emb(t)
    k = torch.arange(3)
    w = torch.exp(-math.log(10000.0) * k / 3)
    arg = 1000.0 * t[:, None] * w[None]
    assert torch.allclose(out, torch.cat([torch.sin(arg), torch.cos(arg)], 1), atol=1e-5)
    assert torch.equal(out[0], torch.tensor([0.0, 0, 0, 1, 1, 1]))


def test_unknown_embedding_and_odd_dim_are_value_errors():
    with pytest.raises(ValueError, match="fourier"):
        build_time_embedding("learned", 8)
    with pytest.raises(ValueError, match="even"):
        GaussianFourierProjection(dim=7)


@pytest.mark.parametrize("shape", [(2,), (3, 4)])
def test_mlp_returns_x_shape_and_starts_at_zero(shape):
    net = MLPScoreNet(data_shape=shape, width=16, depth=2)
    x = torch.randn((5,) + shape)
    out = net(x, torch.rand(5))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))        # zero-initialised output layer


def test_mlp_output_depends_on_time_and_input():
    torch.manual_seed(0)
    net = MLPScoreNet(data_shape=2, width=16, depth=2, embedding="sinusoidal", emb_scale=1000.0)
    torch.nn.init.normal_(net.out.weight)
    x = torch.randn(4, 2)
    a = net(x, torch.full((4,), 0.1))
    b = net(x, torch.full((4,), 0.9))
    c = net(x + 1.0, torch.full((4,), 0.1))
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3


def test_mlp_is_residual_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = MLPScoreNet(data_shape=2, width=8, depth=3)
    torch.nn.init.normal_(net.out.weight)
    net(torch.randn(6, 2), torch.rand(6)).pow(2).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_mlp_rejects_wrong_data_shape():
    net = MLPScoreNet(data_shape=2, width=8, depth=1)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        net(torch.randn(3, 3), torch.rand(3))


def test_build_model_registry_and_unknown_name():
    assert isinstance(build_model("mlp", data_shape=[2], width=8, depth=1), MLPScoreNet)
    with pytest.raises(ValueError, match="mlp"):
        build_model("transformer")


def test_register_model_adds_a_network_by_name():
    @register_model("_test_identity")
    class Ident(torch.nn.Module):
        def __init__(self, data_shape=2):
            super().__init__()

        def forward(self, x, t):
            return x

    try:
        net = build_model("_test_identity", data_shape=(2,))
        x = torch.randn(3, 2)
        assert torch.equal(net(x, torch.rand(3)), x)
    finally:
        MODELS.pop("_test_identity")


def test_mlp_output_grows_linearly_far_from_the_data():
    """No normalisation caps the output: far out the true noise grows like x, and a capped network
    makes the probability-flow ODE throw prior-tail samples far away."""
    torch.manual_seed(0)
    net = MLPScoreNet(data_shape=2, width=32, depth=2)
    torch.nn.init.normal_(net.out.weight, std=0.1)
    x = torch.randn(16, 2)
    t = torch.rand(16)
    with torch.no_grad():
        ratio = net(100 * x, t).norm() / net(10 * x, t).norm()
    assert 5 < ratio < 20


# -- class-conditional networks -----------------------------------------------------------------
@pytest.mark.parametrize("name,shape,kw", [("mlp", (2,), dict(width=32, depth=2)),
                                           ("unet", (1, 8, 8), dict(nf=8, ch_mult=(1, 2), num_res_blocks=1))])
def test_conditional_network_adds_only_a_label_table_and_starts_as_its_unconditional_twin(name, shape, kw):
    torch.manual_seed(0)
    plain = sd.nn.build_model(name, data_shape=shape, **kw)
    torch.manual_seed(0)
    none = sd.nn.build_model(name, data_shape=shape, num_classes=None, **kw)
    torch.manual_seed(0)
    cond = sd.nn.build_model(name, data_shape=shape, num_classes=3, **kw)
    # unconditional: the same parameters, drawn the same way, whether num_classes is omitted or None
    assert list(plain.state_dict()) == list(none.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), none.state_dict().values()))
    extra = sorted(set(cond.state_dict()) - set(plain.state_dict()))
    assert extra == ["label_embed.table.weight"]
    assert all(torch.equal(plain.state_dict()[k], cond.state_dict()[k]) for k in plain.state_dict())
    x = torch.randn((4,) + shape, generator=torch.Generator().manual_seed(1))
    t = torch.rand(4, generator=torch.Generator().manual_seed(2))
    plain.eval(), cond.eval()
    with torch.no_grad():
        ref = plain(x, t)
        for y in (None, torch.tensor([0, 1, 2, 3])):
            torch.testing.assert_close(cond(x, t, y), ref)
        # the zero-initialised last layers (and the U-Net's residual branches) hide the labels at
        # first; give every parameter a value, then the labels must move the output
        for p in cond.parameters():
            if not p.abs().sum():
                p.normal_(std=0.1)
        out = [cond(x, t, torch.tensor([0, 0, 0, 0])), cond(x, t, torch.tensor([1, 1, 1, 1])), cond(x, t)]
        assert (out[0] - out[1]).abs().max() > 1e-3 and (out[1] - out[2]).abs().max() > 1e-3


def test_conditional_network_rejects_bad_labels():
    cond = sd.nn.build_model("mlp", data_shape=(2,), width=8, depth=1, num_classes=2)
    plain = sd.nn.build_model("mlp", data_shape=(2,), width=8, depth=1)
    x, t = torch.zeros(3, 2), torch.full((3,), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        cond(x, t, torch.tensor([0, 1, 3]))
    with pytest.raises(ValueError, match="integers"):
        cond(x, t, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, t, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        sd.nn.build_model("mlp", data_shape=(2,), num_classes=-1)
    model = sd.build_score_model({"sde": {"name": "vp"}, "model": {"name": "mlp", "data_shape": [2], "width": 8,
                                                                    "depth": 1}}, num_classes=2)
    assert model.num_classes == 2 and model.null_label == 2 and model.spec["model"]["num_classes"] == 2
    assert sd.build_score_model(model.spec).num_classes == 2   # what load_model calls
    with pytest.raises(ValueError, match="disagrees"):
        sd.build_score_model(model.spec, num_classes=3)
    with pytest.raises(ValueError, match="unconditional ScoreModel"):
        sd.ScoreModel(plain, sd.VPSDE())(x, t, torch.tensor([0, 1, 1]))
