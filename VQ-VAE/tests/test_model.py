"""The math the paper relies on: quantisation to codebook rows, the straight-through gradient, the EMA codebook
update (Appendix A.1), dead-code restarts, the losses of Eq. 3, perplexity, and an exactly causal prior."""
import math

import pytest
import torch
import torch.nn.functional as F

from model import (VQVAE, Codebook, Config, Prior, codebook_loss, commitment_loss, ema_update, perplexity,
                   prior_nll, restart_dead_codes, sample, sample_codes, straight_through, track_counts)

SMALL = dict(image_size=16, hidden=16, res_hidden=8, codes=12, code_dim=4, prior_width=16, prior_layers=2,
             prior_heads=2)


def test_quantised_vectors_are_codebook_rows_and_the_nearest_ones():
    torch.manual_seed(0)
    vq = VQVAE(Config(**SMALL))
    vq.codebook.embedding.data.normal_()  # spread the codes so that nearest-neighbour ties cannot occur
    z_e = vq.encoder(torch.rand(3, 1, 16, 16) * 2 - 1)
    z_q, codes = vq.quantize(z_e)
    assert z_q.shape == z_e.shape and codes.shape == (3, 4, 4)
    e = vq.codebook.embedding
    flat_q, flat_e = z_q.permute(0, 2, 3, 1).reshape(-1, 4), z_e.permute(0, 2, 3, 1).reshape(-1, 4)
    for q, z, k in zip(flat_q, flat_e, codes.flatten()):
        assert torch.equal(q, e[k])  # exactly a row of the codebook
        assert torch.argmin(((e - z) ** 2).sum(1)) == k  # Eq. 1: the nearest row


def test_straight_through_gradient_reaches_the_encoder_unchanged():
    """d L / d z_e (through the estimator) == d L / d z_q (the decoder's gradient at the quantised input)."""
    torch.manual_seed(0)
    vq = VQVAE(Config(**SMALL))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    z_e = vq.encoder(x).detach().requires_grad_(True)
    z_q, _ = vq.quantize(z_e)
    assert not torch.allclose(z_q, z_e)  # the test would be vacuous if quantisation changed nothing
    decoder_input = straight_through(z_e, z_q)
    decoder_input.retain_grad()
    F.mse_loss(vq.decoder(decoder_input), x).backward()
    assert z_e.grad.abs().sum() > 0 and torch.equal(z_e.grad, decoder_input.grad)  # copied, unchanged
    z_q_leaf = z_q.detach().requires_grad_(True)  # the decoder's gradient at z_q itself
    (grad_q,) = torch.autograd.grad(F.mse_loss(vq.decoder(z_q_leaf), x), z_q_leaf)
    assert torch.allclose(z_e.grad, grad_q, rtol=1e-4, atol=1e-8)  # z_e + (z_q - z_e) == z_q up to rounding
    assert torch.allclose(straight_through(z_e, z_q), z_q, atol=1e-6)  # the forward value is z_q


def test_ema_update_conserves_counts_and_sets_codes_to_cluster_means():
    torch.manual_seed(0)
    book = Codebook(Config(**SMALL))
    book.cluster_size.uniform_(0.5, 5)
    decay, eps, n = 0.9, 1e-3, 50
    old_total = book.cluster_size.sum().clone()
    z, codes = torch.randn(n, 4), torch.randint(0, 12, (n,))
    codes[:12] = torch.arange(12)  # every code gets at least one vector
    old_sum = book.embed_sum.clone()
    smoothed = ema_update(book, z, codes, decay, eps)
    new_total = book.cluster_size.sum()
    assert torch.allclose(new_total, decay * old_total + (1 - decay) * n)  # Eq. 6 before smoothing
    assert torch.allclose(smoothed.sum(), new_total)  # Laplace smoothing keeps the total
    assert (smoothed > 0).all() and not torch.allclose(smoothed, book.cluster_size)
    for k in range(12):  # Eq. 7-8: m_k = decay m_k + (1 - decay) sum of its vectors, e_k = m_k / N~_k
        m = decay * old_sum[k] + (1 - decay) * z[codes == k].sum(0)
        assert torch.allclose(book.embed_sum[k], m, atol=1e-6)
        assert torch.allclose(book.embedding[k], m / smoothed[k], atol=1e-5)


def test_ema_with_decay_near_zero_moves_each_code_to_the_mean_of_its_vectors():
    book = Codebook(Config(**SMALL))
    z, codes = torch.randn(24, 4), torch.arange(24) % 12
    ema_update(book, z, codes, decay=1e-9, eps=1e-12)
    means = torch.stack([z[codes == k].mean(0) for k in range(12)])
    assert torch.allclose(book.embedding, means, atol=1e-5)  # k-means' centroid step


def test_dead_codes_restart_at_encoder_outputs_and_live_ones_stay():
    torch.manual_seed(0)
    book = Codebook(Config(**SMALL))
    book.cluster_size.fill_(3.0)
    book.cluster_size[[2, 7]] = 0.2
    live = book.embedding.detach().clone()
    z = torch.randn(30, 4)
    dead = restart_dead_codes(book, z, threshold=1.0)
    assert dead.tolist() == [2, 7]
    for k in dead:
        assert any(torch.equal(book.embedding[k], row) for row in z)  # an encoder output of the batch
        assert book.cluster_size[k] == 1.0 and torch.equal(book.embed_sum[k], book.embedding[k])
    keep = [k for k in range(12) if k not in (2, 7)]
    assert torch.equal(book.embedding[keep], live[keep])


