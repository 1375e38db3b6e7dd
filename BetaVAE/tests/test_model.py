"""The paper's math: the beta = 1 loss is the VAE's negative ELBO, the capacity schedule, the KL, traversals."""
import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from model import (BetaVAE, Config, bernoulli_nll, beta_vae_loss, capacity_loss, capacity_schedule, dims_by_kl,
                   kl_per_dim, reparameterize, traversal_codes, traverse)


def tiny_vae(image_size: int = 16, channels: int = 3, z_dim: int = 4) -> BetaVAE:
    torch.manual_seed(0)
    return BetaVAE(Config(image_size=image_size, channels=channels, z_dim=z_dim, width=8, hidden=16))


def independent_negative_elbo(logits, mu, logvar, x):
    """-ELBO per batch mean, written with torch.distributions only: -log p(x|z) - [-KL(q || p)]."""
    log_px = Bernoulli(logits=logits, validate_args=False).log_prob((x + 1) / 2).flatten(1).sum(1)
    q, p = Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    return (-log_px + kl_divergence(q, p).sum(1)).mean()


@pytest.mark.parametrize("channels", [1, 3])
def test_beta_1_and_capacity_0_gamma_1_equal_the_vae_negative_elbo(channels):
    vae = tiny_vae(channels=channels)
    x = torch.rand(5, channels, 16, 16) * 2 - 1  # grey levels, not only 0/1
    logits, mu, logvar = vae(x)
    recon, kl = bernoulli_nll(logits, x), kl_per_dim(mu, logvar).sum(1)
    expected = independent_negative_elbo(logits, mu, logvar, x)
    assert torch.allclose(beta_vae_loss(recon, kl, beta=1.0), expected, rtol=1e-5)
    assert torch.allclose(capacity_loss(recon, kl, gamma=1.0, capacity=0.0), expected, rtol=1e-5)
    # beta weighs the KL only: beta = 4 adds exactly 3 more KLs
    assert torch.allclose(beta_vae_loss(recon, kl, beta=4.0), expected + 3 * kl.mean(), rtol=1e-5)
    assert kl.mean() > 0


def test_kl_per_dim_matches_torch_distributions_and_is_zero_at_the_prior():
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    q, p = Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)
    assert torch.allclose(kl_per_dim(mu, logvar), kl_divergence(q, p), atol=1e-6)
    assert torch.equal(kl_per_dim(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2, 3))


def test_capacity_schedule_is_linear_then_clipped_at_c_max():
    c_max, n = 25.0, 1000
    assert capacity_schedule(0, c_max, n) == 0.0
    values = [capacity_schedule(s, c_max, n) for s in range(0, n + 1, 50)]
    slopes = {round(b - a, 9) for a, b in zip(values, values[1:])}
    assert slopes == {round(c_max * 50 / n, 9)}  # equal steps: linear
    assert capacity_schedule(n // 4, c_max, n) == pytest.approx(6.25)
    assert capacity_schedule(n, c_max, n) == c_max
    assert capacity_schedule(n + 1, c_max, n) == capacity_schedule(10 * n, c_max, n) == c_max
    assert capacity_schedule(5, c_max, 0) == c_max  # no ramp: C_max from the start


def test_capacity_loss_pulls_the_kl_towards_c_from_both_sides():
    recon = torch.zeros(4)
    for kl_value, sign in ((3.0, -1.0), (30.0, 1.0)):  # below C: the loss falls as KL rises; above C: it rises
        kl = torch.full((4,), kl_value, requires_grad=True)
        capacity_loss(recon, kl, gamma=100.0, capacity=10.0).backward()
        assert torch.allclose(kl.grad, torch.full((4,), sign * 100.0 / 4))


def test_reparameterised_codes_have_the_posterior_mean_and_variance():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[1.5, -2.0]]), torch.tensor([[0.0, math.log(0.25)]])
    z = reparameterize(mu.expand(200_000, 2), logvar.expand(200_000, 2))
    assert torch.allclose(z.mean(0), mu[0], atol=0.01)
    assert torch.allclose(z.var(0), logvar[0].exp(), rtol=0.02)


def test_a_traversal_row_changes_exactly_one_latent_and_keeps_the_rest_at_the_base_code():
    z_base = torch.randn(6)
    dims, values = [4, 0, 2], torch.linspace(-3, 3, 7)
    codes = traversal_codes(z_base, dims, values).view(3, 7, 6)
    for r, d in enumerate(dims):
        others = [j for j in range(6) if j != d]
        assert torch.equal(codes[r][:, others], z_base[others].expand(7, 5))  # the rest: the base code
        assert torch.equal(codes[r][:, d], values)  # this latent: the values, in order
        assert (codes[r] != z_base).any(0).nonzero().flatten().tolist() == [d]  # only one latent differs


def test_traverse_decodes_the_rows_in_kl_order_from_the_posterior_mean():
    vae = tiny_vae(z_dim=4).eval()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    images, order, kl = traverse(vae, x, steps=5, limit=3.0)
    assert images.shape == (3, 4, 5, 3, 16, 16)
    assert sorted(order) == [0, 1, 2, 3] and all(kl[a] >= kl[b] for a, b in zip(order, order[1:]))
    mu, _ = vae.encoder(x)
    z = mu[1].clone()
    z[order[2]] = 1.5  # row 2, column 3 of linspace(-3, 3, 5)
    expected = torch.sigmoid(vae.decoder(z[None]))[0] * 2 - 1
    assert torch.allclose(images[1, 2, 3], expected, atol=1e-6)


def test_dims_by_kl_orders_by_mean_kl_largest_first():
    mu = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, -1.0]])  # KL: 0, 4.5, 0.5
    order, kl = dims_by_kl(mu, torch.zeros(2, 3))
    assert order == [1, 2, 0] and torch.allclose(kl, torch.tensor([0.0, 4.5, 0.5]))


@pytest.mark.parametrize("image_size,convs", [(32, 3), (64, 4)])
def test_burgess_network_shapes_4x4x32_bottleneck_at_any_size(image_size, convs):
    cfg = Config(image_size=image_size)
    vae = BetaVAE(cfg)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in vae.encoder.modules()) == convs  # 64x64: the paper's 4
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in vae.decoder.modules()) == convs
    x = torch.zeros(2, 3, image_size, image_size)
    assert vae.encoder.convs(x).shape == (2, 32, 4, 4)
    logits, mu, logvar = vae(x)
    assert logits.shape == x.shape and mu.shape == logvar.shape == (2, 10)


def test_bad_image_size_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        Config(image_size=24)
