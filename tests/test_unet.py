"""The DDPM++-style U-Net: shapes, wiring (parameter count by hand), gradients, time conditioning."""
import pytest
import torch

from scoresde.nn.unet import UNet, count_parameters


def tiny(image_size=8, channels=1, **kw):
    cfg = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(image_size // 2,), dropout=0.0)
    cfg.update(kw)
    return UNet(image_size=image_size, channels=channels, **cfg)


def randomize_(net, gen):
    """Give the zero-initialised output convs random weights so every path carries signal."""
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net


@pytest.mark.parametrize("size", [8, 16, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_unet_output_shape_equals_input_shape(size, channels, gen):
    net = tiny(size, channels)
    x = torch.randn(3, channels, size, size, generator=gen)
    out = net(x, torch.rand(3, generator=gen))
    assert out.shape == x.shape and out.dtype == x.dtype


def test_unet_outputs_zero_at_init_as_ddpmpp(gen):
    # DDPM++'s init_scale = 0: the output conv starts at zero, so the initial score is zero.
    net = tiny()
    x = torch.randn(4, 1, 8, 8, generator=gen)
    assert net(x, torch.rand(4, generator=gen)).abs().max() == 0


def test_unet_parameter_count_matches_hand_count():
    def conv(i, o, k):
        return i * o * k * k + o

    def gn(c):
        return 2 * c

    def lin(i, o):
        return i * o + o

    T = 32                                        # temb_dim = 4 nf

    def rb(i, o):
        return gn(i) + conv(i, o, 3) + lin(T, o) + gn(o) + conv(o, o, 3) + (conv(i, o, 1) if i != o else 0)

    def attn(c):
        return gn(c) + conv(c, 3 * c, 1) + conv(c, c, 1)

    expected = (lin(8, T) + lin(T, T) + conv(1, 8, 3)                        # time MLP, conv_in
                + rb(8, 8) + conv(8, 8, 3) + rb(8, 16) + attn(16)              # encoder
                + rb(16, 16) + attn(16) + rb(16, 16)                           # middle
                + rb(32, 16) + attn(16) + rb(24, 16) + attn(16) + conv(16, 16, 3)  # decoder 4x4
                + rb(24, 8) + rb(16, 8)                                        # decoder 8x8
                + gn(8) + conv(8, 1, 3))                                       # output
    net = tiny()
    print(f"tiny U-Net: {count_parameters(net)} parameters")
    assert count_parameters(net) == expected


def test_unet_gradients_reach_every_parameter_and_the_input(gen):
    net = randomize_(tiny(16, 3, ch_mult=(1, 2, 2), attn_resolutions=(8,)), gen)
    x = torch.randn(2, 3, 16, 16, generator=gen, requires_grad=True)
    net(x, torch.rand(2, generator=gen)).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().any()]
    assert not missing
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("embedding", ["fourier", "sinusoidal"])
def test_unet_time_conditioning_changes_the_output(embedding, gen):
    net = randomize_(tiny(embedding=embedding), gen).eval()
    x = torch.randn(1, 1, 8, 8, generator=gen).expand(2, -1, -1, -1)
    same = net(x, torch.tensor([0.3, 0.3]))
    assert torch.equal(same[0], same[1])
    out = net(x, torch.tensor([0.1, 0.9]))
    assert (out[0] - out[1]).abs().max() > 1e-3 * out.abs().max()


def test_unet_accepts_a_scalar_time(gen):
    net = randomize_(tiny(), gen).eval()
    x = torch.randn(2, 1, 8, 8, generator=gen)
    torch.testing.assert_close(net(x, torch.tensor(0.5)), net(x, torch.full((2,), 0.5)))


def test_unet_rejects_bad_configurations_and_inputs():
    with pytest.raises(ValueError, match="divisible"):
        UNet(image_size=12, ch_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNet(image_size=8, ch_mult=(1, 2), attn_resolutions=(16,))
    with pytest.raises(ValueError, match="fourier"):
        UNet(embedding="learned")
    net = tiny()
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        net(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="shape \\[B\\]"):
        net(torch.zeros(2, 1, 8, 8), torch.zeros(3))
