"""The VAE's math: the KL, the reparameterisation, the likelihood terms, the ELBO and the IWAE bound; shapes."""
import math

import pytest
import torch
from torch import distributions as dist

from model import (VAE, Config, bernoulli_log_prob, decoder_mean, elbo, gaussian_log_prob, iwae_nll, kl_divergence,
                   log_likelihood, logistic_log_prob, model_log_likelihood, negative_elbo, observe, reparameterize,
                   sample, split_params)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- KL and reparameterisation

def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(3, 5)
    assert torch.equal(kl_divergence(zeros, zeros), zeros)
    mu, logvar = torch.randn(3, 5, generator=gen()), torch.randn(3, 5, generator=gen(1))
    assert (kl_divergence(mu, logvar) > 0).all()


def test_analytic_kl_matches_torch_distributions_and_a_monte_carlo_estimate():
    mu, logvar = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[0.0, -2.0, 1.0]])
    q = dist.Normal(mu, (0.5 * logvar).exp())
    p = dist.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.allclose(kl_divergence(mu, logvar), dist.kl_divergence(q, p), atol=1e-6)
    torch.manual_seed(0)
    z = q.sample((400_000,))  # (S, 1, 3)
    terms = q.log_prob(z) - p.log_prob(z)  # E_q[log q - log p] per dimension
    mc, standard_error = terms.mean(0), terms.std(0) / math.sqrt(len(z))
    assert (standard_error < 0.01).all()
    assert ((kl_divergence(mu, logvar) - mc).abs() < 4 * standard_error).all(), (kl_divergence(mu, logvar), mc)


def test_reparameterised_sample_has_the_posterior_mean_and_variance_and_carries_gradients():
    mu = torch.tensor([1.5, -2.0, 0.0], requires_grad=True)
    logvar = torch.tensor([0.0, math.log(0.25), math.log(4.0)], requires_grad=True)
    torch.manual_seed(0)
    z = reparameterize(mu.expand(100_000, 3), logvar.expand(100_000, 3))
    assert torch.allclose(z.mean(0), mu, atol=0.02)
    assert torch.allclose(z.var(0), logvar.exp(), rtol=0.02)
    z.sum().backward()  # dz/dmu = 1 per sample
    assert torch.allclose(mu.grad, torch.full((3,), 100_000.0)) and logvar.grad.abs().sum() > 0


# ---------------------------------------------------------------- likelihood terms

def test_bernoulli_term_equals_torch_distributions():
    logits = torch.randn(4, 1, 6, 6, generator=gen()) * 5
    x = torch.bernoulli(torch.full((4, 1, 6, 6), 0.4), generator=gen(1))
    expected = dist.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(bernoulli_log_prob(logits, x), expected, atol=1e-4)


def test_gaussian_term_equals_torch_distributions():
    mean, log_std = torch.randn(3, 2, 4, 4, generator=gen()), torch.randn(3, 2, 4, 4, generator=gen(1))
    x = torch.rand(3, 2, 4, 4, generator=gen(2)) * 2 - 1
    expected = dist.Normal(mean, log_std.exp()).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(gaussian_log_prob(mean, log_std, x), expected, atol=1e-4)


def logistic_cdf_difference(mean, log_scale, x):
    """log P(bin of x) by the direct CDF difference F(upper) - F(lower) in float64, edge bins open: the definition,
    not the stable form. Above the mean it is taken as S(lower) - S(upper) with S = 1 - F = F(-.) (the same number)
    so that float64 does not round F to 1."""
    mean, s, x = mean.double(), log_scale.double().exp(), x.double()
    hi = torch.where(x > 0.999, torch.full_like(x, math.inf), (x + 1 / 255 - mean) / s)
    lo = torch.where(x < -0.999, torch.full_like(x, -math.inf), (x - 1 / 255 - mean) / s)
    p = torch.where(x > mean, torch.sigmoid(-lo) - torch.sigmoid(-hi), torch.sigmoid(hi) - torch.sigmoid(lo))
    return torch.log(p).flatten(1).sum(1)


