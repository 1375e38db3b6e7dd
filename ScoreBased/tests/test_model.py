"""The score-SDE math (issue 21's invariants): the perturbation kernels against simulated forward SDEs; for
Gaussian data with its analytic score, every sampler's mean and covariance and the ODE likelihood against the
true log-density; Hutchinson's estimator unbiased for a known Jacobian; and the network's shapes."""
import math

import pytest
import torch
from torch import nn

from model import (SDE, Config, divergence, dsm_loss, langevin_step, ode_likelihood, perturb,
                   reverse_diffusion_step, sample, score_fn, sde_of)
from unet import UNet

GAUSS = dict(image_size=2, channels=1, width=8, mults="1", attn="")  # 4-dimensional "images" (B, 1, 2, 2)
SDE_PARAMS = {"vp": {}, "subvp": {}, "ve": {"sigma_max": 50.0}}


def gaussian(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random mean (4,) and covariance (4, 4) with eigenvalues in [0.05, 0.6], float64."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(torch.tensor([0.05, 0.15, 0.3, 0.6], dtype=torch.float64)) @ q.T
    return 0.5 * torch.randn(4, generator=g, dtype=torch.float64), cov


class GaussianScore(nn.Module):
    """A network that outputs s(t) grad log p_t exactly for data N(mu, cov): p_t = N(m mu, m^2 cov + s^2 I)."""

    def __init__(self, sde: str, mu: torch.Tensor, cov: torch.Tensor, **params) -> None:
        super().__init__()
        self.cfg = Config(**GAUSS, sde=sde, **{**SDE_PARAMS[sde], **params})
        self.sde, self.mu, self.cov = sde_of(self.cfg), mu, cov
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))  # the dtype the samplers run in

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m, s = self.sde.marginal(t, x)  # (B, 1, 1, 1)
        m, s = m.flatten(), s.flatten()
        cov_t = m[:, None, None] ** 2 * self.cov + s[:, None, None] ** 2 * torch.eye(4, dtype=x.dtype)
        diff = x.flatten(1) - m[:, None] * self.mu  # (B, 4)
        score = -torch.linalg.solve(cov_t, diff.unsqueeze(-1)).squeeze(-1)
        return (s[:, None] * score).view_as(x)


