"""DCGAN networks and objective: shapes, the paper's architecture rules, and the loss math."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import (Config, Discriminator, Generator, discriminator_loss, generator_loss, interpolate, r1_penalty,
                   sample, slerp)


@pytest.mark.parametrize("size,channels", [(16, 1), (32, 3), (64, 3), (128, 1)])
def test_shapes_and_range(size, channels):
    torch.manual_seed(0)
    cfg = Config(image_size=size, channels=channels, z_dim=16, g_width=8, d_width=8)
    G, D = Generator(cfg), Discriminator(cfg)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, channels, size, size)
    assert D(x).shape == (5,)
    # tanh bounds the output: with the last layer's weights scaled up, values reach +-1 but never pass it
    with torch.no_grad():
        G.to_image.weight.mul_(1000)
    x = G(torch.randn(5, 16))
    assert x.abs().max() <= 1.0 and x.max() > 0.99 and x.min() < -0.99


@pytest.mark.parametrize("size", [8, 24, 48, 0])
def test_rejects_image_sizes_it_cannot_build(size):
    with pytest.raises(ValueError, match="power of two"):
        Config(image_size=size)


def test_paper_architecture_rules():
    """Sec. 3: no pooling/linear layers; BN everywhere except G output and D input; ReLU in G, LeakyReLU(0.2) in D."""
    cfg = Config(image_size=64, channels=3)
    G, D = Generator(cfg), Discriminator(cfg)
    for net in (G, D):
        assert not any(isinstance(m, (nn.Linear, nn.MaxPool2d, nn.AvgPool2d)) for m in net.modules())
    g_layers = [m for m in G.modules() if isinstance(m, (nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU))]
    assert isinstance(g_layers[-1], nn.ConvTranspose2d)  # output layer: conv then tanh, no BN
    assert sum(isinstance(m, nn.BatchNorm2d) for m in G.modules()) == cfg.num_layers
    assert not any(isinstance(m, nn.LeakyReLU) for m in G.modules())
    d_first = list(D.body[0])
    assert isinstance(d_first[0], nn.Conv2d) and not any(isinstance(m, nn.BatchNorm2d) for m in d_first)
    assert all(m.negative_slope == 0.2 for m in D.modules() if isinstance(m, nn.LeakyReLU))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D.modules()) == cfg.num_layers - 1
    # the paper's 64x64 G: 100 -> 512 (4x4) -> 256 -> 128 -> 64 -> 3
    widths = [m.out_channels for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert widths == [512, 256, 128, 64, 3]


def test_weight_init_is_normal_0_002():
    torch.manual_seed(0)
    G = Generator(Config(image_size=64))
    w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, nn.ConvTranspose2d)])
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = torch.cat([m.weight for m in G.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(bn.mean().item() - 1.0) < 5e-3 and all(
        (m.bias == 0).all() for m in G.modules() if isinstance(m, nn.BatchNorm2d))


def test_discriminator_loss_is_binary_cross_entropy():
    torch.manual_seed(0)
    real, fake = torch.randn(64) * 3, torch.randn(64) * 3
    expected = (F.binary_cross_entropy(torch.sigmoid(real), torch.ones(64))
                + F.binary_cross_entropy(torch.sigmoid(fake), torch.zeros(64)))
    assert torch.allclose(discriminator_loss(real, fake), expected, atol=1e-5)
    assert discriminator_loss(torch.zeros(8), torch.zeros(8)).item() == pytest.approx(2 * math.log(2), abs=1e-6)
    # the optimum: confident and right is ~0, confident and wrong is large; stable at extreme logits
    assert discriminator_loss(torch.full((4,), 50.0), torch.full((4,), -50.0)).item() < 1e-6
    assert discriminator_loss(torch.full((4,), -200.0), torch.full((4,), 200.0)).item() == pytest.approx(400, rel=1e-4)


def test_generator_loss_is_non_saturating_and_has_the_right_sign():
    fake = torch.tensor([-10.0, 0.0, 10.0], requires_grad=True)
    generator_loss(fake).backward()
    g = fake.grad * 3  # undo the mean
    # d/dl [-log sigma(l)] = sigma(l) - 1: about -1 where D confidently rejects the fake (no vanishing gradient)
    assert g[0].item() == pytest.approx(-1.0, abs=1e-4)
    assert (g < 0).all()  # descending L_G raises D(G(z)), i.e. G tries to fool D


def test_one_step_of_each_player_moves_the_game_the_right_way():
    torch.manual_seed(0)
    cfg = Config(image_size=16, channels=1, z_dim=8, g_width=8, d_width=8)
    G, D = Generator(cfg), Discriminator(cfg)
    real = torch.rand(32, 1, 16, 16) * 2 - 1
    z = torch.randn(32, 8)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    before = discriminator_loss(D(real), D(G(z).detach())).item()
    for _ in range(3):
        loss = discriminator_loss(D(real), D(G(z).detach()))
        opt_d.zero_grad(); loss.backward(); opt_d.step()
    assert discriminator_loss(D(real), D(G(z).detach())).item() < before
    assert all(torch.isfinite(p.grad).all() for p in D.parameters())
    D.eval()  # freeze D's BatchNorm statistics: G must improve against this D
    g_before = generator_loss(D(G(z))).item()
    for _ in range(3):
        loss = generator_loss(D(G(z)))
        opt_g.zero_grad(); loss.backward(); opt_g.step()
    assert all(torch.isfinite(p.grad).all() for p in G.parameters())
    assert generator_loss(D(G(z))).item() < g_before


def test_slerp_endpoints_and_norm():
    torch.manual_seed(0)
    z0, z1 = torch.randn(100), torch.randn(100)
    z1 = z1 / z1.norm() * z0.norm()
    path = slerp(z0, z1, torch.linspace(0, 1, 7))
    assert torch.allclose(path[0], z0, atol=1e-5) and torch.allclose(path[-1], z1, atol=1e-5)
    assert torch.allclose(path.norm(dim=1), z0.norm().expand(7), rtol=1e-4)  # stays on the sphere


def test_sampling_is_deterministic_given_noise():
    torch.manual_seed(0)
    G = Generator(Config(image_size=16, channels=3, z_dim=8, g_width=8)).eval()
    a = sample(G, 6, rng=torch.Generator().manual_seed(1))
    b = sample(G, 6, rng=torch.Generator().manual_seed(1), batch_size=4)  # batching must not matter in eval
    assert torch.allclose(a, b, atol=1e-6)
    assert interpolate(G, torch.randn(8), torch.randn(8), steps=5).shape == (5, 3, 16, 16)


class Linear(nn.Module):
    """D(x) = w . x + b on flattened images: grad_x D(x) = w for every x."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w.clone()), nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.flatten() + self.b


