"""Score-based generative modelling through stochastic differential equations (score SDEs).

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole, "Score-Based Generative Modeling through Stochastic
Differential Equations", ICLR 2021. https://arxiv.org/abs/2011.13456  (authors' code: github.com/yang-song/score_sde)

Forward SDE (Eq. 5) dx = f(x, t) dt + g(t) dw on t in [0, T = 1], with one of
    VE  (Eq. 9):  dx = sqrt(d[sigma^2(t)]/dt) dw,   sigma(t) = sigma_min (sigma_max / sigma_min)^t
    VP  (Eq. 11): dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw,   beta(t) = beta_min + t (beta_max - beta_min)
    sub-VP (Eq. 17): the VP drift, g(t)^2 = beta(t) (1 - exp(-2 int_0^t beta(s) ds))
Perturbation kernels p_0t(x(t) | x(0)) = N(m(t) x(0), s(t)^2 I) (Eq. 29 and Appendix B):     (SDE.marginal)
    VE: m = 1, s = sigma(t);  VP: m = exp(-1/2 int beta), s^2 = 1 - m^2;  sub-VP: m as VP, s = 1 - m^2.
Reverse-time SDE (Eq. 6):  dx = [f(x, t) - g(t)^2 grad_x log p_t(x)] dt + g(t) dw_bar.
Training: denoising score matching (Eq. 7) with lambda(t) = s(t)^2, i.e. with x(t) = m x(0) + s z,      (dsm_loss)
    E_t E_x(0) E_z || s(t) s_theta(x(t), t) + z ||^2,  t ~ U(eps, 1).
  The network outputs the scaled score s(t) s_theta (about -z); s_theta = output / s(t)           (score_fn)
Samplers (all from the prior p_T: N(0, I) for VP / sub-VP, N(0, sigma_max^2 I) for VE):
  * Euler-Maruyama on Eq. 6 (Appendix D.1).                                                   (euler_maruyama)
  * Predictor-corrector (Algorithm 1; Algorithms 2 (VE) and 3 (VP) with the reverse-diffusion predictor of
    Eq. 45-47 and Langevin corrector steps of size eps_i = 2 alpha_i (r ||z|| / ||s_theta||)^2, r = snr,
    Algorithms 4 and 5).                                                             (pc_sampler, reverse_diffusion_step, langevin_step)
  * Probability-flow ODE (Eq. 13)  dx/dt = f(x, t) - 1/2 g(t)^2 s_theta(x, t), integrated from T to eps by
    scipy.integrate.solve_ivp (RK45, rtol / atol); the number of function evaluations (NFE) is returned. (ode_sampler)
Likelihood (Eq. 39 / Appendix D.2): along the ODE, log p_0(x(0)) = log p_T(x(T)) + int_0^T div f~(x(t), t) dt,
  with div f~ from the Hutchinson-Skilling estimator E_v[v^T (d f~ / dx) v] (Rademacher v, one fixed v per image
  for the whole solve), integrated from eps to T with the same solver.                         (ode_likelihood)

Conventions: images in [-1, 1], shape (B, C, H, W); t is continuous in [0, 1]. The network sees 999 t: for VE
that is an affine function of log sigma(t) (log sigma is linear in t), the paper's log-sigma conditioning up to
an affine map. Losses are means over batch and pixels (the authors' code sums over pixels: only the learning
rate's scale differs). Bits/dim follow shared.metrics: -log p of uniformly dequantised data in [-1, 1), converted
to the 8-bit scale (dequantized_bits_per_dim).

Deviations:
  * The network (unet.py) is DDPM's small U-Net (train.py: width 16, multipliers 1,2,2, one block per level, attention at
    8x8) with DDPM's sinusoidal embedding of 999 t, not DDPM++ / NCSN++ (the paper's: `--width 128 --mults
    1,2,2,2 --blocks 4`, plus FIR resampling, skip rescaling and Fourier features it has and this has not).
  * The VE kernel's std is sigma(t), as in the authors' code: exact for data already perturbed by sigma_min
    (the forward SDE from x(0) alone gives sigma(t)^2 - sigma_min^2).
  * The Langevin step size uses ||z|| and ||s_theta|| averaged over the batch, as the authors' code does
    (Algorithms 4-5 are written for one image; per-image norms are heavy-tailed in few dimensions). The VP predictor's beta_i = 1 - alpha_bar(t_i) / alpha_bar(t_{i+1}) on the
    sampler's time grid (the authors: beta_i = beta(t_i) / N, which exceeds 1 for N < 20); sub-VP's predictor is the Euler discretisation.
  * GroupNorm has gcd(32, C // 4) groups, >= 4 channels each (DDPM/model.py: gcd(32, C), one channel per group
    at C <= 32, which erases the time embedding): a narrow network keeps its time input.
  * The EMA decay is warmed up, min(decay, (1 + step) / (10 + step)) (paper: 0.9999 VP, 0.999 VE, throughout).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import integrate
from torch import nn

SDES = ("vp", "ve", "subvp")
SAMPLERS = ("pc", "em", "ode")


@dataclass
class Config:
    image_size: int = 32  # H = W, divisible by 2^(len(mults) - 1)
    channels: int = 1  # image channels
    width: int = 32  # channels of the first level (paper DDPM++: 128)
    mults: str = "1,2,2"  # channel multiplier of each resolution level, comma-separated (paper: 1,2,2,2)
    blocks: int = 1  # residual blocks per level (paper DDPM++: 4)
    attn: str = "8"  # resolutions with self-attention, comma-separated ("" = none; paper: 16)
    dropout: float = 0.0  # dropout inside the residual blocks (paper CIFAR: 0.1)
    sde: str = "vp"  # vp | ve | subvp
    beta_min: float = 0.1  # VP / sub-VP beta(0) (paper: 0.1)
    beta_max: float = 20.0  # VP / sub-VP beta(1) (paper: 20)
    sigma_min: float = 0.01  # VE sigma(0) (paper: 0.01)
    sigma_max: float = 50.0  # VE sigma(1): about the largest distance between training images (paper CIFAR: 50)

    def __post_init__(self) -> None:
        levels = self.levels
        if self.image_size % 2 ** (len(levels) - 1):
            raise ValueError(f"--image-size {self.image_size} must be divisible by 2^{len(levels) - 1} (--mults)")
        if self.sde not in SDES:
            raise ValueError(f"--sde must be one of {SDES}, got {self.sde!r}")
        if min(self.width, self.blocks, *levels) <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("--width, --blocks, --mults must be positive, --dropout in [0, 1)")
        if not (0 < self.beta_min < self.beta_max and 0 < self.sigma_min < self.sigma_max):
            raise ValueError("need 0 < --beta-min < --beta-max and 0 < --sigma-min < --sigma-max")

    @property
    def levels(self) -> list[int]:
        return [int(m) for m in self.mults.split(",")]

    @property
    def attn_resolutions(self) -> set[int]:
        return {int(r) for r in self.attn.split(",") if r.strip()}


# ---------------------------------------------------------------- the SDEs

class SDE:
    """The forward SDE of Config.sde: drift f, diffusion g, the kernel p_0t and the prior p_T (t in [0, 1])."""

    T = 1.0

    def __init__(self, kind: str, beta_min: float = 0.1, beta_max: float = 20.0, sigma_min: float = 0.01,
                 sigma_max: float = 50.0) -> None:
        self.kind, self.b0, self.b1, self.s0, self.s1 = kind, beta_min, beta_max, sigma_min, sigma_max

    def _t(self, t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
        """t as a (B, 1, 1, 1) tensor (or a scalar tensor) in like's dtype and device."""
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
        return t.view(-1, *[1] * (like.dim() - 1)) if t.dim() else t

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.b0 + t * (self.b1 - self.b0)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.s0 * (self.s1 / self.s0) ** t

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """log m(t) = -1/2 int_0^t beta = -1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min (VP, sub-VP)."""
        return -0.25 * t ** 2 * (self.b1 - self.b0) - 0.5 * t * self.b0

    def marginal(self, t: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m(t), s(t)) of the kernel p_0t(x(t) | x(0)) = N(m x(0), s^2 I), shaped to broadcast with like."""
        t = self._t(t, like)
        if self.kind == "ve":
            return torch.ones_like(t), self.sigma(t)
        m = self.log_mean_coeff(t).exp()
        return m, (-torch.expm1(2 * self.log_mean_coeff(t))).sqrt() if self.kind == "vp" else -torch.expm1(
            2 * self.log_mean_coeff(t))

    def sde(self, x: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x, t), g(t)) of Eq. 9 / 11 / 17."""
        t = self._t(t, x)
        if self.kind == "ve":
            return torch.zeros_like(x), self.sigma(t) * math.sqrt(2 * math.log(self.s1 / self.s0))
        drift, beta = -0.5 * self.beta(t) * x, self.beta(t)
        if self.kind == "subvp":
            beta = beta * -torch.expm1(-2 * self.b0 * t - (self.b1 - self.b0) * t ** 2)
        return drift, beta.sqrt()

    def prior_std(self) -> float:
        return self.s1 if self.kind == "ve" else 1.0

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I) per item (B,)."""
        D, s = z[0].numel(), self.prior_std()
        return -0.5 * D * math.log(2 * math.pi * s ** 2) - z.flatten(1).pow(2).sum(1) / (2 * s ** 2)

    def discretize(self, x: torch.Tensor, t: float, t_next: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(f_i, G_i, alpha_i) of the forward step t_next -> t of the discrete chain behind the reverse-diffusion
        predictor: VE is SMLD's (f = 0, G^2 = sigma_t^2 - sigma_next^2, Eq. 47), VP DDPM's (f = (sqrt(1 - b) - 1) x,
        G^2 = b, Eq. 46, with 1 - b = alpha_bar(t) / alpha_bar(t_next), exact for any step), sub-VP Euler's (f dt, g sqrt(dt)). alpha_i is the
        Langevin corrector's (1 - b for VP, else 1)."""
        dt = t - t_next
        tt = torch.tensor(t, dtype=x.dtype, device=x.device)
        if self.kind == "ve":
            return torch.zeros_like(x), (self.sigma(tt) ** 2 - self.sigma(tt - dt) ** 2).sqrt(), 1.0
        if self.kind == "vp":  # 1 - b = alpha_bar(t) / alpha_bar(t_next) = (m(t) / m(t_next))^2, b ~ beta(t) dt
            b = -torch.expm1(2 * (self.log_mean_coeff(tt) - self.log_mean_coeff(tt - dt)))
            return ((1 - b).sqrt() - 1) * x, b.sqrt(), float(1 - b)
        f, g = self.sde(x, t)
        return f * dt, g * math.sqrt(dt), 1.0