def log_density(x: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    return torch.distributions.MultivariateNormal(mu, cov).log_prob(x.flatten(1))


# ---------------------------------------------------------------- the SDEs

@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_perturbation_kernels_match_the_simulated_forward_sde(kind):
    """Euler-Maruyama on dx = f dt + g dw with 400 small steps from x(0) has the kernel's mean m x(0) and std s
    at t = 0.25, 0.5, 1 (VE starts from x(0) + sigma_min z: the kernel's convention)."""
    sde = SDE(kind, sigma_max=10.0)
    n, steps, gen = 20000, 400, torch.Generator().manual_seed(0)
    x0 = torch.tensor([-0.8, 0.3, 1.0], dtype=torch.float64).repeat(n, 1).view(n, 3, 1, 1)
    x = x0 + (sde.s0 * torch.randn(x0.shape, generator=gen, dtype=torch.float64) if kind == "ve" else 0)
    checked = 0
    for i in range(steps):
        t, dt = i / steps, 1 / steps
        f, g = sde.sde(x, t)
        x = x + f * dt + g * math.sqrt(dt) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        if (i + 1) in (100, 200, 400):
            m, s = sde.marginal((i + 1) / steps, x)
            se = s.item() / math.sqrt(n)
            assert (x.mean(0) - m * x0[0]).abs().max() < 5 * se + 0.01 * s.item(), (kind, i)
            assert (x.std(0) / s - 1).abs().max() < 0.03, (kind, i, x.std(0).flatten(), s)
            checked += 1
    assert checked == 3


def test_kernel_closed_forms():
    """VP keeps unit variance (m^2 + s^2 = 1), sub-VP's std is below VP's, VE's sigma runs sigma_min -> sigma_max."""
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    (m, s), (m2, s2) = SDE("vp").marginal(t, t), SDE("subvp").marginal(t, t)
    assert torch.allclose(m ** 2 + s ** 2, torch.ones_like(t)) and torch.equal(m, m2) and (s2 < s).all()
    assert m[-1] < 0.01  # p_1 is close to the N(0, I) prior
    ve = SDE("ve", sigma_min=0.01, sigma_max=50)
    assert ve.marginal(0.0, t)[1].item() == pytest.approx(0.01) and ve.marginal(1.0, t)[1].item() == pytest.approx(50)


def test_vp_reverse_diffusion_step_is_eq_46_and_the_dsm_loss_vanishes_at_the_true_kernel_score():
    sde, gen = SDE("vp"), torch.Generator().manual_seed(1)
    x, z = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64), torch.randn(3, 1, 4, 4, generator=gen,
                                                                                     dtype=torch.float64)
    s = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    x_next, x_mean = reverse_diffusion_step(sde, lambda x_, t_: s, x, 0.5, 0.499, z)
    b = 1 - math.exp(2 * (sde.log_mean_coeff(torch.tensor(0.5, dtype=torch.float64)) - sde.log_mean_coeff(torch.tensor(0.499, dtype=torch.float64))).item())
    assert b == pytest.approx(sde.beta(torch.tensor(0.5)).item() * 0.001, rel=0.01)  # beta(t) dt for small dt
    assert torch.allclose(x_mean, (2 - math.sqrt(1 - b)) * x + b * s)  # Eq. 46
    assert torch.allclose(x_next, x_mean + math.sqrt(b) * z)
    # the kernel's score for one image x(0): s(t) grad log p_0t = -(x - m x(0)) / s, zero loss, wrong sign not
    x0 = torch.randn(3, 1, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    kernel_score = lambda x_, t_: -(x_ - sde.marginal(t_, x_)[0] * x0) / sde.marginal(t_, x_)[1]
    assert dsm_loss(kernel_score, sde, x0, t, z).item() < 1e-20
    assert dsm_loss(lambda x_, t_: -kernel_score(x_, t_), sde, x0, t, z).item() > 1
    x_t, std = perturb(sde, x0, t, z)
    assert torch.allclose((x_t - sde.marginal(t, x0)[0] * x0) / std, z)


# ---------------------------------------------------------------- samplers on Gaussian data

@pytest.mark.parametrize("sde,sampler,kw", [
    ("vp", "em", dict(steps=500)),
    ("vp", "pc", dict(steps=300, snr=0.1)),
    ("vp", "ode", dict(rtol=1e-5, atol=1e-5)),
    ("ve", "em", dict(steps=500)),
    ("ve", "pc", dict(steps=300, snr=0.1)),
    ("ve", "ode", dict(rtol=1e-5, atol=1e-5)),
    ("subvp", "ode", dict(rtol=1e-5, atol=1e-5)),
])
def test_each_sampler_reproduces_the_mean_and_covariance_of_gaussian_data(sde, sampler, kw):
    mu, cov = gaussian()
    net = GaussianScore(sde, mu, cov)
    n = 4000
    x, nfe = sample(net, n, sampler, generator=torch.Generator().manual_seed(3), clip=False, **kw)
    x = x.flatten(1)  # (n, 4)
    mean, emp = x.mean(0), torch.cov(x.T)
    se = cov.diagonal().sqrt() / math.sqrt(n)
    assert ((mean - mu).abs() < 5 * se + 0.01).all(), (mean, mu)
    assert (emp - cov).abs().max() < 0.05, (emp, cov)
    assert nfe > 0 if sampler == "ode" else nfe == kw["steps"] * (2 if sampler == "pc" else 1)


# ---------------------------------------------------------------- likelihood

@pytest.mark.parametrize("sde", ["vp", "ve"])
def test_the_ode_likelihood_matches_the_true_gaussian_log_density(sde):
    """Exact divergence: per point within 0.02 nats of log N(x; mu, cov); Hutchinson (Rademacher): unbiased, so
    the mean over points agrees within its standard error. (VE's prior N(0, sigma_max^2 I) misses p_1 =
    N(mu, cov + sigma_max^2 I) by about |mu| / sigma_max nats: sigma_max 500 here.)"""
    mu, cov = gaussian(1)
    net = GaussianScore(sde, mu, cov, **({"sigma_max": 500.0} if sde == "ve" else {}))
    x = torch.distributions.MultivariateNormal(mu, cov).sample((200,)).view(200, 1, 2, 2)
    truth = -log_density(x, mu, cov)
    score = score_fn(net, net.sde)
    exact, nfe = ode_likelihood(net.sde, score, x, rtol=1e-6, atol=1e-6, probe="exact")
    assert nfe > 10 and (exact - truth).abs().max() < 0.02, (exact - truth).abs().max()
    hutch, _ = ode_likelihood(net.sde, score, x, rtol=1e-6, atol=1e-6, generator=torch.Generator().manual_seed(0))
    diff = hutch - truth
    assert diff.abs().max() > 0.05  # one probe per point: noisy per point ...
    assert diff.mean().abs() < 4 * diff.std() / math.sqrt(len(diff)) + 0.01  # ... unbiased on average


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_a_known_jacobian(probe):
    """fn(x) = A x: div = tr(A) exactly; the estimate v^T A v averages to tr(A) and
    the exact path returns tr(A) itself; for a nonlinear fn, the exact path equals autograd's Jacobian trace."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    fn = lambda x: (x.flatten(1) @ A.T).view_as(x)
    x = torch.randn(50000, 1, 2, 3, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    v = v.sign() if probe == "rademacher" else v
    y, est = divergence(fn, x, v)
    assert torch.allclose(y, fn(x))
    assert est.std() > 0.5  # each estimate is noisy ...
    assert (est.mean() - A.trace()).abs() < 4 * est.std() / math.sqrt(len(est))  # ... its mean is tr(A)
    _, exact = divergence(fn, x[:3], None)
    assert torch.allclose(exact, A.trace().expand(3))
    nonlinear = lambda x: torch.tanh(fn(x)) * x
    _, exact = divergence(nonlinear, x[:2], None)
    jac = torch.autograd.functional.jacobian(lambda z: nonlinear(z.view(1, 1, 2, 3)).flatten(), x[0].flatten())
    assert exact[0].item() == pytest.approx(jac.trace().item())


# ---------------------------------------------------------------- the network

def test_unet_shapes_zero_initial_output_and_time_conditioning():
    net = UNet(Config(image_size=8, width=8, mults="1,2", attn="4"))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(net(x, torch.rand(3)), torch.zeros_like(x))  # zero-initialised output layer
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    a, b = net(x, torch.full((3,), 0.3)), net(x, torch.full((3,), 0.7))
    assert a.shape == x.shape and not torch.allclose(a, b)  # the output depends on continuous t
    with pytest.raises(ValueError, match="--sde"):
        Config(sde="vpp")