def test_r1_penalty_of_a_linear_d_is_half_gamma_times_the_squared_weight_norm():
    torch.manual_seed(0)
    D = Linear(torch.randn(3, 4, 4))
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    penalty = r1_penalty(D(x), x, gamma=2.5)
    assert penalty.item() == pytest.approx(2.5 / 2 * D.w.pow(2).sum().item(), rel=1e-6)
    # it reaches D's parameters (create_graph): d/dw [gamma/2 ||w||^2] = gamma * w; b does not matter
    penalty.backward()
    assert torch.allclose(D.w.grad, 2.5 * D.w.detach(), atol=1e-6)
    assert D.b.grad is None or D.b.grad.item() == 0.0


def test_r1_penalty_is_zero_with_zero_gradient_for_a_constant_d():
    D = Linear(torch.zeros(3, 4, 4))  # D(x) = b whatever x
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    penalty = r1_penalty(D(x), x, gamma=10.0)
    penalty.backward()
    assert penalty.item() == 0.0 and torch.equal(D.w.grad, torch.zeros(3, 4, 4))


def test_r1_penalty_averages_each_images_squared_gradient_norm():
    """Against a per-image computation on the real conv D (eval mode: each logit depends on its image alone)."""
    torch.manual_seed(0)
    D = Discriminator(Config(image_size=16, channels=1, d_width=8)).eval()
    x = torch.randn(4, 1, 16, 16, requires_grad=True)
    norms = []
    for i in range(4):
        xi = x[i:i + 1].detach().requires_grad_(True)
        grad, = torch.autograd.grad(D(xi).sum(), xi)
        norms.append(grad.pow(2).sum())
    assert r1_penalty(D(x), x, gamma=3.0).item() == pytest.approx(3.0 / 2 * torch.stack(norms).mean().item(),
                                                                   rel=1e-5)