def sde_of(cfg: Config) -> SDE:
    return SDE(cfg.sde, cfg.beta_min, cfg.beta_max, cfg.sigma_min, cfg.sigma_max)


# ---------------------------------------------------------------- the objective

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def score_fn(net: nn.Module, sde: SDE) -> ScoreFn:
    """s_theta(x, t) = net(x, t) / s(t): x (B, C, H, W) in any float dtype, t (B,) -> the score in x's dtype."""
    dtype = next(net.parameters()).dtype

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, std = sde.marginal(t, x)
        return net(x.to(dtype), t.to(dtype)).to(x.dtype) / std
    return score


def perturb(sde: SDE, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x(t) = m(t) x(0) + s(t) z, a draw from the kernel p_0t (Eq. 29), and s(t) (B, 1, 1, 1)."""
    mean, std = sde.marginal(t, x0)
    return mean * x0 + std * z, std


def dsm_loss(net: nn.Module, sde: SDE, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 7 with lambda(t) = s(t)^2: grad log p_0t(x(t) | x(0)) = -z / s(t), so
    lambda ||s_theta - grad log p_0t||^2 = || s(t) s_theta + z ||^2 = || net(x(t), t) + z ||^2 (mean)."""
    x_t, _ = perturb(sde, x0, t, z)
    return F.mse_loss(net(x_t, t).float(), -z.float())


# Copied from DDPM/model.py: ema_update
@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> float:
    """theta_ema <- beta theta_ema + (1 - beta) theta, beta = min(decay, (1 + step) / (10 + step)): the warm-up
    keeps a short run's average off its random initialisation. Returns the beta used."""
    # Adapted from ConditionalGAN/model.py (ema_update): no buffers to copy (GroupNorm has none)
    beta = min(decay, (1 + step) / (10 + step))
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - beta)
    return beta


