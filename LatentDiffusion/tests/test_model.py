"""The math of the two stages: the latent scale, the autoencoder's shapes and range, its loss terms, class
conditioning with classifier-free guidance, and the latent sampler's decoding."""
import math

import pytest
import torch

from model import (Config, decode, drop_labels, encode, guided_output, kl_divergence, latent_scale, reconstruct,
                   reconstruction_loss, sample, sample_latents)
from networks import Autoencoder, UNet
from shared.data import load_dataset, to_float

SMALL = dict(image_size=16, ae_width=8, width=16, mults="1,2", attn="", timesteps=20)


@pytest.fixture(scope="module")
def mnist16():
    return to_float(load_dataset("mnist", None, 16, "train").images[::25][:200])  # (200, 1, 16, 16), all classes


def test_latent_scale_gives_unit_variance_on_a_batch_and_close_to_it_on_another(mnist16):
    torch.manual_seed(0)
    ae = Autoencoder(Config(**SMALL)).eval()
    with torch.no_grad():
        ae.encoder.conv_out.weight.mul_(7.0)  # latents far from unit variance, as after training with w_KL = 1e-6
    gen = torch.Generator().manual_seed(0)
    z = encode(ae, mnist16[:100], gen)  # (100, 4, 4, 4) draws from q(z|x)
    assert abs(z.std().item() - 1) > 0.5  # the test is not trivially true
    s = latent_scale(z)
    assert (s * z).std().item() == pytest.approx(1.0, abs=1e-5)
    assert (s * z).flatten().var().item() == pytest.approx(1.0, abs=1e-4)  # one scalar for all channels
    held = s * encode(ae, mnist16[100:], gen)  # other images: the data's scale, not the batch's
    assert 0.8 < held.std().item() < 1.25
    assert latent_scale(3 * z).item() == pytest.approx(s.item() / 3, rel=1e-5)


@pytest.mark.parametrize("factor,channels,latent", [(1, 1, 2), (2, 3, 3), (4, 1, 4), (8, 3, 8)])
def test_encode_then_decode_keeps_shapes_and_the_image_range(factor, channels, latent):
    torch.manual_seed(0)
    cfg = Config(**{**SMALL, "factor": factor, "channels": channels, "latent_channels": latent, "mults": "1"})
    ae = Autoencoder(cfg).eval()
    with torch.no_grad():
        ae.decoder.conv_out.weight.mul_(50.0)  # a raw output well outside [-1, 1]
    x = torch.rand(3, channels, 16, 16) * 2 - 1
    mean, logvar = ae.encoder(x)
    assert mean.shape == logvar.shape == (3, latent, 16 // factor, 16 // factor) == (3, latent, cfg.latent_size,
                                                                                       cfg.latent_size)
    raw = ae.decoder(mean)
    assert raw.shape == x.shape and raw.abs().max() > 1  # the decoder itself is unbounded
    x_hat = reconstruct(ae, x)
    assert x_hat.shape == x.shape and x_hat.min() >= -1 and x_hat.max() <= 1
    assert torch.equal(x_hat, raw.clamp(-1, 1))  # reconstruct = D(mean), clamped
    assert cfg.ae_channels == [8 * min(2 ** i, 4) for i in range(int(math.log2(factor)) + 1)]


def test_the_autoencoder_learns_to_reconstruct_mnist_in_a_few_steps(mnist16):
    torch.manual_seed(0)
    ae = Autoencoder(Config(**SMALL))
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    x = mnist16[:32]
    baseline = (x - x.mean(0)).pow(2).mean()  # the MSE of the mean image
    for _ in range(60):
        x_hat, mean, logvar = ae(x)
        loss = reconstruction_loss(x_hat, x).mean() + 1e-6 * kl_divergence(mean, logvar).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    mse = (reconstruct(ae.eval(), x) - x).pow(2).mean()
    assert mse < baseline / 2


