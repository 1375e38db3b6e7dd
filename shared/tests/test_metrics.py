"""Tests for shared/metrics.py: CPU, seeded, small; scipy / numpy only as independent references."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats
import torch

from shared import metrics
from shared.metrics import (auroc, bits_per_dim, class_accuracy, dequantized_bits_per_dim, factor_vae_score, fid,
                            frechet_distance, inception_score, kid, knn, knn_accuracy, linear_probe_accuracy,
                            mmd2_unbiased, mse_psnr, mutual_info_gap, nearest_neighbour_memorisation,
                            precision_recall, uniform_dequantize)

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


def random_spd(d: int, seed: int) -> torch.Tensor:
    """A random, well-conditioned covariance."""
    a = randn(d, d, seed=seed)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny nearest-neighbour blocks and stat chunks, so small tests exercise the blocked code paths."""
    monkeypatch.setattr(metrics, "ROWS_PER_BLOCK", 7)
    monkeypatch.setattr(metrics, "COLS_PER_BLOCK", 5)
    monkeypatch.setattr(metrics, "STAT_CHUNK", 6)


# ----------------------------------------------------------------------------------------------------------- FID

def test_feature_stats_match_numpy_in_chunks(small_blocks):
    x = randn(50, 4, seed=0) + 3.0
    mu, sigma = metrics.feature_stats(x.float())
    assert torch.allclose(mu, x.mean(0).float().double(), atol=1e-6)
    assert np.allclose(sigma.numpy(), np.cov(x.float().double().numpy(), rowvar=False, ddof=1), atol=1e-10)


def test_fid_of_a_set_with_itself_is_zero():
    x = randn(500, 16, seed=1).float()
    sigma = metrics.feature_stats(x)[1]
    assert fid(x, x) <= 1e-6 * float(sigma.trace())
    # fid clamps rounding noise below 0, so also check the unclamped term: Tr (S S)^{1/2} = Tr S
    assert float(metrics.trace_sqrt_product(sigma, sigma)) == pytest.approx(float(sigma.trace()), rel=1e-9)


@pytest.mark.parametrize("d", [16, 64])
def test_frechet_distance_matches_scipy_sqrtm(d):
    mu1, mu2 = randn(d, seed=2), randn(d, seed=3)
    s1, s2 = random_spd(d, seed=4), random_spd(d, seed=5)
    root = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy())
    reference = float((mu1 - mu2).square().sum() + s1.trace() + s2.trace()) - 2 * np.trace(root).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(reference, rel=1e-6)  # symmetric
    # numpy statistics (as stored by pytorch-fid) are accepted too
    assert frechet_distance(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy()) == pytest.approx(reference, rel=1e-6)


def test_frechet_distance_handles_singular_covariances():
    """Rank-deficient covariances (fewer samples than dims) stay finite, real and >= 0."""
    a, b = randn(5, 12, seed=6), randn(5, 12, seed=7)
    value = frechet_distance(*metrics.feature_stats(a), *metrics.feature_stats(b))
    assert math.isfinite(value) and value > 0


def test_fid_of_shifted_gaussians_is_squared_shift():
    shift = torch.full((8,), 0.5, dtype=torch.float64)  # ||m||^2 = 2
    a, b = randn(20_000, 8, seed=8), randn(20_000, 8, seed=9) + shift
    # sampling error: 2 m.(mean noise) has std ~0.03, the covariance term ~0.002
    assert fid(a, b) == pytest.approx(2.0, abs=0.1)
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-9)


# ----------------------------------------------------------------------------------------------------------- KID

