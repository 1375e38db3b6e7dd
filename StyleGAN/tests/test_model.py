"""The paper's math: demodulation, the grouped convolution, equalised learning rate, truncation, style mixing,
minibatch stddev, FIR upsampling, R1 / path length, the lazy-regularisation Adam and the EMA half-life."""
import math

import pytest
import torch
import torch.nn.functional as F

import train
from layers import EqualConv2d, EqualLinear, ModulatedConv2d, blur, fir_kernel, upsample2d
from model import (Config, Discriminator, Generator, ema_beta, minibatch_stddev, mixing_cutoff,
                   path_length_penalty, r1_penalty, sample, style_mixing_grid, truncate)

TINY = Config(image_size=16, channels=1, z_dim=8, w_dim=8, g_width=8, d_width=8)


def tiny_generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    G = Generator(TINY)
    with torch.no_grad():  # trained-looking noise strengths, so noise matters where it should
        for layer in G.layers:
            layer.noise_strength.fill_(0.5)
    return G


# ---------------------------------------------------------------- modulation / demodulation (Eq. 1-3)

def test_demodulated_weights_have_unit_norm_per_output_channel_and_modulated_ones_do_not():
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, w_dim=4)
    styles = torch.rand(3, 6) * 3 + 0.1  # (B, C_in)
    norms = conv.modulated_weight(styles).square().sum(dim=(2, 3, 4)).sqrt()  # (B, C_out)
    assert norms.shape == (3, 5)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    conv.demodulate = False
    raw = conv.modulated_weight(styles).square().sum(dim=(2, 3, 4)).sqrt()
    assert (raw - 1).abs().max() > 0.1  # Eq. 1 alone does not normalise
    # Eq. 1: w' = s_i w_ijk (times the equalised-lr constant)
    expected = conv.weight * conv.weight_gain * styles[1][None, :, None, None]
    assert torch.allclose(conv.modulated_weight(styles)[1], expected, atol=1e-6)


@pytest.mark.parametrize("up", [False, True])
def test_the_grouped_convolution_equals_one_convolution_per_sample_with_its_own_weights(up):
    torch.manual_seed(1)
    conv = ModulatedConv2d(4, 3, 3, w_dim=5, up=up)
    x, w = torch.randn(3, 4, 6, 6), torch.randn(3, 5)
    out = conv(x, w)
    weights = conv.modulated_weight(conv.affine(w))  # (B, C_out, C_in, k, k)
    for b in range(3):
        if up:  # transposed conv, stride 2, then the [1,3,3,1] blur with gain 4
            ref = blur(F.conv_transpose2d(x[b:b + 1], weights[b].transpose(0, 1), stride=2), fir_kernel(), 1, 4)
        else:
            ref = F.conv2d(x[b:b + 1], weights[b], padding=1)
        assert torch.allclose(out[b:b + 1], ref, atol=1e-5), b
    assert out.shape == (3, 3, 12, 12) if up else (3, 3, 6, 6)


def test_demodulation_makes_the_output_scale_independent_of_the_style_scale():
    torch.manual_seed(2)
    conv = ModulatedConv2d(4, 3, 3, w_dim=5)
    x, s = torch.randn(2, 4, 5, 5), torch.rand(2, 4) + 0.5
    y = F.conv2d(x[:1], conv.modulated_weight(s)[0], padding=1)
    y10 = F.conv2d(x[:1], conv.modulated_weight(10 * s)[0], padding=1)
    assert torch.allclose(y, y10, atol=1e-4)  # Eq. 3 divides the style's scale out again


# ---------------------------------------------------------------- equalised learning rate