def test_discretised_logistic_equals_the_cdf_difference_and_sums_to_one_over_the_256_levels():
    levels = torch.arange(256).float() / 127.5 - 1  # every level an 8-bit pixel can take
    mean = torch.tensor([-0.3, 0.0, 0.95, -1.2]).view(4, 1, 1, 1).expand(4, 1, 16, 16)
    log_scale = torch.tensor([-2.0, -4.0, -1.0, -3.0]).view(4, 1, 1, 1).expand(4, 1, 16, 16)
    x = levels.view(1, 1, 16, 16).expand(4, 1, 16, 16)
    ours = logistic_log_prob(mean, log_scale, x)
    assert torch.allclose(ours.double(), logistic_cdf_difference(mean, log_scale, x), rtol=1e-4)
    # the 256 bins of one pixel partition the real line: probabilities sum to 1
    per_level = torch.stack([logistic_log_prob(mean[:, :, :1, :1], log_scale[:, :, :1, :1],
                                               torch.full((4, 1, 1, 1), float(v))) for v in levels])  # (256, 4)
    assert torch.allclose(per_level.double().exp().sum(0), torch.ones(4, dtype=torch.float64), atol=1e-4)


def test_discretised_logistic_stays_finite_far_from_the_mean_and_at_tiny_scales():
    x = torch.tensor([-1.0, 1.0, 0.0, 0.5]).view(1, 1, 2, 2)
    mean, log_scale = torch.full_like(x, 40.0), torch.full_like(x, -7.0)
    value = logistic_log_prob(mean, log_scale, x)
    assert torch.isfinite(value).all() and value.item() < -1e4


def test_discretised_logistic_and_its_gradient_stay_finite_at_extreme_means_and_scales_in_every_bin():
    # A diverging shapes run reached decoder means ~1e13 (log s at the clamps -7 and 3): there a and b round to the
    # same float32, so a bin width taken as b - a is 0 and log(0) = -inf, with a NaN gradient even in the edge bins
    # (torch.where backpropagates through the unselected branch). Far from the mean log P must follow the logistic
    # tail, log P ~ -|x -+ 1/255 - m| / s + log(1 - exp(-(2/255) / s)) (the edge bins: the tail alone, or 0).
    x = torch.tensor([-1.0, -0.8117647, 0.0, 1.0])  # both edge bins and two interior levels
    for log_s in (-7.0, 0.0, 3.0):
        for m in (1e4, -1e4, 1e6, -1e6, 1e13, -1e13):
            mean = torch.full((4, 1, 1, 1), m, requires_grad=True)
            log_scale = torch.full((4, 1, 1, 1), log_s, requires_grad=True)
            value = logistic_log_prob(mean, log_scale, x.view(4, 1, 1, 1))
            value.sum().backward()
            assert torch.isfinite(value).all() and torch.isfinite(mean.grad).all() \
                and torch.isfinite(log_scale.grad).all(), (m, log_s, value, mean.grad, log_scale.grad)
            xd, s = x.double(), math.exp(log_s)
            log_width = math.log(-math.expm1(-(2 / 255) / s))
            if m > 0:  # every bin lies far below the mean; the top edge bin k = 255 holds all the mass above it
                far = (xd + 1 / 255 - m) / s
                tail = torch.where(xd > 0.999, torch.zeros_like(xd), torch.where(xd < -0.999, far, far + log_width))
            else:
                far = -(xd - 1 / 255 - m) / s
                tail = torch.where(xd < -0.999, torch.zeros_like(xd), torch.where(xd > 0.999, far, far + log_width))
            assert torch.allclose(value.double(), tail, rtol=1e-5, atol=1e-3), (m, log_s, value, tail)


def test_log_likelihood_dispatches_each_decoder_head():
    for kwargs in [dict(likelihood="bernoulli"), dict(likelihood="gaussian", gaussian_variance="fixed"),
                   dict(likelihood="gaussian"), dict(likelihood="logistic", logistic_scale="pixel"),
                   dict(likelihood="logistic", logistic_scale="channel")]:
        cfg = Config(image_size=16, channels=3, z_dim=4, width=8, hidden=16, **kwargs)
        model = VAE(cfg)
        params = model.decoder(torch.randn(2, 4, generator=gen()))
        assert params.shape == (2, cfg.decoder_channels, 16, 16)
        x_in, x = observe(torch.randint(0, 256, (2, 3, 16, 16), generator=gen(1), dtype=torch.uint8),
                          cfg.likelihood, gen(2))
        lp = log_likelihood(cfg, model.decoder, params, x)
        assert lp.shape == (2,) and torch.isfinite(lp).all()
        if cfg.likelihood == "gaussian" and cfg.gaussian_variance == "fixed":
            expected = dist.Normal(params, cfg.gaussian_std).log_prob(x).flatten(1).sum(1)
            assert torch.allclose(lp, expected, rtol=1e-5)
        m = decoder_mean(cfg, model.decoder, params)
        assert m.shape == (2, 3, 16, 16) and m.min() >= -1 and m.max() <= 1