def test_track_counts_is_the_ema_of_the_code_histogram():
    book = Codebook(Config(**SMALL))
    track_counts(book, torch.tensor([0, 0, 3]), decay=0.5)
    expected = 0.5 * torch.ones(12)
    expected[0] += 0.5 * 2
    expected[3] += 0.5 * 1
    assert torch.allclose(book.cluster_size, expected)


def test_eq3_terms_send_gradients_where_the_stop_gradients_say():
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    e = torch.randn(2, 4, 3, 3, requires_grad=True)
    commit = commitment_loss(z_e, e, beta=0.25)
    assert torch.allclose(commit, 0.25 * ((z_e - e) ** 2).mean())
    g_ze, g_e = torch.autograd.grad(commit, [z_e, e], allow_unused=True)
    assert g_ze.abs().sum() > 0 and g_e is None  # commitment: encoder only
    g_ze, g_e = torch.autograd.grad(codebook_loss(z_e, e), [z_e, e], allow_unused=True)
    assert g_ze is None and g_e.abs().sum() > 0  # codebook term: codes only


def test_loss_mode_trains_the_codebook_and_ema_mode_does_not():
    assert Codebook(Config(**SMALL, codebook="loss")).embedding.requires_grad
    assert not Codebook(Config(**SMALL)).embedding.requires_grad


def test_perplexity_is_k_for_even_use_and_1_for_one_code():
    assert math.isclose(perplexity(torch.arange(12).repeat(5), 12), 12, rel_tol=1e-9)
    assert math.isclose(perplexity(torch.full((40,), 3), 12), 1.0)
    assert math.isclose(perplexity(torch.tensor([0, 1]), 12), 2.0, rel_tol=1e-9)


def test_prior_is_causal_a_later_code_never_changes_an_earlier_position():
    torch.manual_seed(0)
    prior = Prior(Config(**SMALL)).eval()
    codes = torch.randint(0, 12, (3, 16))
    base = prior(codes)
    for j in (0, 5, 15):
        changed = codes.clone()
        changed[:, j] = (changed[:, j] + 1) % 12
        out = prior(changed)
        assert torch.equal(out[:, :j + 1], base[:, :j + 1]), j  # position t sees codes < t only
        if j < 15:
            assert not torch.allclose(out[:, j + 1:], base[:, j + 1:])  # ... and does see them


def test_incremental_sampling_logits_equal_the_full_forward():
    """Prior.step with key/value caches gives the logits of the causal forward pass, position by position."""
    torch.manual_seed(0)
    prior = Prior(Config(**SMALL)).eval()
    codes = torch.randint(0, 12, (3, 16))
    full = prior(codes)  # (3, 16, 12)
    previous, caches = codes.new_full((3,), prior.start), [[] for _ in prior.blocks]
    for t in range(16):
        assert torch.allclose(prior.step(previous, t, caches), full[:, t], atol=1e-5), t
        previous = codes[:, t]


def test_prior_nll_is_the_mean_cross_entropy_per_code():
    torch.manual_seed(0)
    prior = Prior(Config(**SMALL)).eval()
    codes = torch.randint(0, 12, (2, 4, 4))
    logp = prior(codes.flatten(1)).log_softmax(-1)  # (2, 16, 12)
    manual = -logp.gather(2, codes.flatten(1).unsqueeze(2)).squeeze(2).mean(1)
    assert torch.allclose(prior_nll(prior, codes), manual, atol=1e-6)
    assert abs(prior_nll(prior, codes).mean().item() - math.log(12)) < 0.5  # near uniform at init


def test_sampling_follows_temperature_and_top_k():
    torch.manual_seed(0)
    cfg = Config(**SMALL)
    prior = Prior(cfg).eval()
    prior.head.bias.data = torch.linspace(0, 6, 12)  # a strong preference for the last codes
    top1 = sample_codes(prior, 8, top_k=1, rng=torch.Generator().manual_seed(0))
    assert top1.shape == (8, 4, 4) and (top1 == top1[0, 0, 0]).all() and top1[0, 0, 0] == 11  # greedy
    cold = sample_codes(prior, 64, temperature=0.1, rng=torch.Generator().manual_seed(0))
    hot = sample_codes(prior, 64, temperature=10.0, rng=torch.Generator().manual_seed(0))
    assert (cold == 11).float().mean() > 0.9 > (hot == 11).float().mean()
    top3 = sample_codes(prior, 64, top_k=3, rng=torch.Generator().manual_seed(0))
    assert set(top3.unique().tolist()) <= {9, 10, 11}
    again = sample_codes(prior, 64, top_k=3, rng=torch.Generator().manual_seed(0))
    assert torch.equal(top3, again)  # seeded


def test_samples_are_images_in_range():
    torch.manual_seed(0)
    cfg = Config(**SMALL)
    x = sample(VQVAE(cfg).eval(), Prior(cfg).eval(), 3, rng=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 16, 16) and x.min() >= -1 and x.max() <= 1


@pytest.mark.parametrize("size,grid", [(32, 8), (28, 7)])
def test_the_code_grid_is_a_quarter_of_the_image(size, grid):
    vq = VQVAE(Config(**{**SMALL, "image_size": size}))
    x_hat, z_e, _, codes = vq(torch.zeros(1, 1, size, size))
    assert codes.shape == (1, grid, grid) and x_hat.shape == (1, 1, size, size) and z_e.shape[1] == 4


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of 4"):
        Config(image_size=30)
    with pytest.raises(ValueError, match="ema or loss"):
        Config(codebook="kmeans")