def test_equalised_lr_keeps_parameters_at_unit_scale_and_applies_the_constant_in_the_forward():
    torch.manual_seed(3)
    layer = EqualLinear(256, 128, bias_init=0.5)
    assert 0.95 < layer.weight.std().item() < 1.05  # stored theta ~ N(0, 1), not N(0, 1/fan_in)
    assert layer.weight_gain == pytest.approx(1 / 16)
    x = torch.randn(4, 256)
    y = layer(x)
    assert torch.allclose(y, F.linear(x, layer.weight / 16, layer.bias), atol=1e-5)
    layer.weight_gain *= 2  # the constant is used at run time: changing it changes the forward
    assert torch.allclose(layer(x) - 0.5, 2 * (y - 0.5), atol=1e-4)

    conv = EqualConv2d(32, 16, 3)
    assert 0.95 < conv.weight.std().item() < 1.05 and conv.weight_gain == pytest.approx(1 / math.sqrt(32 * 9))
    x = torch.randn(2, 32, 6, 6)
    y = conv(x)
    conv.weight_gain *= 3
    assert torch.allclose(conv(x), 3 * y, atol=1e-4)  # bias starts at 0

    modconv = ModulatedConv2d(32, 16, 3, w_dim=8, demodulate=False)
    assert 0.95 < modconv.weight.std().item() < 1.05


def test_the_mapping_network_learns_at_one_hundredth_of_the_rate():
    torch.manual_seed(4)
    G = Generator(Config(image_size=8, z_dim=256, w_dim=256, g_width=4, d_width=4))
    fc = G.mapping.layers[0]
    assert len(G.mapping.layers) == 8
    assert 95 < fc.weight.std().item() < 105  # theta ~ N(0, 1 / lr_mul^2)
    assert fc.weight_gain == pytest.approx(0.01 / 16)  # effective weights ~ N(0, 1 / fan_in)
    assert 0.95 < (fc.weight * fc.weight_gain * 16).std().item() < 1.05
    # one Adam step moves theta by ~lr, i.e. the effective weight by lr * 0.01 / sqrt(fan_in): 100x slower
    # relative to its scale than an lr_mul = 1 layer
    opt = torch.optim.Adam([fc.weight], lr=1e-2)
    before = fc.weight.detach().clone()
    fc(torch.randn(8, 256)).square().sum().backward()
    opt.step()
    relative = ((fc.weight - before).abs().mean() / before.abs().mean()).item()
    assert relative < 2e-4


# ---------------------------------------------------------------- truncation and style mixing

def test_truncation_at_psi_0_gives_the_mean_w_image_for_every_z():
    G = tiny_generator()
    G.train()
    for _ in range(5):
        G.map(torch.randn(16, 8))  # training-mode forwards track w_avg
    assert G.w_avg.abs().sum() > 0
    G.eval()
    images = sample(G, 6, rng=torch.Generator().manual_seed(0), psi=0.0, noise_mode="const")
    mean_image = G.synthesis(G.w_avg[None, None].expand(1, TINY.num_ws, -1), "const").clamp(-1, 1)
    assert torch.allclose(images, mean_image.expand_as(images), atol=1e-5)
    free = sample(G, 6, rng=torch.Generator().manual_seed(0), psi=1.0, noise_mode="const")
    assert (free - free[:1]).abs().max() > 1e-3  # untruncated, z matters
    half = truncate(torch.ones(2, 3, 8), torch.zeros(8), 0.5)
    assert torch.allclose(half, torch.full_like(half, 0.5))


def test_w_avg_is_tracked_in_training_mode_only():
    G = tiny_generator()
    G.eval()
    G.map(torch.randn(4, 8))
    assert G.w_avg.abs().sum() == 0
    G.train()
    z = torch.randn(4, 8)
    w = G.mapping(z)
    G.map(z)
    assert torch.allclose(G.w_avg, (1 - TINY.w_avg_beta) * w.mean(0), atol=1e-6)


def test_style_mixing_switches_latents_at_the_chosen_layer():
    G = tiny_generator().eval()
    z, z_mix = torch.randn(3, 8), torch.randn(3, 8)
    w, w_mix = G.mapping(z), G.mapping(z_mix)
    for cutoff in range(1, TINY.num_ws):
        ws = G.map(z, z_mix, cutoff)
        assert torch.allclose(ws[:, :cutoff], w[:, None].expand(-1, cutoff, -1))
        assert torch.allclose(ws[:, cutoff:], w_mix[:, None].expand(-1, TINY.num_ws - cutoff, -1))
    assert torch.allclose(G.map(z, z_mix, TINY.num_ws), G.map(z))  # cutoff = num_ws: no mixing
    # each layer reads its own ws entry: the image changes when the entry of any one layer changes
    ws = G.map(z)
    base = G.synthesis(ws, "const")
    for i in range(TINY.num_ws):
        other = ws.clone()
        other[:, i] = w_mix
        assert (G.synthesis(other, "const") - base).abs().max() > 1e-4, i