def mmd2_unbiased_loops(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased estimator written out term by term."""
    k = lambda u, v: (float(u @ v) / len(u) + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_and_kid_match_loop_computation():
    x, y = randn(9, 3, seed=10), randn(7, 3, seed=11) + 0.3
    assert float(mmd2_unbiased(x, y)) == pytest.approx(mmd2_unbiased_loops(x, y), rel=1e-10)
    # equal sizes and subset_size >= N: every subset is the whole set, so KID is that single value
    y = y[:7]
    x = x[:7]
    mean, std = kid(x.float(), y.float(), num_subsets=3, subset_size=100)
    assert mean == pytest.approx(mmd2_unbiased_loops(x.float().double(), y.float().double()), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_unbiased_for_the_same_distribution():
    """Over independent repeats the mean is ~0 and some values are negative; the biased V-statistic fails this."""
    kids, biased = [], []
    for r in range(40):
        x, y = randn(200, 8, seed=100 + r), randn(200, 8, seed=200 + r)
        kids.append(kid(x, y, num_subsets=10, subset_size=100, generator=gen(r))[0])
        k_xx, k_yy = metrics.polynomial_kernel(x, x), metrics.polynomial_kernel(y, y)
        biased.append(float(k_xx.mean() + k_yy.mean() - 2 * metrics.polynomial_kernel(x, y).mean()))
    kids, biased = torch.tensor(kids), torch.tensor(biased)
    standard_error = kids.std() / math.sqrt(len(kids))
    assert abs(kids.mean()) < 4 * standard_error
    assert (kids < 0).any()
    assert biased.mean() > 4 * standard_error and (biased > 0).all()  # the test has teeth


def test_kid_is_positive_for_shifted_distributions_and_seeded():
    x, y = randn(300, 8, seed=12), randn(300, 8, seed=13) + 1.0
    mean, std = kid(x, y, num_subsets=20, subset_size=100, generator=gen(0))
    assert mean > 3 * std > 0
    assert kid(x, y, num_subsets=20, subset_size=100, generator=gen(0)) == (mean, std)
    assert kid(x, y, num_subsets=20, subset_size=100, generator=gen(1)) != (mean, std)


# ---------------------------------------------------------------------------------------------- precision/recall

def test_knn_matches_brute_force_with_self_exclusion(small_blocks):
    x = randn(23, 3, seed=14)
    dists, idx = knn(x, x, 3, self_index=torch.arange(23))
    full = torch.cdist(x, x).fill_diagonal_(math.inf)
    ref_d, ref_i = full.sort(1)
    assert torch.allclose(dists, ref_d[:, :3], atol=1e-12)
    assert torch.equal(idx, ref_i[:, :3])


def test_precision_recall_match_brute_force(small_blocks):
    real, fake = randn(31, 3, seed=40), 0.7 * randn(26, 3, seed=41) + 0.3

    def coverage(query, centres, k=3):  # Eq. 1 of the paper, with all distances at once
        within = scipy.spatial.distance.cdist(centres, centres)
        radii = np.sort(within, axis=1)[:, k]  # column 0 is the point itself
        return (scipy.spatial.distance.cdist(query, centres) <= radii).any(1).mean()

    expected = (coverage(fake.numpy(), real.numpy()), coverage(real.numpy(), fake.numpy()))
    assert precision_recall(real, fake, k=3) == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1


def test_precision_recall_identical_sets_are_one(small_blocks):
    x = randn(40, 4, seed=15)
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


def test_precision_recall_far_apart_sets_are_zero():
    real, fake = randn(300, 4, seed=16), randn(300, 4, seed=17) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_precision_high_recall_low_when_fake_covers_a_small_part_of_real():
    real, fake = randn(1000, 4, seed=18), 0.2 * randn(1000, 4, seed=19)  # fake: the core of real only
    precision, recall = precision_recall(real, fake)
    assert precision > 0.95
    assert recall < 0.2


# --------------------------------------------------------------------------------------------------- IS, accuracy

def test_inception_score_extremes():
    assert inception_score(torch.full((100, 10), 0.1)) == pytest.approx((1.0, 0.0), abs=1e-12)
    probs = torch.nn.functional.one_hot(torch.arange(1000) % 10, 10).double()  # every split: 10 of each class
    assert inception_score(probs, splits=10) == pytest.approx((10.0, 0.0), abs=1e-9)


def test_inception_score_matches_scipy_kl():
    probs = torch.softmax(3 * randn(200, 5, seed=20), dim=1)
    scores = [math.exp(np.mean(scipy.stats.entropy(part.T, part.mean(0)[:, None])))
              for part in probs.numpy().reshape(4, 50, 5)]
    assert inception_score(probs, splits=4) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-9)
    with pytest.raises(ValueError, match="probabilities"):
        inception_score(randn(200, 5, seed=21), splits=4)  # logits


def test_class_accuracy_known_values():
    overall, per_class = class_accuracy(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), num_classes=4)
    assert overall == 0.75
    assert per_class[:3] == [1.0, 1.0, 0.5] and math.isnan(per_class[3])


def test_mse_psnr_known_values():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.stack([torch.full((1, 2, 2), 0.1), torch.full((1, 2, 2), -0.2)])  # MSE 0.01 and 0.04
    mse, psnr = mse_psnr(x, x_hat)  # range 2: PSNR 10 log10(400) = 26.0206 and 10 log10(100) = 20
    assert mse == pytest.approx(0.025, rel=1e-6)
    assert psnr == pytest.approx((10 * math.log10(400) + 20) / 2, rel=1e-6)
    assert mse_psnr(x, x_hat, data_range=1.0)[1] == pytest.approx(psnr - 20 * math.log10(2), rel=1e-6)


# ------------------------------------------------------------------------------------------------------- likelihood

def test_uniform_model_is_exactly_8_bits_per_dim():
    d = 3 * 32 * 32
    assert dequantized_bits_per_dim(d * math.log(2), d, data_scale=2 / 256) == pytest.approx(8.0, abs=1e-12)
    assert dequantized_bits_per_dim(0.0, d, data_scale=1 / 256) == pytest.approx(8.0, abs=1e-12)  # on [0, 1)
    uniform_over_levels = torch.full((5,), d * math.log(256), dtype=torch.float64)  # discrete: 256^-D per image
    assert bits_per_dim(uniform_over_levels, d) == pytest.approx(8.0, abs=1e-12)


def test_bits_per_dim_hand_computed():
    # 5000 nats on [-1, 1)^3072: (5000 + 3072 ln 128) / (3072 ln 2) = 5000 / (3072 ln 2) + 7
    expected = 5000 / (3072 * math.log(2)) + 7
    assert dequantized_bits_per_dim(5000.0, 3072, 2 / 256) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(9.348, abs=1e-3)


def test_uniform_dequantize_stays_in_its_level():
    k = torch.arange(256, dtype=torch.uint8).repeat(4000)  # 1M values: float32 rounding of k + U shows up
    x = uniform_dequantize(k, generator=gen(0))
    assert x.min() >= -1 and x.max() < 1
    assert torch.equal(((x + 1) * 128).floor().long(), k.long())  # inverse of x = (u / 256) * 2 - 1
    assert float(x.view(4000, 256).mean(0)[0]) == pytest.approx(-1 + 0.5 / 128, abs=1e-4)  # U ~ U[0, 1)


# --------------------------------------------------------------------------------------------- representations

def blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4 well-separated Gaussian blobs in 16 dimensions, means fixed across seeds."""
    means = 3 * randn(4, 16, seed=999)
    labels = torch.arange(4).repeat_interleave(n_per_class)
    return means[labels] + randn(len(labels), 16, seed=seed), labels


def test_linear_probe_and_knn_separate_blobs():
    (x_train, y_train), (x_test, y_test) = blobs(100, seed=22), blobs(100, seed=23)
    assert linear_probe_accuracy(x_train, y_train, x_test, y_test) > 0.95
    assert knn_accuracy(x_train, y_train, x_test, y_test, k=5) > 0.95


def test_linear_probe_and_knn_are_at_chance_on_random_labels():
    x_train, x_test = randn(400, 16, seed=24), randn(1000, 16, seed=25)
    y_train, y_test = torch.randint(4, (400,), generator=gen(26)), torch.randint(4, (1000,), generator=gen(27))
    # chance = 0.25, std sqrt(0.25 * 0.75 / 1000) = 0.014
    assert abs(linear_probe_accuracy(x_train, y_train, x_test, y_test) - 0.25) < 0.06
    assert abs(knn_accuracy(x_train, y_train, x_test, y_test, k=5) - 0.25) < 0.06


def test_knn_uses_cosine_and_breaks_ties_by_the_nearest():
    train, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    # k = 2: one vote each; the nearest neighbour decides. Scale does not matter under cosine.
    assert knn_accuracy(train, labels, torch.tensor([[10.0, 2.0], [0.02, 0.1]]), torch.tensor([0, 1]), k=2) == 1.0


# ------------------------------------------------------------------------------------------------ disentanglement

FACTOR_SIZES = [3, 5, 8]


def sample_factors(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randint(size, (n,), generator=generator) for size in FACTOR_SIZES], 1)


