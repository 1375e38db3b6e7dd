"""Classifier-free guidance (issue 20's invariants) and the DDPM math this folder still relies on, on tiny
configs in float64 where exactness is asserted."""
import math

import pytest
import torch
from torch import nn

from model import (Config, Schedule, UNet, ancestral_step, ddim_step, ddim_timesteps, drop_labels, eps_from_v,
                   eps_from_x0, guide, guided_prediction, l_simple, predict, q_sample, sample, schedule_of,
                   v_from_eps, x0_from_eps)

TINY = dict(image_size=8, channels=1, num_classes=3, width=8, mults="1,2", attn="4", timesteps=20)


def random_net(seed: int = 0, **overrides) -> UNet:
    """A tiny U-Net with every weight random (the zero-initialised layers too), so its outputs are not zero."""
    torch.manual_seed(seed)
    net = UNet(Config(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return net.double().eval()


def inputs(n: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.randint(1, 21, (n,), generator=gen)
    y = torch.arange(n) % TINY["num_classes"]
    return x, t, y


class Oracle(nn.Module):
    """A perfect predictor: the conditional model knows x_0 of each class (x0[c]); the unconditional (null)
    model predicts the mean image of the classes, as if it had to hedge."""

    def __init__(self, x0_per_class: torch.Tensor, cfg: Config) -> None:
        super().__init__()
        self.x0, self.cfg, self.sch = x0_per_class, cfg, schedule_of(cfg)
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.x0, self.x0.mean(0, keepdim=True)])  # row K = the null label's guess
        eps = eps_from_x0(self.sch, x_t, table[y], t)
        return eps if self.cfg.prediction == "eps" else v_from_eps(self.sch, x_t, eps, t)


# ---------------------------------------------------------------- guidance

def test_w_0_is_exactly_the_unconditional_prediction_and_w_1_exactly_the_conditional_one():
    net = random_net()
    x, t, y = inputs()
    null = torch.full_like(y, net.cfg.null_label)
    uncond, cond = net(x, t, null), net(x, t, y)
    assert not torch.allclose(uncond, cond)  # the label matters, so the test below could fail
    assert torch.equal(guided_prediction(net, x, t, y, 0.0), uncond)
    assert torch.equal(guided_prediction(net, x, t, y, 1.0), cond)
    a, b = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.randn(4, 1, 8, 8, dtype=torch.float64)
    assert torch.equal(guide(a, b, 0.0), b) and torch.equal(guide(a, b, 1.0), a)  # the formula itself, bit for bit


@pytest.mark.parametrize("w", [0.5, 2.0, 3.0, 5.0])
def test_guided_prediction_is_eps_u_plus_w_times_the_difference_from_one_batched_forward(w):
    net = random_net()
    x, t, y = inputs()
    calls = []
    handle = net.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    guided = guided_prediction(net, x, t, y, w)
    handle.remove()
    assert calls == [2 * len(x)]  # one forward of the concatenated conditional and unconditional batch
    uncond, cond = net(x, t, torch.full_like(y, net.cfg.null_label)), net(x, t, y)
    assert torch.allclose(guided, uncond + w * (cond - uncond), atol=1e-12)
    assert torch.allclose(guided, (1 + (w - 1)) * cond - (w - 1) * uncond, atol=1e-12)  # Ho & Salimans Eq. 6, w' = w - 1


def test_guiding_v_is_guiding_eps():
    """The docstring's claim: eps is affine in v at fixed x_t, and the weights (1 - w, w) sum to 1."""
    net = random_net(prediction="v")
    sch = schedule_of(net.cfg)
    x, t, y = inputs()
    v_u, v_c = net(x, t, torch.full_like(y, net.cfg.null_label)), net(x, t, y)
    eps_of_guided_v = eps_from_v(sch, x, guided_prediction(net, x, t, y, 3.0), t)
    guided_eps = guide(eps_from_v(sch, x, v_c, t), eps_from_v(sch, x, v_u, t), 3.0)
    assert torch.allclose(eps_of_guided_v, guided_eps, atol=1e-10)


# ---------------------------------------------------------------- label dropout and the null label

@pytest.mark.parametrize("p", [0.0, 0.1, 0.3])
def test_label_dropout_replaces_labels_by_the_null_label_at_the_rate_asked(p):
    n, null = 200_000, 10
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0))
    c = drop_labels(y, p, null, generator=torch.Generator().manual_seed(1))
    dropped = c == null
    assert abs(dropped.float().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12
    assert torch.equal(c[~dropped], y[~dropped])  # kept labels are untouched; only null labels are new
    assert set(c.unique().tolist()) <= set(range(11))
    if p:  # independent of the class: every class is dropped at about the same rate
        rates = torch.stack([dropped[y == k].float().mean() for k in range(10)])
        assert (rates - p).abs().max() < 6 * math.sqrt(p * (1 - p) / (n / 10))


def test_the_null_label_never_leaks_into_the_real_rows_of_the_class_embedding():
    net = random_net().float()
    K = net.cfg.num_classes
    x, t, y = inputs()
    x = x.float()
    null = torch.full_like(y, K)
    # gradients: real labels touch only their rows, the null label only row K
    for labels, touched in ((y, set(range(K))), (null, {K})):
        net.zero_grad()
        net(x, t, labels).square().mean().backward()
        rows = {k for k in range(K + 1) if net.class_emb.weight.grad[k].abs().sum() > 0}
        assert rows == touched, (labels.tolist(), rows)
    # the forward pass: changing the null row changes no conditional output, and changing real rows no
    # unconditional one
    with torch.no_grad():
        cond, uncond, table = net(x, t, y), net(x, t, null), net.class_emb.weight.clone()
        net.class_emb.weight[K] += 1.0
        assert torch.equal(net(x, t, y), cond) and not torch.allclose(net(x, t, null), uncond)
        net.class_emb.weight.copy_(table)
        net.class_emb.weight[:K] += 1.0
        assert torch.equal(net(x, t, null), uncond) and not torch.allclose(net(x, t, y), cond)
    assert net.class_emb.weight.shape[0] == K + 1


# ---------------------------------------------------------------- DDPM's math, through the conditional sampler

@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_q_sample_has_the_closed_form_mean_and_variance(kind):
    sch = Schedule(kind, 1000)
    x0 = (torch.randint(0, 256, (1, 1, 8, 8), generator=torch.Generator().manual_seed(0)).double() / 127.5 - 1)
    x0 = x0.expand(20000, -1, -1, -1)
    gen = torch.Generator().manual_seed(1)
    for s in (1, 250, 999):
        x_t = q_sample(sch, x0, torch.full((x0.shape[0],), s), torch.randn(x0.shape, generator=gen, dtype=torch.float64))
        ab = sch.alpha_bar[s].item()
        assert (x_t.mean(0) - math.sqrt(ab) * x0[0]).abs().max() < 5 * math.sqrt((1 - ab) / 20000), s
        assert (x_t.var(0) - (1 - ab)).abs().max() < 5 * (1 - ab) * math.sqrt(2 / 20000), s
    assert sch.alpha_bar[0] == 1 and sch.alpha_bar[1000] < 1e-4 and (sch.alpha_bar[1:] < sch.alpha_bar[:-1]).all()


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_an_oracle_has_zero_loss_and_guided_ddim_eta_0_lands_on_the_requested_class(prediction):
    """w = 1 recovers x0[c] exactly; w = 0 the null model's mean image; w = 3 extrapolates past x0[c], away from
    the mean (x0_hat = x0[c] + 2 (x0[c] - mean) before clipping), i.e. guidance pushes from the unconditional."""
    cfg = Config(**{**TINY, "prediction": prediction})
    x0 = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5) * 0.5
    oracle, sch = Oracle(x0, cfg), schedule_of(cfg)
    y = torch.tensor([0, 1, 2, 1])
    t = torch.tensor([1, 7, 14, 20])
    assert l_simple(oracle, sch, x0[y], t, torch.randn(4, 1, 8, 8, dtype=torch.float64), y, prediction).item() < 1e-20
    gen = lambda: torch.Generator().manual_seed(0)
    for steps in (3, 20):
        assert torch.allclose(sample(oracle, y, 1.0, steps, generator=gen())[0], x0[y], atol=1e-10), steps
        assert torch.allclose(sample(oracle, y, 0.0, steps, generator=gen())[0], x0.mean(0).expand(4, -1, -1, -1),
                              atol=1e-10)
    guided, _ = sample(oracle, y, 3.0, 1, generator=gen())  # one step from x_T: x0_hat is the guided estimate
    assert torch.allclose(guided, (x0[y] + 2 * (x0[y] - x0.mean(0))).clamp(-1, 1), atol=1e-10)


