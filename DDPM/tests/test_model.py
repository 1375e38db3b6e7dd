"""The diffusion math (issue 20's invariants) and the U-Net's shapes, on tiny configs in float64 where exactness
is asserted."""
import math

import pytest
import torch
from torch import nn

from model import (Config, ResBlock, Schedule, UNet, ancestral_step, ddim_step, ddim_timesteps, discrete_decoder_nll,
                   eps_from_v, eps_from_x0, l_simple, norm, predict, q_posterior, q_sample, sample, schedule_of,
                   v_from_eps, variational_bound, x0_from_eps)

TINY = dict(image_size=8, channels=1, width=8, mults="1,2", attn="4", timesteps=20)


class Oracle(nn.Module):
    """A perfect predictor for one known x_0: eps(x_t, t) = (x_t - sqrt(ab) x_0) / sqrt(1 - ab), or that v."""

    def __init__(self, x0: torch.Tensor, cfg: Config) -> None:
        super().__init__()
        self.x0, self.cfg, self.sch = x0, cfg, schedule_of(cfg)
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))  # the dtype predict() feeds the net

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_from_x0(self.sch, x_t, self.x0, t)
        return eps if self.cfg.prediction == "eps" else v_from_eps(self.sch, x_t, eps, t)


def images(n: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    """n images on the 8-bit grid k / 127.5 - 1, float64."""
    k = torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(seed))
    return k.double() / 127.5 - 1


