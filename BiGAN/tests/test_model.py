"""BiGAN networks and objective: shapes, the loss signs and label swap, gradients through the joint D, Theorem 2."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import (Config, Discriminator, Encoder, Generator, discriminator_loss, encode, encoder_generator_loss,
                   interpolate, reconstruct, reparameterise, sample, slerp, value)


def tiny(**overrides) -> Config:
    base = dict(image_size=16, channels=1, z_dim=8, g_width=8, e_width=8, d_width=8, d_joint=16)
    return Config(**{**base, **overrides})


@pytest.mark.parametrize("size,channels", [(16, 1), (32, 3), (64, 3)])
@pytest.mark.parametrize("encoder", ["deterministic", "gaussian"])
@pytest.mark.parametrize("d_norm", ["spectral", "batch", "none"])
def test_shapes_and_range(size, channels, encoder, d_norm):
    torch.manual_seed(0)
    cfg = tiny(image_size=size, channels=channels, encoder=encoder, d_norm=d_norm)
    G, E, D = Generator(cfg), Encoder(cfg), Discriminator(cfg)
    x = G(torch.randn(5, 8))
    assert x.shape == (5, channels, size, size) and not torch.equal(x[0], x[1])  # z reaches the image
    z = E(x)
    assert z.shape == (5, 8) and not torch.equal(z[0], z[1])
    assert D(x, z).shape == (5,)


def test_generator_output_is_squashed_into_the_image_range():
    """tanh bounds G's output: with its last layer's weights scaled up 1000x the pre-activations are huge, yet
    every pixel stays in [-1, 1] and reaches the bounds (a linear output layer would give values near 1000)."""
    torch.manual_seed(0)
    G = Generator(tiny())
    with torch.no_grad():
        G.to_image.weight.mul_(1000)
    x = G(torch.randn(4, 8))
    assert x.abs().max() <= 1.0 and x.abs().max() > 0.99


@pytest.mark.parametrize("overrides,needle", [(dict(image_size=24), "power of two"), (dict(image_size=8), "power of two"),
                                              (dict(encoder="vae"), "--encoder"), (dict(d_norm="layer"), "--d-norm"),
                                              (dict(dropout=1.0), "--dropout")])
def test_rejects_configs_it_cannot_build(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        Config(**overrides)


def test_discriminator_loss_labels_real_pairs_1_and_fake_pairs_0():
    torch.manual_seed(0)
    real, fake = torch.randn(64) * 3, torch.randn(64) * 3  # logits of (x, E(x)) and of (G(z), z)
    expected = (F.binary_cross_entropy_with_logits(real, torch.ones(64))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros(64)))
    assert torch.allclose(discriminator_loss(real, fake), expected, atol=1e-5)
    assert torch.allclose(discriminator_loss(real, fake), -value(real, fake))  # D ascends V (Eq. 3)
    assert discriminator_loss(torch.zeros(8), torch.zeros(8)).item() == pytest.approx(2 * math.log(2), abs=1e-6)
    # right and confident ~ 0; swapping the pairs' roles is heavily penalised; stable at extreme logits
    assert discriminator_loss(torch.full((4,), 50.0), torch.full((4,), -50.0)).item() < 1e-6
    assert discriminator_loss(torch.full((4,), -200.0), torch.full((4,), 200.0)).item() == pytest.approx(400, rel=1e-4)


def test_encoder_generator_loss_swaps_the_labels_and_is_non_saturating():
    torch.manual_seed(0)
    real, fake = torch.randn(64) * 3, torch.randn(64) * 3
    swapped = (F.binary_cross_entropy_with_logits(real, torch.zeros(64))
               + F.binary_cross_entropy_with_logits(fake, torch.ones(64)))
    assert torch.allclose(encoder_generator_loss(real, fake), swapped, atol=1e-5)
    real = torch.tensor([10.0, 0.0, -10.0], requires_grad=True)
    fake = torch.tensor([-10.0, 0.0, 10.0], requires_grad=True)
    encoder_generator_loss(real, fake).backward()
    g_real, g_fake = real.grad * 3, fake.grad * 3  # undo the means
    assert (g_real > 0).all() and (g_fake < 0).all()  # descending makes real pairs look fake, fake look real
    # where D is confidently right the gradient is ~1 in size, not ~0 as for the saturating -V
    assert g_real[0].item() == pytest.approx(1.0, abs=1e-4) and g_fake[0].item() == pytest.approx(-1.0, abs=1e-4)


def test_discriminator_sees_x_and_z_jointly():
    torch.manual_seed(0)
    for d_norm in ("spectral", "batch", "none"):
        D = Discriminator(tiny(d_norm=d_norm)).eval()  # no dropout: differences come from the inputs alone
        for p in D.parameters():  # weights of order 1: the test is about the wiring, not the N(0, 0.02) init
            nn.init.normal_(p, std=0.5)
        x, z = torch.rand(6, 1, 16, 16) * 2 - 1, torch.randn(6, 8)
        base = D(x, z)
        assert (D(x, torch.randn(6, 8)) - base).abs().min() > 1e-6  # the logit depends on z ...
        assert (D(torch.rand(6, 1, 16, 16), z) - base).abs().min() > 1e-6  # ... and on x
        # ... and not only additively (f(x) + g(z) could never tell which z belongs to which x):
        x1, x2, z1, z2 = x[:1], x[1:2], z[:1], z[1:2]
        interaction = D(x1, z1) + D(x2, z2) - D(x1, z2) - D(x2, z1)
        assert interaction.abs().item() > 1e-6


@pytest.mark.parametrize("encoder", ["deterministic", "gaussian"])
def test_encoder_and_generator_both_get_gradients_only_through_the_joint_d(encoder):
    torch.manual_seed(0)
    cfg = tiny(encoder=encoder)
    G, E, D = Generator(cfg), Encoder(cfg), Discriminator(cfg)
    x, z = torch.rand(8, 1, 16, 16) * 2 - 1, torch.randn(8, 8)
    x_fake, z_real = G(z), E(x)
    # D step: E(x) and G(z) detached, so neither E nor G receives a gradient
    discriminator_loss(D(x, z_real.detach()), D(x_fake.detach(), z)).backward()
    assert all(p.grad is None for p in [*E.parameters(), *G.parameters()])
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())
    # E/G step: E through the z slot of the real pair, G through the x slot of the fake pair
    D.zero_grad()
    real_logits = D(x, z_real)
    grad_e = torch.autograd.grad(encoder_generator_loss(real_logits, D(x_fake.detach(), z)), list(E.parameters()))
    grad_g = torch.autograd.grad(encoder_generator_loss(D(x, z_real.detach()), D(x_fake, z)), list(G.parameters()))
    for grads in (grad_e, grad_g):
        assert all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # the joint step reaches both at once
    encoder_generator_loss(D(x, E(x)), D(G(z), z)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*E.to_code.parameters(), *G.to_image.parameters()])


def test_one_step_of_each_player_moves_the_game_the_right_way():
    torch.manual_seed(0)
    cfg = tiny(dropout=0.0)
    G, E, D = Generator(cfg), Encoder(cfg), Discriminator(cfg)
    x, z = torch.rand(32, 1, 16, 16) * 2 - 1, torch.randn(32, 8)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_eg = torch.optim.Adam([*E.parameters(), *G.parameters()], lr=1e-3, betas=(0.5, 0.999))
    d_loss = lambda: discriminator_loss(D(x, E(x).detach()), D(G(z).detach(), z))
    before = d_loss().item()
    for _ in range(3):
        loss = d_loss()
        opt_d.zero_grad(); loss.backward(); opt_d.step()
    assert d_loss().item() < before
    D.eval()  # freeze D (spectral-norm power iteration): E and G must improve against this D
    eg_loss = lambda: encoder_generator_loss(D(x, E(x)), D(G(z), z))
    before = eg_loss().item()
    for _ in range(3):
        loss = eg_loss()
        opt_eg.zero_grad(); loss.backward(); opt_eg.step()
    assert eg_loss().item() < before


class LinearG(nn.Module):
    """An invertible toy generator x = A z + b on 16x16 images (z_dim 8), with E = its left inverse."""

    def __init__(self) -> None:
        super().__init__()
        self.A, self.b = torch.randn(256, 8) / 8, torch.randn(256) / 10

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.A.T + self.b).view(-1, 1, 16, 16)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.lstsq(self.A, (x.flatten(1) - self.b).T).solution.T  # (B, 8)


def test_theorem_2_when_e_inverts_g_no_discriminator_beats_chance():
    """If x = G(z) and E = G^-1, the pair (x, E(x)) IS (G(z), z): D's loss is >= 2 log 2 whatever D is, with equality
    only at D = 0 (chance); an E that is not G^-1 lets a trained D do better. That is why the optimum has E = G^-1."""
    torch.manual_seed(0)
    G = LinearG()
    z = torch.randn(128, 8)
    x = G(z)  # the data distribution is G's own
    assert torch.allclose(G.inverse(x), z, atol=1e-4)
    scores = {}
    for name, E in (("inverse", G.inverse), ("shifted", lambda x: G.inverse(x) + 0.5 * torch.randn(len(x), 8))):
        D = Discriminator(tiny(dropout=0.0, d_norm="none"))
        opt = torch.optim.Adam(D.parameters(), lr=2e-3)
        z_real = E(x)
        for _ in range(80):  # the same z in both pairs: for the inverse, real and fake pairs coincide
            loss = discriminator_loss(D(x, z_real), D(G(z), z))
            opt.zero_grad(); loss.backward(); opt.step()
        scores[name] = discriminator_loss(D(x, z_real), D(G(z), z)).item()
    assert scores["inverse"] >= 2 * math.log(2) - 1e-4
    assert scores["shifted"] < 2 * math.log(2) - 0.1


def test_reparameterised_gaussian_encoder():
    torch.manual_seed(0)
    mu = torch.tensor([1.0, -2.0], requires_grad=True)
    log_sigma = torch.tensor([0.0, math.log(0.5)], requires_grad=True)
    z = reparameterise(mu.expand(20000, 2), log_sigma.expand(20000, 2))
    assert torch.allclose(z.mean(0), mu.detach(), atol=0.03) and torch.allclose(z.std(0), torch.tensor([1.0, 0.5]), atol=0.03)
    z.sum().backward()
    assert mu.grad is not None and log_sigma.grad is not None  # gradients reach both (the reparameterisation trick)
    E = Encoder(tiny(encoder="gaussian")).eval()
    x = torch.rand(4, 1, 16, 16)
    assert not torch.equal(E(x), E(x))  # training-time codes are samples ...
    assert torch.equal(encode(E, x), encode(E, x))  # ... features and reconstructions use the mean
    assert torch.allclose(encode(E, x), E.distribution(x)[0])


def test_encode_and_reconstruct_are_deterministic_and_batch_independent():
    torch.manual_seed(0)
    cfg = tiny(channels=3)
    G, E = Generator(cfg).eval(), Encoder(cfg).eval()
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert torch.allclose(encode(E, x), encode(E, x, batch_size=4), atol=1e-6)
    assert torch.allclose(reconstruct(G, E, x), G(E(x)), atol=1e-6)
    assert reconstruct(G, E, x).shape == x.shape


def test_sampling_and_interpolation():
    torch.manual_seed(0)
    G = Generator(tiny(channels=3)).eval()
    a = sample(G, 6, rng=torch.Generator().manual_seed(1))
    b = sample(G, 6, rng=torch.Generator().manual_seed(1), batch_size=4)
    assert torch.allclose(a, b, atol=1e-6)
    z0, z1 = torch.randn(8), torch.randn(8)
    path = slerp(z0, z1, torch.linspace(0, 1, 5))
    assert torch.allclose(path[0], z0, atol=1e-5) and torch.allclose(path[-1], z1, atol=1e-5)
    assert interpolate(G, z0, z1, steps=5).shape == (5, 3, 16, 16)