def test_mig_near_one_for_copied_factors_and_near_zero_for_noise():
    factors = sample_factors(5000, gen(28))
    noise = randn(5000, 5, seed=29)
    copy = torch.cat([factors.double() + 0.01 * noise[:, :3], noise[:, 3:]], 1)  # one latent per factor + 2 noise
    assert mutual_info_gap(copy, factors, FACTOR_SIZES) > 0.95
    assert mutual_info_gap(noise, factors, FACTOR_SIZES) < 0.05
    # factor 0 copied into two latents: its gap is ~0 (MIG rewards one latent per factor), the others ~1
    twice = torch.cat([copy[:, :1], factors[:, :1].double() + 0.01 * noise[:, 3:4], copy], 1)
    assert mutual_info_gap(twice, factors, FACTOR_SIZES) == pytest.approx(2 / 3, abs=0.03)
    # entangled: every latent mixes all factors, so no single latent stands out
    mixed = factors.double() @ torch.tensor([[1.0, 1, 1], [1, -1, 1], [1, 1, -1]], dtype=torch.float64)
    assert mutual_info_gap(mixed, factors, FACTOR_SIZES) < 0.5


def test_mig_mutual_information_of_a_copy_is_the_entropy():
    labels = sample_factors(1000, gen(30))[:, 2]
    mi = metrics.mutual_information(labels[:, None], 8, labels, 8)
    assert float(mi[0]) == pytest.approx(float(metrics.entropy(labels, 8)), rel=1e-12)