def test_style_mixing_grid_rows_take_coarse_styles_and_columns_fine_styles():
    G = tiny_generator().eval()
    z_rows, z_cols, cutoff = torch.randn(2, 8), torch.randn(3, 8), 2
    grid = style_mixing_grid(G, z_rows, z_cols, cutoff)
    assert grid.shape == ((1 + 2) * (1 + 3), 1, 16, 16)
    w_r, w_c = G.map(z_rows), G.map(z_cols)
    ws = torch.cat([w_r[1:2, :cutoff], w_c[2:3, cutoff:]], dim=1)  # row 1, column 2
    assert torch.allclose(grid[(1 + 1) * 4 + 1 + 2], G.synthesis(ws, "const")[0].clamp(-1, 1), atol=1e-5)
    assert torch.allclose(grid[1 + 2], G.synthesis(w_c[2:3], "const")[0].clamp(-1, 1), atol=1e-5)  # column source
    assert torch.allclose(grid[(1 + 1) * 4], G.synthesis(w_r[1:2], "const")[0].clamp(-1, 1), atol=1e-5)  # row source


def test_mixing_cutoff_follows_the_mixing_probability():
    gen = torch.Generator().manual_seed(0)
    assert {mixing_cutoff(8, 0.0, gen) for _ in range(50)} == {8}
    always = [mixing_cutoff(8, 1.0, gen) for _ in range(300)]
    assert set(always) == set(range(1, 8))
    share = sum(mixing_cutoff(8, 0.9, gen) < 8 for _ in range(2000)) / 2000
    assert 0.87 < share < 0.93


# ---------------------------------------------------------------- generator and discriminator structure

def test_noise_inputs_have_a_learned_strength_that_starts_at_zero():
    torch.manual_seed(5)
    G = Generator(TINY).eval()
    ws = G.map(torch.randn(2, 8))
    assert all(layer.noise_strength.item() == 0 for layer in G.layers)
    assert torch.equal(G.synthesis(ws, "random"), G.synthesis(ws, "none"))  # strength 0: noise has no effect
    G = tiny_generator()
    assert not torch.allclose(G.synthesis(ws, "random"), G.synthesis(ws, "none"))
    a = G.synthesis(ws, "random", torch.Generator().manual_seed(1))
    assert torch.equal(a, G.synthesis(ws, "random", torch.Generator().manual_seed(1)))  # rng -> reproducible


def test_the_image_is_the_sum_of_upsampled_torgb_outputs():
    G = tiny_generator().eval()
    ws = G.map(torch.randn(2, 8))
    with torch.no_grad():
        G.to_rgbs[-1].conv.weight.zero_()
        G.to_rgbs[-1].bias.fill_(0.25)
    low = G.synthesis(ws, "const")  # the last tRGB now adds a constant 0.25 to the upsampled 8x8 skip image
    with torch.no_grad():
        G.to_rgbs[-1].bias.zero_()
    assert torch.allclose(low - G.synthesis(ws, "const"), torch.full_like(low, 0.25), atol=1e-5)
    assert len(G.to_rgbs) == len(TINY.resolutions) and G.const.shape == (1, 8, 4, 4)


def test_upsample2d_is_zero_insertion_then_the_fir_filter():
    x = torch.randn(2, 3, 5, 5)
    up = torch.zeros(2, 3, 10, 10)
    up[:, :, ::2, ::2] = x
    ref = blur(F.pad(up, (2, 1, 2, 1)), fir_kernel(), pad=0, gain=4)  # upfirdn2d(up=2, pad=(2, 1))
    assert torch.allclose(upsample2d(x, fir_kernel()), ref, atol=1e-6)
    const = upsample2d(torch.ones(1, 1, 6, 6), fir_kernel())
    assert torch.allclose(const[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8))  # gain 4 keeps the level


