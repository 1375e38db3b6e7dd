"""WGAN networks and objective: shapes, the gradient penalty, weight clipping and the signs of both losses."""
import pytest
import torch
from torch import nn

from model import (Config, Critic, Generator, clip_weights, critic_gradient_norm, critic_loss, generator_loss,
                   gradient_penalty, interpolate, random_interpolates, sample, slerp, wasserstein_estimate)


def tiny(norm: str = "layer", channels: int = 1) -> Config:
    return Config(image_size=16, channels=channels, z_dim=8, g_width=8, d_width=8, critic_norm=norm)


@pytest.mark.parametrize("size,channels,norm", [(16, 1, "layer"), (32, 3, "none"), (64, 3, "batch"), (128, 1, "layer")])
def test_shapes_and_range(size, channels, norm):
    torch.manual_seed(0)
    cfg = Config(image_size=size, channels=channels, z_dim=16, g_width=8, d_width=8, critic_norm=norm)
    G, D = Generator(cfg), Critic(cfg)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, channels, size, size)
    assert D(x).shape == (5,)
    with torch.no_grad():  # huge pre-activations: only the final tanh keeps the images in [-1, 1]
        G.to_image.weight.mul_(1e4)
        x = G(torch.randn(5, 16))
    assert 0.999 < x.abs().max() <= 1.0


@pytest.mark.parametrize("kwargs,needle", [({"image_size": 24}, "power of two"), ({"image_size": 8}, "power of two"),
                                           ({"critic_norm": "instance"}, "critic-norm")])
def test_rejects_configs_it_cannot_build(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Config(**kwargs)


def test_critic_normalisation_is_what_the_config_says():
    """GP critics are per-sample (layer norm or none); only the clip critic may use BatchNorm."""
    count = lambda net, kind: sum(isinstance(m, kind) for m in net.modules())
    layer, none, batch = Critic(tiny("layer")), Critic(tiny("none")), Critic(tiny("batch"))
    assert count(layer, nn.BatchNorm2d) == 0 and count(layer, nn.GroupNorm) == layer.cfg.num_layers - 1
    assert all(m.num_groups == 1 for m in layer.modules() if isinstance(m, nn.GroupNorm))  # layer norm
    assert count(none, nn.BatchNorm2d) == 0 and count(none, nn.GroupNorm) == 0
    assert count(batch, nn.BatchNorm2d) == batch.cfg.num_layers - 1
    x = torch.randn(6, 1, 16, 16)
    with pytest.raises(ValueError, match="BatchNorm"):
        gradient_penalty(batch, x)
    # per sample: a layer-norm critic scores a sample the same alone as inside a batch (BatchNorm would not)
    assert torch.allclose(layer(x)[:1], layer(x[:1]), atol=1e-5)


class Linear(nn.Module):
    """f(x) = <w, x> + b on flattened images: its gradient is w everywhere."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.b


@pytest.mark.parametrize("scale,expected", [(1.0, 0.0), (2.0, 1.0), (0.5, 0.25), (0.0, 1.0)])
def test_penalty_of_a_linear_critic_is_its_norm_gap_squared(scale, expected):
    """E[(||w|| - 1)^2] = (scale - 1)^2: ~0 exactly when the linear critic has a unit-norm weight."""
    torch.manual_seed(0)
    w = torch.randn(3 * 8 * 8)
    critic = Linear(scale * w / w.norm())
    x_hat, _ = random_interpolates(torch.randn(16, 3, 8, 8), torch.randn(16, 3, 8, 8))
    penalty, norms = gradient_penalty(critic, x_hat)
    assert penalty.item() == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(norms, torch.full((16,), scale), atol=1e-5)


def test_penalty_is_positive_and_trains_the_critic_weights():
    """create_graph: the penalty has gradients with respect to the critic's weights (else it would do nothing)."""
    torch.manual_seed(0)
    D = Critic(tiny("layer"))
    penalty, norms = gradient_penalty(D, torch.randn(8, 1, 16, 16))
    assert penalty.item() > 0.01 and norms.shape == (8,)
    penalty.backward()
    grads = [p.grad for p in D.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    # the per-sample norms are the norms of each sample's own input gradient
    x = torch.randn(3, 1, 16, 16, requires_grad=True)
    own = torch.stack([torch.autograd.grad(D(x[i:i + 1]).sum(), x)[0][i].norm() for i in range(3)])
    assert torch.allclose(critic_gradient_norm(D, x), own, rtol=1e-4)


def test_alpha_is_drawn_per_sample_from_u01():
    torch.manual_seed(0)
    real, fake = torch.randn(4000, 2, 3, 3), torch.randn(4000, 2, 3, 3)
    x_hat, alpha = random_interpolates(real, fake)
    assert alpha.shape == (4000, 1, 1, 1)
    assert torch.allclose(x_hat, fake + alpha * (real - fake), atol=1e-6)  # one alpha for all pixels of a sample
    ratio = ((x_hat - fake) / (real - fake)).flatten(1)  # (B, D): alpha_i in every column
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-3)
    assert alpha.unique().numel() > 3990  # a different alpha for each sample
    assert 0 <= alpha.min() and alpha.max() <= 1
    assert alpha.mean().item() == pytest.approx(0.5, abs=0.02) and alpha.var().item() == pytest.approx(1 / 12, abs=0.005)


def test_alpha_from_a_private_generator_leaves_the_global_rng_alone():
    """train.py's clip log draws its interpolates this way, so logging never shifts training's random stream."""
    real, fake = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    before = torch.get_rng_state()
    _, a = random_interpolates(real, fake, generator=torch.Generator().manual_seed(3))
    _, b = random_interpolates(real, fake, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(a, b)
    _, c = random_interpolates(real, fake)
    assert not torch.equal(torch.get_rng_state(), before) and not torch.equal(a, c)


def test_clipping_holds_after_a_step():
    """Algorithm 1 of WGAN: after the RMSprop update, every parameter (BatchNorm's too) is in [-c, c]."""
    torch.manual_seed(0)
    c = 0.01
    D = Critic(tiny("batch"))
    opt = torch.optim.RMSprop(D.parameters(), lr=5e-3)
    critic_loss(D(torch.randn(8, 1, 16, 16)), D(torch.randn(8, 1, 16, 16))).backward()
    opt.step()
    before = {n: p.detach().clone() for n, p in D.named_parameters()}
    assert max(p.abs().max().item() for p in before.values()) > c  # the step left some weights outside
    clip_weights(D, c)
    for n, p in D.named_parameters():
        assert p.abs().max().item() <= c, n
        inside = before[n].abs() <= c
        assert torch.equal(p[inside], before[n][inside])  # weights already inside are untouched
        assert torch.equal(p[~inside], c * before[n][~inside].sign())  # the others sit on the boundary


def test_loss_signs():
    """The critic ascends E[f(x)] - E[f(G(z))]; G ascends E[f(G(z))]. Mixing these up (a sign bug seen in
    popular implementations) makes G flee from the data."""
    real = torch.randn(4, requires_grad=True)
    fake = torch.randn(4, requires_grad=True)
    assert critic_loss(real, fake).item() == pytest.approx(-wasserstein_estimate(real, fake).item())
    critic_loss(real, fake).backward()
    assert torch.allclose(real.grad, torch.full((4,), -0.25))  # descending L_critic raises real scores
    assert torch.allclose(fake.grad, torch.full((4,), 0.25))  # ... and lowers fake scores
    fake.grad = None
    generator_loss(fake).backward()
    assert torch.allclose(fake.grad, torch.full((4,), -0.25))  # descending L_G raises the fakes' scores
    assert wasserstein_estimate(torch.tensor([3.0, 5.0]), torch.tensor([1.0, 1.0])).item() == 3.0


@pytest.mark.parametrize("variant", ["gp", "clip"])
def test_one_critic_step_raises_the_estimate_and_one_generator_step_raises_the_fake_score(variant):
    torch.manual_seed(0)
    cfg = tiny("layer" if variant == "gp" else "batch")
    G, D = Generator(cfg), Critic(cfg)
    real, z = torch.rand(32, 1, 16, 16) * 2 - 1, torch.randn(32, 8)
    fake = G(z).detach()
    if variant == "gp":
        opt_d = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.9))
    else:
        clip_weights(D, 0.01)
        opt_d = torch.optim.RMSprop(D.parameters(), lr=5e-5)
    w_before = wasserstein_estimate(D(real), D(fake)).item()
    loss = critic_loss(D(real), D(fake))
    if variant == "gp":
        loss = loss + 10 * gradient_penalty(D, random_interpolates(real, fake)[0])[0]
    opt_d.zero_grad(); loss.backward(); opt_d.step()
    if variant == "clip":
        clip_weights(D, 0.01)
    assert wasserstein_estimate(D(real), D(fake)).item() > w_before

    D.requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.0, 0.9))
    score_before = D(G(z)).mean().item()
    loss_g = generator_loss(D(G(z)))
    opt_g.zero_grad(); loss_g.backward(); opt_g.step()
    assert all(torch.isfinite(p.grad).all() for p in G.parameters())
    assert D(G(z)).mean().item() > score_before