def test_the_logistic_mean_is_bounded_so_a_runaway_decoder_output_costs_a_bounded_loss():
    """m = tanh(raw): a raw output of +-100 (the shapes run's blow-up) puts the mean at the edge of the data's range,
    not 100 units away, so with s at its floor e^-7 a pixel costs at most ~2 / s nats (and its gradient is finite)."""
    cfg = Config(image_size=8, channels=3, z_dim=4, width=8, hidden=16, likelihood="logistic", logistic_scale="pixel")
    decoder = VAE(cfg).decoder
    raw = torch.full((1, 6, 8, 8), -7.0)
    raw[:, :3] = torch.tensor([100.0, -100.0, 0.0]).view(1, 3, 1, 1)
    raw.requires_grad_(True)
    x = torch.full((1, 3, 8, 8), 0.5)
    loc, log_s = split_params(cfg, decoder, raw)
    assert loc.abs().max() <= 1 and torch.allclose(loc[0, :, 0, 0], torch.tensor([1.0, -1.0, 0.0]), atol=1e-6)
    lp = log_likelihood(cfg, decoder, raw, x)
    assert lp.item() > -3 * 64 * (2 * math.exp(7) + 10)  # unbounded, the +-100 channels alone cost ~100 e^7 each
    lp.backward()
    assert torch.isfinite(raw.grad).all()


def test_observe_binarises_with_the_pixel_intensity_and_dequantises_within_the_level():
    k = torch.full((20_000, 1, 1, 1), 64, dtype=torch.uint8)
    x_in, x = observe(k, "bernoulli", gen())
    assert set(x.unique().tolist()) == {0.0, 1.0} and torch.equal(x_in, 2 * x - 1)
    assert abs(x.mean().item() - 64 / 255) < 0.01
    assert torch.equal(observe(k, "bernoulli", gen(3))[1], observe(k, "bernoulli", gen(3))[1])  # fixed seed
    _, u = observe(k, "gaussian", gen())
    assert ((u + 1) * 128).floor().eq(64).all()  # (k + U) / 128 - 1 stays in level k
    _, v = observe(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1), "logistic")
    assert v.flatten().tolist() == [-1.0, 1.0]


# ---------------------------------------------------------------- ELBO and IWAE

def toy_model():
    """A linear-Gaussian model with a closed-form log p(x): z ~ N(0, 1), x | z ~ N(a z, s^2), so x ~ N(0, a^2 + s^2);
    q(z|x) = N(0.1 x, 0.05) is deliberately off (the posterior is N(0.123 x, 0.0154)), so the bounds have gaps."""
    a, s = 2.0, 0.5
    x = torch.tensor([[-1.7], [2.5], [1.2]])  # (B, 1)
    true = dist.Normal(0.0, math.sqrt(a * a + s * s)).log_prob(x).squeeze(1).double()  # (B,)
    mu, logvar = 0.1 * x, torch.full_like(x, math.log(0.05))

    def log_p(z):  # z (k, B, 1) -> (k, B)
        return dist.Normal(a * z, s).log_prob(x.unsqueeze(0)).squeeze(-1)
    return x, mu, logvar, log_p, true


def test_iwae_is_at_least_the_elbo_and_tightens_with_k():
    """Averages over seeded repeats (standard errors <= 0.12 nats here): -ELBO >= -L_5 >= -L_50 >= -L_500 >= -log p(x),
    each step by a margin the measured gaps (0.9 to 4 nats) clear; a wrong sign or log-mean-exp would not."""
    x, mu, logvar, log_p, true = toy_model()
    nelbo = torch.stack([-elbo(mu, logvar, log_p, generator=gen(i)) for i in range(2000)]).double().mean(0)
    nll = {k: torch.stack([iwae_nll(x, mu, logvar, log_p, k=k, chunk=7, generator=gen(100 + i))
                           for i in range(r)]).mean(0) for k, r in ((1, 2000), (5, 400), (50, 200), (500, 200))}
    assert (nll[1] - nelbo).abs().max() < 0.3  # k = 1 is the ELBO (its sampled-KL form): the same expectation
    margin = 0.1
    assert (nll[5] < nelbo - margin).all()
    assert (nll[50] < nll[5] - margin).all() and (nll[500] < nll[50] - margin).all()  # the NLL bound falls with k
    assert (nll[500] > -true - 0.05).all()  # and stays an upper bound on -log p(x)