def test_kl_and_reconstruction_terms_are_the_per_image_sums_of_the_paper():
    torch.manual_seed(0)
    mean, logvar = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                                 torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(kl_divergence(mean, logvar), expected, atol=1e-5)
    assert torch.allclose(kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))
    x, x_hat = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    assert torch.allclose(reconstruction_loss(x_hat, x, "l1"), (x - x_hat).abs().flatten(1).sum(1))
    assert torch.allclose(reconstruction_loss(x_hat, x, "l2"), (x - x_hat).pow(2).flatten(1).sum(1))


def test_posterior_draws_have_the_encoders_mean_and_variance():
    torch.manual_seed(0)
    ae = Autoencoder(Config(**SMALL)).eval()
    x = torch.rand(1, 1, 16, 16).expand(4000, -1, -1, -1) * 2 - 1
    mean, logvar = ae.encoder(x[:1])
    z = encode(ae, x, torch.Generator().manual_seed(1))
    assert torch.allclose(z.mean(0), mean[0], atol=0.1)
    assert torch.allclose(z.var(0), logvar[0].exp(), rtol=0.15)
    assert torch.equal(encode(ae, x[:2]), ae.encoder(x[:2])[0])  # no generator: the mean


def test_classifier_free_guidance_interpolates_conditional_and_unconditional_outputs():
    torch.manual_seed(0)
    net = UNet(Config(**SMALL, num_classes=10)).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)  # zero-initialised output layers would make every output 0
    x, t, y = torch.randn(3, 4, 4, 4), torch.tensor([3, 10, 17]), torch.tensor([1, 5, 9])
    with torch.no_grad():
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, 10))
        assert not torch.allclose(cond, uncond)  # the label matters
        assert torch.allclose(net(x, t, None), uncond)  # no label = the null class
        assert torch.allclose(guided_output(net, x, t, y, 1.0), cond, atol=1e-5)
        assert torch.allclose(guided_output(net, x, t, y, 0.0), uncond, atol=1e-5)
        assert torch.allclose(guided_output(net, x, t, y, 3.0), uncond + 3 * (cond - uncond), atol=1e-4)


def test_drop_labels_uses_the_null_class_at_rate_p_uncond():
    torch.manual_seed(0)
    y = torch.randint(0, 10, (20000,))
    dropped = drop_labels(y, 0.1, 10)
    null = dropped == 10
    assert abs(null.float().mean().item() - 0.1) < 0.01
    assert torch.equal(dropped[~null], y[~null])
    assert torch.equal(drop_labels(y, 0.0, 10), y)


def test_sample_decodes_the_latents_divided_by_the_scale_factor():
    torch.manual_seed(0)
    cfg = Config(**SMALL)
    ae, net = Autoencoder(cfg).eval(), UNet(cfg).eval()
    net.scale_factor.fill_(0.25)
    x = sample(ae, net, 3, steps=4, generator=torch.Generator().manual_seed(5))
    z, _ = sample_latents(net, 3, steps=4, generator=torch.Generator().manual_seed(5))
    assert x.shape == (3, 1, 16, 16) and z.shape == (3, 4, 4, 4)
    assert torch.allclose(x, decode(ae, z / 0.25))
    assert not torch.allclose(x, decode(ae, z))


@pytest.mark.parametrize("change,needle", [({"factor": 3}, "power of 2"), ({"factor": 32}, "--factor"),
                                           ({"mults": "1,2,2,2"}, "--mults"), ({"reconstruction": "lpips"},
                                                                               "--reconstruction")])
def test_config_refuses_shapes_that_do_not_fit(change, needle):
    with pytest.raises(ValueError, match=needle):
        Config(**{**SMALL, **change})


def test_the_time_embedding_reaches_the_output_of_a_narrow_u_net():
    """With 16 channels norm() has one channel per group: a shift before it would be cancelled (DDPM's block)."""
    torch.manual_seed(0)
    net = UNet(Config(**SMALL)).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 4, 4, 4).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = net(x, torch.tensor([1, 19]))
    assert (out[0] - out[1]).abs().max() > 1e-3