def test_minibatch_stddev_appends_each_groups_mean_feature_std():
    torch.manual_seed(6)
    x = torch.randn(8, 3, 4, 4)
    y = minibatch_stddev(x, group=4)
    assert y.shape == (8, 4, 4, 4) and torch.equal(y[:, :3], x)
    for m in range(2):  # groups are samples {m, m + 2, m + 4, m + 6}
        members = x[m::2]
        expected = members.std(0, unbiased=False).mean()
        assert torch.allclose(y[m::2, 3], expected.expand(4, 4, 4), atol=1e-5)
    assert not torch.allclose(y[0, 3], y[1, 3])


def test_discriminator_is_residual_to_4x4_and_returns_one_logit_per_image():
    torch.manual_seed(7)
    D = Discriminator(TINY)
    assert len(D.blocks) == 2  # 16 -> 8 -> 4
    x = torch.randn(8, 1, 16, 16)
    assert D(x).shape == (8,)
    block, h = D.blocks[0], D.from_rgb(x)
    assert torch.allclose(block(h), (block.skip(h) + block.conv1(block.conv0(h))) / math.sqrt(2), atol=1e-6)


# ---------------------------------------------------------------- regularisers, optimizers, EMA

def test_r1_is_gamma_over_2_times_the_squared_input_gradient():
    a = torch.randn(1, 2, 3, 3)
    x = torch.randn(4, 2, 3, 3, requires_grad=True)
    logits = (x * a).flatten(1).sum(1)  # D(x) = <a, x>: grad_x D = a for every x
    assert r1_penalty(logits, x, gamma=10.0).item() == pytest.approx(5 * a.square().sum().item(), rel=1e-5)


def test_path_length_penalty_measures_the_jacobian_norm_and_tracks_its_mean():
    ws = torch.randn(3, 2, 4, requires_grad=True)
    images = (ws.sum(1) * 2)[:, None, :, None].expand(3, 1, 4, 4)  # each w entry moves 4 pixels by 2
    pl_mean = torch.zeros(())
    torch.manual_seed(8)
    penalty, lengths = path_length_penalty(images, ws, pl_mean, decay=0.5)
    torch.manual_seed(8)
    y = torch.randn(3, 1, 4, 4) / 4
    jty = (2 * y[:, 0].sum(2))[:, None, :].expand(3, 2, 4)  # J^T y for every layer's w
    expected = jty.square().sum(2).mean(1).sqrt()
    assert torch.allclose(lengths, expected, atol=1e-5)
    assert pl_mean.item() == pytest.approx(0.5 * expected.mean().item(), rel=1e-5)
    assert penalty.item() == pytest.approx((expected - pl_mean).square().mean().item(), rel=1e-4)


def test_lazy_regularisation_scales_adams_lr_and_betas_by_k_over_k_plus_1():
    cfg = train.TrainConfig(lr=2e-3, beta1=0.0, beta2=0.99)
    opt = train.lazy_adam([torch.nn.Parameter(torch.zeros(1))], cfg, every=16, on=True)
    c = 16 / 17
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * c)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.0, 0.99 ** c))
    plain = train.lazy_adam([torch.nn.Parameter(torch.zeros(1))], cfg, every=16, on=False)
    assert plain.param_groups[0]["lr"] == 2e-3 and plain.param_groups[0]["betas"] == (0.0, 0.99)


def test_ema_half_life_in_images_with_rampup():
    beta = ema_beta(batch=32, images_seen=10 ** 7, half_life_kimg=10, rampup=0.05)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)  # after 10k images the old average weighs one half
    early = ema_beta(batch=32, images_seen=3200, half_life_kimg=10, rampup=0.05)  # half-life 160 images
    assert early ** (160 / 32) == pytest.approx(0.5) and early < beta
