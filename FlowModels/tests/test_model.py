"""The math the flows rely on: exact inverses, log-determinants equal to the Jacobian's, act-norm's init, the
bits/dim convention, and an LU 1x1 convolution that stays invertible when trained."""
import math

import pytest
import torch

from layers import ActNorm, Coupling, InvConv1x1, SplitPrior, ZeroConv2d, squeeze, unsqueeze
from model import Config, Flow, Preprocess, bits_per_dim, decode, encode, initialize, log_prob, sample
from shared import metrics


def randomize(module: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised convolutions make every coupling the identity (log-det 0): perturb them so tests bite."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, ZeroConv2d):
            m.weight.data = torch.randn(m.weight.shape, generator=g) * std
            m.bias.data = torch.randn(m.bias.shape, generator=g) * std
        if isinstance(m, ActNorm):
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.5
            m.log_scale.data = torch.randn(m.log_scale.shape, generator=g) * 0.5
            m.initialized.fill_(True)
        if isinstance(m, InvConv1x1):  # a rotation has log|det| 0: give it a volume change
            m.log_s.data += torch.randn(m.log_s.shape, generator=g) * 0.3
    return module


def layers(channels: int = 4) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "actnorm": ActNorm(channels),
        "invconv": InvConv1x1(channels),
        "affine_channel_sigmoid": Coupling(channels, 8, "channel", 0, False, "sigmoid"),
        "affine_channel_tanh_swapped": Coupling(channels, 8, "channel", 1, False, "tanh"),
        "additive_channel": Coupling(channels, 8, "channel", 1, True),
        "affine_checkerboard_even": Coupling(channels, 8, "checkerboard", 0, False, "tanh"),
        "affine_checkerboard_odd": Coupling(channels, 8, "checkerboard", 1, False, "sigmoid"),
        "additive_checkerboard": Coupling(channels, 8, "checkerboard", 0, True),
        "logit": Preprocess("logit", 0.05),
        "center": Preprocess("center", 0.05),
    }


def small_input(channels: int = 4, size: int = 4, batch: int = 3, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05).to(dtype)


@pytest.mark.parametrize("name", list(layers()))
def test_every_layer_inverts_to_1e4(name):
    layer = randomize(layers()[name])
    x = small_input()
    y, logdet = layer(x)
    assert logdet.shape == (3,) and not torch.allclose(y, x)  # not the identity
    assert (layer.inverse(y) - x).abs().max() < 1e-4


def test_squeeze_and_split_invert_and_squeeze_moves_each_2x2_patch_into_channels():
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).view(2, 2, 4, 4)
    s = squeeze(x)
    assert s.shape == (2, 8, 2, 2) and torch.equal(unsqueeze(s), x)
    assert torch.equal(s[0, :4, 0, 0], x[0, 0, :2, :2].flatten())  # the top-left patch of channel 0
    split = randomize(SplitPrior(8, learned=True))
    h, z, log_pz = split(s)
    assert h.shape == z.shape == (2, 4, 2, 2) and log_pz.shape == (2,)
    assert torch.equal(split.inverse(h, z), s)