# ---------------------------------------------------------------- sampling

def time_grid(n: int, eps: float, T: float = 1.0) -> list[float]:
    """n + 1 times from T down to eps, evenly spaced: n steps."""
    return torch.linspace(T, eps, n + 1, dtype=torch.float64).tolist()


def reverse_diffusion_step(sde: SDE, score: ScoreFn, x: torch.Tensor, t: float, t_next: float,
                           z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictor (Eq. 45-47): x_mean = x - f_i + G_i^2 s_theta(x, t), x_next = x_mean + G_i z. Returns both."""
    f, G, _ = sde.discretize(x, t, t_next)
    x_mean = x - f + G ** 2 * score(x, x.new_full((x.shape[0],), t))
    return x_mean + G * z, x_mean


def langevin_step(sde: SDE, score: ScoreFn, x: torch.Tensor, t: float, t_next: float, snr: float,
                  z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrector (Algorithms 4, 5): eps = 2 alpha (snr ||z|| / ||s_theta||)^2 (norms averaged over the batch),
    x_mean = x + eps s_theta, x = x_mean + sqrt(2 eps) z."""
    _, _, alpha = sde.discretize(x, t, t_next)
    grad = score(x, x.new_full((x.shape[0],), t))
    g_norm, z_norm = grad.flatten(1).norm(dim=1).mean(), z.flatten(1).norm(dim=1).mean()  # batch means (see Deviations)
    step = 2 * alpha * (snr * z_norm / g_norm) ** 2 if g_norm > 0 else 0.0  # a zero score (untrained net): no step
    x_mean = x + step * grad
    return x_mean + math.sqrt(2 * step) * z, x_mean


@torch.no_grad()
def pc_sampler(sde: SDE, score: ScoreFn, x_T: torch.Tensor, steps: int, snr: float = 0.16, corrector_steps: int = 1,
               eps: float = 1e-3, generator: torch.Generator | None = None, keep: int = 0) -> tuple[torch.Tensor, list]:
    """Algorithm 1 (2 for VE, 3 for VP): at each of `steps` times, `corrector_steps` Langevin steps, then one
    reverse-diffusion step; returns the last x_mean (no noise added at the end) and about `keep` snapshots."""
    x, traj, ts = x_T, [], time_grid(steps, eps, sde.T)
    randn = lambda: torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    every = max(steps // keep, 1) if keep else 0
    for i in range(steps):
        for _ in range(corrector_steps):
            x, _ = langevin_step(sde, score, x, ts[i], ts[i + 1], snr, randn())
        x, x_mean = reverse_diffusion_step(sde, score, x, ts[i], ts[i + 1], randn())
        if every and (i % every == 0 or i == steps - 1):
            traj.append(x_mean)
    return x_mean, traj


@torch.no_grad()
def euler_maruyama(sde: SDE, score: ScoreFn, x_T: torch.Tensor, steps: int, eps: float = 1e-3,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 6 by Euler-Maruyama, dt = t_{i+1} - t_i < 0: x_mean = x + [f - g^2 s_theta] dt, x = x_mean + g sqrt(-dt) z;
    returns the last x_mean."""
    x, ts = x_T, time_grid(steps, eps, sde.T)
    for i in range(steps):
        t, dt = x.new_full((x.shape[0],), ts[i]), ts[i + 1] - ts[i]
        f, g = sde.sde(x, t)
        x_mean = x + (f - g ** 2 * score(x, t)) * dt
        x = x_mean + g * math.sqrt(-dt) * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x_mean


def ode_drift(sde: SDE, score: ScoreFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's f~(x, t) = f(x, t) - 1/2 g(t)^2 s_theta(x, t) (Eq. 13)."""
    f, g = sde.sde(x, t)
    return f - 0.5 * g ** 2 * score(x, t)


@torch.no_grad()
def ode_sampler(sde: SDE, score: ScoreFn, x_T: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5,
                eps: float = 1e-3, method: str = "RK45") -> tuple[torch.Tensor, int]:
    """x(eps) from x(T) along Eq. 13 by solve_ivp (float64 state); returns it and the number of evaluations."""
    shape, like = x_T.shape, x_T.double()

    def fun(t: float, y: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(y).to(like.device).view(shape)
        return ode_drift(sde, score, x, x.new_full((shape[0],), t)).cpu().numpy().ravel()

    sol = integrate.solve_ivp(fun, (sde.T, eps), like.cpu().numpy().ravel(), rtol=rtol, atol=atol, method=method)
    return torch.from_numpy(sol.y[:, -1]).view(shape).to(x_T.device, x_T.dtype), int(sol.nfev)


def divergence(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
               probe: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(x), div_x fn per item (B,)): Hutchinson-Skilling v^T (d fn / dx) v with v = probe (one vector-Jacobian
    product; unbiased when E[v v^T] = I), or exact (one product per dimension) when probe is None."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = fn(x)
        if probe is not None:
            (vjp,) = torch.autograd.grad(y, x, probe)
            return y.detach(), (vjp * probe).flatten(1).sum(1)
        div = x.new_zeros(x.shape[0])
        for i in range(x[0].numel()):
            e = torch.zeros_like(x).flatten(1)
            e[:, i] = 1
            (vjp,) = torch.autograd.grad(y, x, e.view_as(x), retain_graph=True)
            div += vjp.flatten(1)[:, i]
        return y.detach(), div


def ode_likelihood(sde: SDE, score: ScoreFn, x: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5,
                   eps: float = 1e-5, probe: str = "rademacher", generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, int]:
    """-log p_0(x) in nats per item (B,) and the NFE: [x, delta] solved from eps to T with dx/dt = f~ and
    d delta/dt = div f~, then log p_0(x) = log p_T(x(T)) + delta(T) (Eq. 39). probe: rademacher | gaussian |
    exact (the true divergence, for tests)."""
    shape, n, x64 = x.shape, x[0].numel() * x.shape[0], x.double()
    v = None
    if probe != "exact":
        v = torch.randn(shape, generator=generator, dtype=torch.float64)
        v = (v.sign() if probe == "rademacher" else v).to(x.device)

    def fun(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y[:n]).to(x.device).view(shape)
        drift, div = divergence(lambda z: ode_drift(sde, score, z, z.new_full((shape[0],), t)), xt, v)
        return np.concatenate([drift.cpu().numpy().ravel(), div.cpu().numpy()])

    y0 = np.concatenate([x64.cpu().numpy().ravel(), np.zeros(shape[0])])
    sol = integrate.solve_ivp(fun, (eps, sde.T), y0, rtol=rtol, atol=atol, method="RK45")
    z, delta = torch.from_numpy(sol.y[:n, -1]).view(shape), torch.from_numpy(sol.y[n:, -1])
    return -(sde.prior_logp(z) + delta), int(sol.nfev)


@torch.no_grad()
def sample(net: nn.Module, n: int, sampler: str = "pc", steps: int = 100, snr: float = 0.16, corrector_steps: int = 1,
           rtol: float = 1e-3, atol: float = 1e-3, generator: torch.Generator | None = None,
           x_T: torch.Tensor | None = None, clip: bool = True) -> tuple[torch.Tensor, int]:
    """n images (n, C, H, W) from x_T ~ p_T, clamped to [-1, 1] if clip, and the network evaluations per image.
    sampler: pc (`steps` predictor steps, `corrector_steps` Langevin steps each at `snr`) | em | ode (rtol, atol)."""
    cfg, sde = net.cfg, sde_of(net.cfg)
    param = next(net.parameters())
    shape = (n, cfg.channels, cfg.image_size, cfg.image_size)
    if x_T is None:
        x_T = torch.randn(shape, generator=generator) * sde.prior_std()
    x_T, score = x_T.to(param.device, param.dtype), score_fn(net, sde)
    if sampler == "pc":
        x, nfe = pc_sampler(sde, score, x_T, steps, snr, corrector_steps, generator=generator)[0], steps * (
            1 + corrector_steps)
    elif sampler == "em":
        x, nfe = euler_maruyama(sde, score, x_T, steps, generator=generator), steps
    elif sampler == "ode":
        x, nfe = ode_sampler(sde, score, x_T, rtol, atol)
    else:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    return x.clamp(-1, 1) if clip else x, nfe