def test_ddim_with_eta_1_over_all_steps_is_the_ancestral_sampler_under_guidance():
    net = random_net()
    sch = schedule_of(net.cfg)
    gen = torch.Generator().manual_seed(2)
    y = torch.tensor([0, 1, 2])
    for s in range(1, net.cfg.timesteps + 1):
        t = torch.full((3,), s)
        x_t = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
        x0_hat, eps_hat = predict(net, sch, x_t, t, y, 2.0, "eps")
        z = torch.randn(x_t.shape, generator=gen, dtype=torch.float64)
        _, mean_a, var_a = ancestral_step(sch, x_t, x0_hat, t, z)
        _, mean_d, var_d = ddim_step(sch, x0_hat, eps_hat, t, t - 1, 1.0, z)
        assert torch.allclose(mean_a, mean_d, atol=1e-10) and torch.allclose(var_a, var_d, atol=1e-14), s
    assert ddim_timesteps(20, 20) == list(range(20, 0, -1))
    ancestral, _ = sample(net, y, 2.0, steps=0, generator=torch.Generator().manual_seed(5))
    ddim, _ = sample(net, y, 2.0, steps=20, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(ancestral, ddim, atol=1e-8) and ancestral.std() > 0.1


def test_v_and_eps_convert_into_each_other_exactly():
    sch = Schedule("cosine", 1000)
    x0, eps = torch.rand(8, 1, 8, 8, dtype=torch.float64) * 2 - 1, torch.randn(8, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([1, 2, 100, 300, 500, 700, 900, 999])
    x_t = q_sample(sch, x0, t, eps)
    v = v_from_eps(sch, x_t, eps, t)
    ab = sch.at(sch.alpha_bar, t, x0)
    assert torch.allclose(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0, atol=1e-9)
    assert torch.allclose(eps_from_v(sch, x_t, v, t), eps, atol=1e-12)
    assert torch.allclose(x0_from_eps(sch, x_t, eps, t), x0, atol=1e-8)


# ---------------------------------------------------------------- the network

@pytest.mark.parametrize("overrides", [{}, {"mults": "1,2,2", "image_size": 16, "attn": "", "blocks": 2},
                                       {"channels": 3, "prediction": "v", "dropout": 0.1, "num_classes": 10}])
def test_unet_keeps_the_image_shape_and_starts_at_zero(overrides):
    cfg = Config(**{**TINY, **overrides})
    net = UNet(cfg)
    x = torch.randn(2, cfg.channels, cfg.image_size, cfg.image_size)
    out = net(x, torch.tensor([1, cfg.timesteps]), torch.tensor([0, cfg.null_label]))
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))  # zero-initialised output conv
    assert random_net(**overrides).float()(x, torch.tensor([1, 2]), torch.tensor([0, 1])).std() > 0
    with pytest.raises(IndexError):
        net(x, torch.tensor([1, 2]), torch.tensor([0, cfg.null_label + 1]))  # no label past the null row


@pytest.mark.parametrize("bad", [dict(image_size=10, mults="1,2,2"), dict(schedule="quadratic"),
                                 dict(prediction="x0"), dict(width=0), dict(timesteps=1), dict(num_classes=0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        Config(**{**TINY, **bad})