def test_gp_critic_estimates_the_wasserstein_distance_of_two_gaussians():
    """W1(N(0, I), N(m, I)) = ||m||. A small critic trained with critic_loss + 10 GP recovers it, and the estimate
    falls as the 'generator' distribution moves toward the data."""
    estimates = []
    for shift in (2.0, 0.5):
        torch.manual_seed(0)
        critic = nn.Sequential(nn.Linear(2, 64), nn.LeakyReLU(0.2), nn.Linear(64, 64), nn.LeakyReLU(0.2),
                               nn.Linear(64, 1), nn.Flatten(0))
        opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.0, 0.9))
        m = torch.tensor([shift, 0.0])
        for _ in range(400):
            real, fake = torch.randn(256, 2), torch.randn(256, 2) + m
            loss = critic_loss(critic(real), critic(fake)) + 10 * gradient_penalty(critic, random_interpolates(real, fake)[0])[0]
            opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            estimates.append(wasserstein_estimate(critic(torch.randn(20000, 2)), critic(torch.randn(20000, 2) + m)).item())
    # the two-sided penalty lets gradient norms sit a little above 1, so the estimate runs up to ~20% high
    assert estimates[0] == pytest.approx(2.0, rel=0.2)
    assert estimates[1] == pytest.approx(0.5, rel=0.2)


def test_slerp_endpoints_and_norm():
    torch.manual_seed(0)
    z0, z1 = torch.randn(100), torch.randn(100)
    z1 = z1 / z1.norm() * z0.norm()
    path = slerp(z0, z1, torch.linspace(0, 1, 7))
    assert torch.allclose(path[0], z0, atol=1e-5) and torch.allclose(path[-1], z1, atol=1e-5)
    assert torch.allclose(path.norm(dim=1), z0.norm().expand(7), rtol=1e-4)


def test_sampling_is_deterministic_given_noise():
    torch.manual_seed(0)
    G = Generator(tiny(channels=3)).eval()
    a = sample(G, 6, rng=torch.Generator().manual_seed(1))
    b = sample(G, 6, rng=torch.Generator().manual_seed(1), batch_size=4)  # batching must not matter in eval
    assert torch.allclose(a, b, atol=1e-6)
    assert interpolate(G, torch.randn(8), torch.randn(8), steps=5).shape == (5, 3, 16, 16)