def test_iwae_at_the_true_posterior_is_exact_for_any_k():
    """With q(z|x) = p(z|x) every importance weight equals p(x): L_k = log p(x) exactly, for any k."""
    a, s = 2.0, 0.5
    x = torch.tensor([[0.3], [-1.7]])
    var = 1 / (1 + a * a / s ** 2)  # posterior variance
    mu, logvar = var * a / s ** 2 * x, torch.full_like(x, math.log(var))
    log_p = lambda z: dist.Normal(a * z, s).log_prob(x.unsqueeze(0)).squeeze(-1)
    true = dist.Normal(0.0, math.sqrt(a * a + s * s)).log_prob(x).squeeze(1).double()
    for k in (1, 10, 1000):
        assert torch.allclose(iwae_nll(x, mu, logvar, log_p, k=k, chunk=64, generator=gen()), -true, atol=1e-5)


def test_iwae_accepts_chunking_without_changing_its_value_and_keeps_float64():
    x, mu, logvar, log_p, _ = toy_model()
    whole = iwae_nll(x, mu, logvar, log_p, k=64, chunk=64, generator=gen(5))
    assert whole.dtype == torch.float64
    # the same noise stream drawn in chunks of 16 (16 x 3 x 1 values each): the chunked log-sum-exp is the same
    chunked = iwae_nll(x, mu, logvar, log_p, k=64, chunk=16, generator=gen(5))
    assert torch.allclose(whole, chunked, rtol=0, atol=1e-9)
    assert not torch.allclose(whole, iwae_nll(x, mu, logvar, log_p, k=64, chunk=16, generator=gen(6)), atol=1e-3)
    with pytest.raises(ValueError):
        iwae_nll(x, mu[:2], logvar[:2], log_p, k=4)


def test_model_elbo_and_iwae_run_on_images_and_agree_with_the_training_terms():
    cfg = Config(image_size=28, channels=1, z_dim=6, width=8, hidden=16)
    model = VAE(cfg).eval()
    x_in, x = observe(torch.randint(0, 256, (5, 1, 28, 28), generator=gen(), dtype=torch.uint8), "bernoulli", gen(1))
    mu, logvar = model.encoder(x_in)
    log_p = model_log_likelihood(model, x)
    with torch.no_grad():
        nelbo = torch.stack([-elbo(mu, logvar, log_p, generator=gen(i)) for i in range(300)]).mean(0)
        nll = torch.stack([iwae_nll(x, mu, logvar, log_p, k=50, chunk=20, generator=gen(i)) for i in range(20)]).mean(0)
        torch.manual_seed(3)
        rec, kl, _ = model(x_in, x)
        torch.manual_seed(3)
        same = negative_elbo(*model(x_in, x)[:2])
    assert nelbo.shape == nll.shape == (5,) and (nll < nelbo.double()).all()
    assert torch.allclose(same, (-rec + kl.sum(1)).mean())
    assert (nelbo > 0).all() and (nelbo < 28 * 28 * 2).all()  # an untrained Bernoulli decoder: about D ln 2 nats


@pytest.mark.parametrize("size", [28, 32, 64, 16])
def test_networks_have_the_right_shapes_at_each_image_size(size):
    cfg = Config(image_size=size, channels=3, z_dim=5, width=4, hidden=8, likelihood="logistic", logistic_scale="pixel")
    model = VAE(cfg)
    mu, logvar = model.encoder(torch.zeros(2, 3, size, size))
    assert mu.shape == logvar.shape == (2, 5)
    assert model.decoder(mu).shape == (2, 6, size, size)
    assert sample(model, 3, rng=gen()).shape == (3, 3, size, size)


@pytest.mark.parametrize("size", [24 + 6, 9 * 2 ** 3])
def test_image_sizes_that_do_not_halve_to_8_or_less_are_refused(size):
    with pytest.raises(ValueError, match="--image-size"):
        Config(image_size=size)


def test_kl_gradient_pulls_the_posterior_towards_the_prior():
    mu, logvar = torch.tensor([[1.0]], requires_grad=True), torch.tensor([[1.0]], requires_grad=True)
    kl_divergence(mu, logvar).sum().backward()
    assert mu.grad.item() == pytest.approx(1.0) and logvar.grad.item() == pytest.approx(0.5 * (math.e - 1))