def noise_for(factors: torch.Tensor, d: int) -> torch.Tensor:
    """Noise that is a deterministic function of the factor rows, so `represent` stays seed-free."""
    seed = int((factors * torch.tensor([1, 7, 131])).sum()) % (2 ** 31)
    return randn(len(factors), d, seed=seed)


def test_factor_vae_score_one_for_copies_and_low_for_noise():
    kwargs = dict(factor_sizes=FACTOR_SIZES, num_train_votes=100, num_eval_votes=100, samples_per_vote=32,
                  num_variance_estimate=1000, generator=gen(31))

    def copy(f: torch.Tensor) -> torch.Tensor:  # factors in shuffled order, 2 noise dims, 1 collapsed dim
        return torch.cat([f[:, [2, 0, 1]].double(), noise_for(f, 2), torch.zeros(len(f), 1)], 1)

    assert factor_vae_score(copy, sample_factors, **kwargs) > 0.95
    score = factor_vae_score(lambda f: noise_for(f, 5), sample_factors, **kwargs)
    assert score < 0.6  # chance is 1/3 with 3 factors


# -------------------------------------------------------------------------------------------------- memorisation

def test_memorisation_flags_copies_not_fresh_samples():
    train = randn(2000, 16, seed=32)
    fresh = randn(450, 16, seed=33)
    samples = torch.cat([train[:50], fresh])
    result = nearest_neighbour_memorisation(samples, train, threshold=0.5, generator=gen(0))
    flagged = set(result["flagged"].tolist())
    assert set(range(50)) <= flagged
    assert torch.equal(result["nn_index"][:50], torch.arange(50))
    assert len(flagged - set(range(50))) < 0.05 * 450
    assert 0.5 < float(result["ratio"][50:].median()) < 1.5  # fresh data: exchangeable with train, ratio ~1


def test_memorisation_ignores_duplicates_within_train():
    train = randn(500, 8, seed=34)
    with_duplicates = torch.cat([train, train[:400]])  # most items now have an exact copy at distance 0
    plain = nearest_neighbour_memorisation(train[:5], train, generator=gen(0))
    dup = nearest_neighbour_memorisation(train[:5], with_duplicates, generator=gen(0))
    assert dup["median_train_nn"] == pytest.approx(plain["median_train_nn"], rel=1e-12) and dup["median_train_nn"] > 0
    assert torch.equal(with_duplicates[dup["nn_index"]], train[:5])
    assert dup["fraction_flagged"] == 1.0


def test_auroc_matches_the_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    s_in = torch.randint(0, 6, (37,), generator=g).float()  # many ties, within and across the two sets
    s_out = torch.randint(2, 9, (23,), generator=g).float()
    diff = s_out[None, :] - s_in[:, None]
    brute = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    assert auroc(s_in, s_out) == pytest.approx(brute, abs=1e-12)
    assert auroc(torch.zeros(5), torch.ones(3)) == 1.0 and auroc(torch.ones(5), torch.zeros(3)) == 0.0
    assert auroc(torch.ones(4), torch.ones(6)) == 0.5
    with pytest.raises(ValueError):
        auroc(torch.tensor([0.0, float("nan")]), torch.ones(2))