def random_net(seed: int = 0, **overrides) -> UNet:
    """A tiny U-Net with every weight random (the zero-initialised layers too), so its outputs are not zero."""
    torch.manual_seed(seed)
    net = UNet(Config(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return net.double().eval()


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_q_sample_has_the_closed_form_mean_and_variance(kind):
    sch = Schedule(kind, 1000)
    x0 = images(1).expand(20000, -1, -1, -1)
    gen = torch.Generator().manual_seed(1)
    for s in (1, 10, 250, 500, 999):
        t = torch.full((x0.shape[0],), s)
        x_t = q_sample(sch, x0, t, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
        ab = sch.alpha_bar[s].item()
        mean, var = x_t.mean(0), x_t.var(0)
        se_mean, se_var = math.sqrt((1 - ab) / 20000), (1 - ab) * math.sqrt(2 / 20000)
        assert (mean - math.sqrt(ab) * x0[0]).abs().max() < 5 * se_mean, s
        assert (var - (1 - ab)).abs().max() < 5 * se_var, s


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_starts_at_one_falls_monotonically_and_ends_near_zero(kind):
    sch = Schedule(kind, 1000)
    assert sch.alpha_bar[0] == 1 and sch.betas[0] == 0 and len(sch.betas) == 1001
    assert (sch.alpha_bar[1:] < sch.alpha_bar[:-1]).all()
    assert sch.alpha_bar[1000] < 1e-4  # linear: exp(-sum beta) ~ 4e-5; cosine: ~ 0
    if kind == "linear":
        assert sch.betas[1].item() == pytest.approx(1e-4) and sch.betas[1000].item() == pytest.approx(0.02)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_an_oracle_has_zero_loss_and_ddim_eta_0_recovers_x0_exactly(prediction):
    cfg = Config(**{**TINY, "prediction": prediction})
    x0 = images(4)
    oracle = Oracle(x0, cfg)
    sch = schedule_of(cfg)
    t = torch.arange(1, 5) * 5  # t = 5, 10, 15, 20
    assert l_simple(oracle, sch, x0, t, torch.randn_like(x0), prediction).item() < 1e-20
    for steps in (3, 10, 20):
        x, trajectory = sample(oracle, 4, steps=steps, eta=0.0, generator=torch.Generator().manual_seed(0), keep=3)
        assert torch.allclose(x, x0, atol=1e-10), steps
        assert len(trajectory) >= 3 and not torch.allclose(trajectory[0], x0, atol=0.1)  # it started from noise


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_with_eta_1_over_all_steps_is_the_ancestral_step(kind):
    """Per step: the same mean and variance for any x_t and prediction; and whole samplers from one seed agree."""
    net = random_net(schedule=kind)
    sch = schedule_of(net.cfg)
    gen = torch.Generator().manual_seed(2)
    for s in range(1, net.cfg.timesteps + 1):
        t = torch.full((3,), s)
        x_t = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
        x0_hat, eps_hat = predict(net, sch, x_t, t, "eps")
        z = torch.randn(x_t.shape, generator=gen, dtype=torch.float64)
        _, mean_a, var_a = ancestral_step(sch, x_t, x0_hat, t, z)
        _, mean_d, var_d = ddim_step(sch, x0_hat, eps_hat, t, t - 1, 1.0, z)
        assert torch.allclose(mean_a, mean_d, atol=1e-10) and torch.allclose(var_a, var_d, atol=1e-14), s
    assert ddim_timesteps(20, 20) == list(range(20, 0, -1))
    ancestral, _ = sample(net, 3, steps=0, generator=torch.Generator().manual_seed(5))
    ddim, _ = sample(net, 3, steps=20, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(ancestral, ddim, atol=1e-8) and ancestral.std() > 0.1


def test_ddim_eta_0_is_deterministic_and_ddim_timesteps_span_T_to_1():
    net = random_net()
    x_T = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    a, _ = sample(net, 2, steps=5, x_T=x_T, generator=torch.Generator().manual_seed(0))
    b, _ = sample(net, 2, steps=5, x_T=x_T, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert ddim_timesteps(1000, 10)[0] == 1000 and ddim_timesteps(1000, 10)[-1] == 1 and len(ddim_timesteps(1000, 10)) == 10


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_v_and_eps_convert_into_each_other_exactly(kind):
    sch = Schedule(kind, 1000)
    x0, eps = images(8), torch.randn(8, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([1, 2, 100, 300, 500, 700, 900, 999])
    x_t = q_sample(sch, x0, t, eps)
    v = v_from_eps(sch, x_t, eps, t)
    ab = sch.at(sch.alpha_bar, t, x0)
    assert torch.allclose(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0, atol=1e-9)  # Salimans & Ho's definition
    assert torch.allclose(eps_from_v(sch, x_t, v, t), eps, atol=1e-12)
    assert torch.allclose(x0_from_eps(sch, x_t, eps, t), x0, atol=1e-8)
    assert torch.allclose(ab.sqrt() * x_t - (1 - ab).sqrt() * v, x0, atol=1e-9)  # x_0 from v


def test_q_posterior_is_the_gaussian_of_eq_6_and_7():
    """Bayes on the two Gaussians q(x_t | x_{t-1}) q(x_{t-1} | x_0), done numerically, gives mu~ and beta~."""
    sch = Schedule("linear", 1000)
    x0, x_t, s = images(1), torch.randn(1, 1, 8, 8, dtype=torch.float64), 400
    a, ab_prev, beta = 1 - sch.betas[s], sch.alpha_bar[s - 1], sch.betas[s]
    precision = a / beta + 1 / (1 - ab_prev)  # of x_{t-1}: from N(x_t; sqrt(a) x_{t-1}, beta), N(sqrt(ab_prev) x_0, 1 - ab_prev)
    mean = (a.sqrt() / beta * x_t + ab_prev.sqrt() / (1 - ab_prev) * x0) / precision
    mu, var = q_posterior(sch, x0, x_t, torch.tensor([s]))
    assert torch.allclose(mu, mean, atol=1e-10) and torch.allclose(var.flatten(), 1 / precision.reshape(1), atol=1e-14)


def test_the_discrete_decoder_is_a_distribution_over_the_256_levels():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, var in ((0.3, 1e-4), (-0.99, 1e-3), (1.0, 0.5)):
        nll = discrete_decoder_nll(levels.view(256, 1, 1, 1), torch.full((256, 1, 1, 1), mean, dtype=torch.float64),
                                   torch.full((256, 1, 1, 1), var, dtype=torch.float64))
        assert torch.exp(-nll).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_the_bound_of_an_oracle_is_L_T_plus_L_0_and_subsets_of_timesteps_estimate_it():
    cfg = Config(**TINY)
    x0 = images(3)
    oracle, sch = Oracle(x0, cfg), schedule_of(cfg)
    bound = variational_bound(oracle, sch, x0, generator=torch.Generator().manual_seed(0))
    assert bound.shape == (3,) and (bound > 0).all()
    # a random network: all T - 1 KL terms, and the stratified estimate on 19 = all of them is the same number
    net = random_net()
    full = variational_bound(net, sch, x0, generator=torch.Generator().manual_seed(0))
    every = variational_bound(net, sch, x0, timesteps=torch.arange(2, 21), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(full, every) and (full > bound).all()
    few = torch.stack([variational_bound(net, sch, x0, timesteps=torch.randint(2, 21, (4,)),
                                         generator=torch.Generator().manual_seed(i)) for i in range(30)])
    assert (few.mean(0) - full).abs().max() < 0.25 * full.min()  # unbiased: near the full sum on average


@pytest.mark.parametrize("overrides", [{}, {"mults": "1,2,2", "image_size": 16, "attn": "", "blocks": 2},
                                       {"channels": 3, "prediction": "v", "dropout": 0.1}])
def test_unet_keeps_the_image_shape_and_starts_at_zero(overrides):
    cfg = Config(**{**TINY, **overrides})
    net = UNet(cfg)
    x = torch.randn(2, cfg.channels, cfg.image_size, cfg.image_size)
    out = net(x, torch.tensor([1, cfg.timesteps]))
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv
    assert random_net(**overrides).float()(x, torch.tensor([1, 2])).std() > 0


def test_the_papers_cifar_network_is_one_set_of_flags_away():
    cfg = Config(channels=3, width=128, mults="1,2,2,2", blocks=2, attn="16", dropout=0.1)
    n = sum(p.numel() for p in UNet(cfg).parameters())
    assert abs(n - 35.7e6) < 0.1e6  # Ho et al. Table 1 / Appendix B: 35.7M parameters


@pytest.mark.parametrize("bad", [dict(image_size=10, mults="1,2,2"), dict(schedule="quadratic"),
                                 dict(prediction="x0"), dict(width=0), dict(timesteps=1), dict(dropout=1.0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        Config(**{**TINY, **bad})


@pytest.mark.parametrize("channels", [16, 32, 64])
def test_a_residual_block_keeps_the_time_embedding_at_every_width(channels):
    """The time embedding is added per channel before the second GroupNorm; with one-channel groups the norm would
    subtract it again and every timestep would give the same output (DDPM's gcd(32, C) groups did at C = 16, 32)."""
    torch.manual_seed(0)
    block = ResBlock(channels, channels, t_dim=8, dropout=0.0).eval()
    torch.nn.init.normal_(block.conv2.weight, std=0.1)  # zero-initialised: give the second conv a say
    x = torch.randn(2, channels, 8, 8)
    t1, t2 = torch.randn(2, 8), torch.randn(2, 8)
    assert (block(x, t1) - block(x, t2)).abs().max() > 1e-3
    assert all(c // g >= 4 for g, c in [(norm(c).num_groups, c) for c in (4, 8, 16, 32, 48, 64, 128, 256)])