@pytest.mark.parametrize("flow", ["glow", "realnvp"])
@pytest.mark.parametrize("coupling", ["affine", "additive"])
def test_the_whole_flow_inverts_to_1e4(flow, coupling):
    torch.manual_seed(0)
    net = Flow(Config(flow=flow, image_size=16, levels=3, depth=2, width=8, coupling=coupling))
    x = small_input(1, 16, 4)
    initialize(net, x)
    randomize(net)
    zs, logdet, log_pz = net(x)
    assert [tuple(z.shape[1:]) for z in zs] == net.z_shapes and sum(z[0].numel() for z in zs) == 256
    assert (net.inverse(zs) - x).abs().max() < 1e-4
    assert (decode(net, encode(net, x * 2 - 1)) - (x * 2 - 1)).abs().max() < 2e-4  # the harness's interface


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of fn at one input x (1, ...) by autograd, float64."""
    jac = torch.autograd.functional.jacobian(lambda v: fn(v.view_as(x)).flatten(), x.flatten())
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign != 0
    return logabsdet


@pytest.mark.parametrize("name", list(layers()))
def test_each_layers_logdet_equals_slogdet_of_its_jacobian(name):
    layer = randomize(layers()[name]).double()
    x = small_input(batch=1, dtype=torch.float64)  # 4 x 4 x 4 = 64 dimensions
    _, logdet = layer(x)
    expected = jacobian_logdet(lambda v: layer(v)[0], x)
    assert torch.allclose(logdet[0], expected, atol=1e-8), (logdet.item(), expected.item())
    if name not in ("center", "additive_channel", "additive_checkerboard"):
        assert abs(expected) > 0.1  # a volume-changing layer: the check is not 0 == 0


@pytest.mark.parametrize("flow", ["glow", "realnvp"])
def test_the_whole_flows_logdet_equals_slogdet_of_its_jacobian(flow):
    torch.manual_seed(0)
    net = Flow(Config(flow=flow, image_size=8, levels=2, depth=2, width=8))
    x = small_input(1, 8, 1)
    initialize(net, x)
    net = randomize(net).double()
    x = x.double()
    _, logdet, _ = net(x)
    expected = jacobian_logdet(lambda v: torch.cat([z.flatten(1) for z in net(v)[0]], 1), x)
    assert torch.allclose(logdet[0], expected, atol=1e-7)


def test_actnorm_data_dependent_init_gives_zero_mean_unit_variance_per_channel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 5, 5, generator=g) * torch.tensor([0.1, 2.0, 7.0]).view(1, 3, 1, 1) + \
        torch.tensor([-3.0, 0.5, 10.0]).view(1, 3, 1, 1)
    norm = ActNorm(3)
    assert not norm.initialized
    y, _ = norm(x)  # the first forward initialises from this batch
    assert norm.initialized
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    y2, _ = norm(x * 2)  # later batches do not re-initialise
    assert torch.allclose(y2.std(dim=(0, 2, 3)), 2 * torch.ones(3), atol=1e-2)


def test_actnorm_init_runs_once_through_the_flow_and_each_actnorm_sees_normalised_inputs():
    torch.manual_seed(0)
    net = Flow(Config(flow="glow", image_size=16, levels=2, depth=2, width=8))
    x = small_input(1, 16, 32)
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o[0])) for m in net.modules()
             if isinstance(m, ActNorm)]
    initialize(net, x)
    for h in hooks:
        h.remove()
    assert len(outputs) == 4
    for y in outputs:
        assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(y.shape[1]), atol=1e-4)
        assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(y.shape[1]), atol=1e-3)


def test_bits_per_dim_of_an_identity_flow_equals_the_analytic_gaussian_value():
    """depth 0 and zero-initialised priors: z = x - 1/2, a permutation of it, with z ~ N(0, I)."""
    net = Flow(Config(flow="glow", image_size=8, channels=1, levels=2, depth=0, width=4))
    D = 64
    # images of 128 dequantised with u = 0: x = 1/2 exactly, z = 0, -log p = D/2 log(2 pi)
    x = torch.full((2, 1, 8, 8), 0.5)
    expected = 8 + 0.5 * math.log2(2 * math.pi)  # (D/2 ln 2pi + D ln 256) / (D ln 2) = 9.3257...
    assert torch.allclose(bits_per_dim(-log_prob(net, x), D), torch.tensor(expected), atol=1e-5)
    # random known data: the analytic Gaussian NLL, on shared.metrics' 8-bit scale
    k = torch.randint(0, 256, (5, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = metrics.uniform_dequantize(k, 0.0, 1.0, generator=torch.Generator().manual_seed(1))
    nll = 0.5 * ((x - 0.5) ** 2).flatten(1).sum(1) + D / 2 * math.log(2 * math.pi)
    ours = bits_per_dim(-log_prob(net, x), D)
    assert torch.allclose(ours, bits_per_dim(nll, D), atol=1e-5)
    for i in range(5):
        assert ours[i].item() == pytest.approx(metrics.dequantized_bits_per_dim(nll[i], D, 1 / 256), abs=1e-5)


def test_lu_1x1_conv_stays_invertible_after_an_optimizer_step():
    torch.manual_seed(0)
    conv = InvConv1x1(6)
    before = {k: v.detach().clone() for k, v in conv.named_parameters()}
    opt = torch.optim.Adam(conv.parameters(), lr=0.3)  # a large step
    x = torch.randn(8, 6, 3, 3)
    y, logdet = conv(x)
    (-(logdet.mean()) + y.pow(2).mean() * 10).backward()
    opt.step()
    assert all(not torch.equal(before[k], v) for k, v in conv.named_parameters())  # every factor moved
    w = conv.weight().double()
    sign, logabsdet = torch.linalg.slogdet(w)
    assert sign != 0 and torch.allclose(logabsdet, conv.log_s.double().sum(), atol=1e-6)  # Eq. 11 still holds
    assert torch.allclose(conv.weight() @ torch.linalg.inv(conv.weight()), torch.eye(6), atol=1e-4)
    y, logdet = conv(x)
    assert (conv.inverse(y) - x).abs().max() < 1e-4
    assert torch.allclose(logdet, (conv.log_s.sum() * 9).expand(8))


@pytest.mark.parametrize("flow", ["glow", "realnvp"])
def test_temperature_scales_the_latents_and_zero_gives_the_prior_mean(flow):
    torch.manual_seed(0)
    net = Flow(Config(flow=flow, image_size=8, levels=2, depth=1, width=8, preprocess="center"))  # logit: a
    initialize(net, small_input(1, 8, 16))  # randomised flow's samples leave (0, 1), where the logit is undefined
    randomize(net)
    a = sample(net, 3, 0.0, generator=torch.Generator().manual_seed(0))
    b = sample(net, 3, 0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3, 1, 8, 8)  # T = 0: no noise reaches the image
    # The top latent is drawn first, as T * eps: with the same generator, T = 0.3 gives 0.3 times T = 1's.
    z_lo = net(net.inverse(n=50, temperature=0.3, generator=torch.Generator().manual_seed(0)))[0][-1]
    z_hi = net(net.inverse(n=50, temperature=1.0, generator=torch.Generator().manual_seed(0)))[0][-1]
    assert torch.allclose(z_lo, 0.3 * z_hi, atol=1e-3) and 0.8 < z_hi.std() < 1.2


def test_config_refuses_what_the_flow_cannot_build():
    with pytest.raises(ValueError, match="divisible"):
        Config(image_size=20, levels=3)
    with pytest.raises(ValueError, match="--flow"):
        Config(flow="maf")
    with pytest.raises(ValueError, match="--coupling"):
        Config(coupling="spline")
    assert Config(flow="realnvp").preprocess == "logit" and Config(flow="glow").learned_prior == "yes"
    assert Config(flow="realnvp", learned_prior="yes").learned_prior == "yes"
