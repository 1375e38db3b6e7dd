"""Evaluation math shared by every model: pure functions on tensors of features, labels or latents.

Nothing here loads data, builds a network or knows a model: callers extract features (Inception,
a classifier, an encoder) and pass tensors in. Conventions:
  - features are (N, D) float tensors (images for mse_psnr and the memorisation check are flattened);
  - arithmetic is float64 (inputs are converted block by block, so the caller's tensors stay as they
    are); the one exception is the linear probe, which optimises in float32 (see its docstring);
  - results are Python floats (or lists / dicts of them); randomness comes from an explicit
    torch.Generator, and `generator=None` means a fresh one seeded with 0, so results are reproducible;
  - nearest-neighbour searches run in blocks, so memory stays bounded for N in the tens of thousands.

Metric (paper)                                equation                                         better
FID   (Heusel et al. 2017, 1706.08500)        ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})   lower
KID   (Binkowski et al. 2018, 1801.01401)     unbiased MMD^2, kernel k(x, y) = (x.y / D + 1)^3  lower
precision / recall (Kynkaanniemi et al. 2019, 1904.06991)
                                              share of one set inside the other's k-NN balls    higher
IS    (Salimans et al. 2016, 1606.03498)      exp(E_x KL(p(y|x) || p(y)))                       higher
class accuracy (conditional models)           P(classifier(G(z, c)) = c)                        higher
MSE / PSNR (reconstructions)                  10 log10(range^2 / MSE)                           MSE lower, PSNR higher
linear probe / kNN accuracy (representations) test accuracy on frozen features                  higher
MIG   (Chen et al. 2018, 1802.04942)          mean_k (I(z_a; v_k) - I(z_b; v_k)) / H(v_k)       higher
FactorVAE score (Kim & Mnih 2018, 1802.05983) majority-vote accuracy of argmin_d Var(z_d | v_k) higher
memorisation (nearest-neighbour ratio)        d_nn(sample, train) / median d_nn(train, train)   flagged share lower
bits/dim (Theis et al. 2016, 1511.01844)      NLL / (D ln 2) on the 8-bit scale (see below)     lower
AUROC (out-of-distribution detection)         P(score(out) > score(in)), ties count one half    higher

Likelihoods: the project's ONE convention. Images are 8-bit: integers k in {0..255}^D. Every model
reports bits/dim of the 8-bit data, so flows, VAEs and diffusion models are comparable:
  - Continuous densities (flows, VAEs with continuous decoders) are trained and evaluated on uniformly
    dequantised data u = k + U, U ~ U[0, 1)^D, scaled to the model's interval [a, b):
    x = a + u (b - a) / 256 (see `uniform_dequantize`; for [-1, 1): x = (u / 256) * 2 - 1). With
    s = (b - a) / 256, p_u(u) = p_x(x) s^D, so
        bits/dim = (-log p_x(x) - D log s) / (D ln 2)                      (`dequantized_bits_per_dim`)
    -log p_x(x) must include the log-determinants of any other preprocessing the model applies after
    this scaling (e.g. RealNVP's logit transform). E_U[-log p_u(k + U)] upper-bounds -log P(k)
    (Theis et al. 2016), so this is an honest, slightly pessimistic figure. Note that
    shared.data.to_float maps k -> k / 127.5 - 1 (255 -> 1); using it instead of uniform_dequantize
    would change the figure by log2(256 / 255) = 0.0056 bits/dim.
  - Discrete likelihoods over the 256 levels (a discretised Gaussian / logistic decoder, as in the
    DDPM and PixelCNN++ decoders) already give -log P(k): bits/dim = NLL / (D ln 2) (`bits_per_dim`).
  - Variational bounds (VAE ELBO, diffusion VLB) give an upper bound on the NLL; the same two rules
    apply to the negative bound, and the figure is reported as an upper bound.
NLLs are in nats per image, D = C * H * W.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

ROWS_PER_BLOCK = 1024  # query rows per nearest-neighbour block
COLS_PER_BLOCK = 8192  # reference rows per block: a block of distances is at most 64 MB in float64
STAT_CHUNK = 8192  # rows converted to float64 at a time for means and covariances


def _generator(generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, or a fresh one seeded with 0 (reproducible by default)."""
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _check_2d(name: str, x: torch.Tensor, min_rows: int = 1) -> None:
    """Raise ValueError unless x is (N, D) with N >= min_rows."""
    if x.dim() != 2 or x.shape[0] < min_rows:
        raise ValueError(f"{name} must be (N, D) with N >= {min_rows}, got shape {tuple(x.shape)}")


# ------------------------------------------------------------------------------ Fréchet Inception Distance

def feature_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), float64, two passes in chunks."""
    _check_2d("feats", feats, min_rows=2)
    n = feats.shape[0]
    mu = sum(feats[i:i + STAT_CHUNK].double().sum(0) for i in range(0, n, STAT_CHUNK)) / n
    sigma = feats.new_zeros(feats.shape[1], feats.shape[1], dtype=torch.float64)
    for i in range(0, n, STAT_CHUNK):
        centred = feats[i:i + STAT_CHUNK].double() - mu
        sigma += centred.T @ centred
    return mu, sigma / (n - 1)


def _sqrt_psd(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix from eigh, tiny negative eigenvalues clamped to 0."""
    eigvals, eigvecs = torch.linalg.eigh(sigma)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """Tr (S1 S2)^{1/2} = sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2})), without complex sqrtm.

    S1 S2 = S1^{1/2} (S1^{1/2} S2) has the eigenvalues of (S1^{1/2} S2) S1^{1/2}, which is symmetric PSD,
    so its eigenvalues are real and >= 0 and their square roots sum to the trace of the principal root.
    """
    root1 = _sqrt_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    inner = (inner + inner.T) / 2  # symmetric up to rounding; eigvalsh needs it exactly
    return torch.linalg.eigvalsh(inner).clamp(min=0).sqrt().sum()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}): the squared 2-Wasserstein distance of two Gaussians.

    Accepts tensors or numpy arrays (e.g. stored reference statistics); computed in float64.
    """
    mu1, sigma1, mu2, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    mean_term = (mu1 - mu2).square().sum()
    cov_term = sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(float(mean_term + cov_term), 0.0)  # >= 0 in exact arithmetic; rounding can give -1e-13


def fid(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """FID between two (N, D) feature sets (Inception pool3 features for the standard figure)."""
    return frechet_distance(*feature_stats(feats_a), *feature_stats(feats_b))


# ------------------------------------------------------------------------------- Kernel Inception Distance

def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x.y / D + 1)^3 for all pairs: (M, D), (N, D) -> (M, N)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 (Gretton et al. 2012, Eq. 3): within-set sums exclude i = j.

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (m n).  Its expectation is MMD^2, so it can be negative.
    """
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    return within_x + within_y - 2 * k_xy.mean()


def kid(feats_a: torch.Tensor, feats_b: torch.Tensor, num_subsets: int = 100, subset_size: int = 1000,
        generator: torch.Generator | None = None) -> tuple[float, float]:
    """KID: mean and std of mmd2_unbiased over random subsets (without replacement within a subset).

    subset_size is clipped to min(len(a), len(b)). std is over subsets (ddof = 0, as torch-fidelity and
    clean-fid report it); subsets overlap, so it describes subset spread, not a standard error.
    """
    _check_2d("feats_a", feats_a, min_rows=2)
    _check_2d("feats_b", feats_b, min_rows=2)
    g = _generator(generator)
    m = min(subset_size, feats_a.shape[0], feats_b.shape[0])
    values = []
    for _ in range(num_subsets):
        x = feats_a[torch.randperm(feats_a.shape[0], generator=g)[:m]].double()
        y = feats_b[torch.randperm(feats_b.shape[0], generator=g)[:m]].double()
        values.append(mmd2_unbiased(x, y))
    values = torch.stack(values)
    return float(values.mean()), float(values.std(correction=0))


# ------------------------------------------------------------------- Nearest neighbours (blocked, float64)

def knn(query: torch.Tensor, ref: torch.Tensor, k: int,
        self_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances (Nq, k) and indices into ref (Nq, k) of each query row's k nearest ref rows.

    Sorted nearest first. self_index (Nq,) gives each query's own row in ref, which is skipped (so
    "nearest OTHER item" when query is a subset of ref). Runs in blocks of ROWS x COLS distances.
    """
    dists, indices = [], []
    for q0 in range(0, query.shape[0], ROWS_PER_BLOCK):
        q = query[q0:q0 + ROWS_PER_BLOCK].double()
        best_d, best_i = q.new_zeros(q.shape[0], 0), torch.zeros(q.shape[0], 0, dtype=torch.long)
        for r0 in range(0, ref.shape[0], COLS_PER_BLOCK):
            d = torch.cdist(q, ref[r0:r0 + COLS_PER_BLOCK].double())  # (rows, cols)
            cols = torch.arange(r0, r0 + d.shape[1])
            if self_index is not None:
                d[self_index[q0:q0 + ROWS_PER_BLOCK, None] == cols] = math.inf
            best_d = torch.cat([best_d, d], 1)
            best_i = torch.cat([best_i, cols.expand_as(d)], 1)
            best_d, order = best_d.topk(min(k, best_d.shape[1]), dim=1, largest=False)
            best_i = best_i.gather(1, order)
        dists.append(best_d)
        indices.append(best_i)
    return torch.cat(dists), torch.cat(indices)


def _inside_any_ball(query: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """(Nq,) bool: query row q lies in some ball ||q - c_i|| <= r_i."""
    inside = []
    for q0 in range(0, query.shape[0], ROWS_PER_BLOCK):
        q = query[q0:q0 + ROWS_PER_BLOCK].double()
        hit = torch.zeros(q.shape[0], dtype=torch.bool)
        for c0 in range(0, centres.shape[0], COLS_PER_BLOCK):
            d = torch.cdist(q, centres[c0:c0 + COLS_PER_BLOCK].double())
            hit |= (d <= radii[c0:c0 + COLS_PER_BLOCK]).any(1)
        inside.append(hit)
    return torch.cat(inside)


# --------------------------------------------------------------------------- Improved precision and recall

def knn_radii(feats: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(N,) distance from each row to its k-th nearest other row: the radius of its manifold ball."""
    if feats.shape[0] <= k:
        raise ValueError(f"need more than k={k} rows for k-NN radii, got {feats.shape[0]}")
    dists, _ = knn(feats, feats, k, self_index=torch.arange(feats.shape[0]))
    return dists[:, -1]


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, Eq. 1-2), k = 3 as in the paper.

    f(phi, Phi) = 1 if ||phi - phi'|| <= ||phi' - NN_k(phi')|| for some phi' in Phi, else 0;
    precision = mean_{fake} f(fake, real) (quality), recall = mean_{real} f(real, fake) (coverage).
    """
    _check_2d("real", real)
    _check_2d("fake", fake)
    precision = _inside_any_ball(fake, real, knn_radii(real, k)).double().mean()
    recall = _inside_any_ball(real, fake, knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)


# --------------------------------------------------------------------------------- Classifier-based scores

def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split, p(y) the split's mean prediction; mean and std (ddof 0).

    probs: (N, C) class probabilities (rows sum to 1, e.g. softmax of Inception logits). Ranges from 1
    (every prediction the same) to C (confident and evenly spread). Splits as in Salimans et al.'s code.
    """
    _check_2d("probs", probs, min_rows=splits)
    probs = probs.double()
    if (probs < 0).any() or not torch.allclose(probs.sum(1), probs.new_ones(1), atol=1e-3):
        raise ValueError("probs must be probabilities (non-negative rows summing to 1), not logits")
    scores = []
    for part in probs.tensor_split(splits):
        p_y = part.mean(0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, p_y)).sum(1)  # 0 log 0 = 0
        scores.append(kl.mean().exp())
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(correction=0))


def class_accuracy(pred_labels: torch.Tensor, requested_labels: torch.Tensor,
                   num_classes: int) -> tuple[float, list[float]]:
    """Share of conditional samples a classifier assigns to the requested class: overall and per class.

    Per-class entries are NaN for classes that were never requested.
    """
    correct = (pred_labels.long() == requested_labels.long()).double()
    per_class = [float(correct[requested_labels == c].mean()) if (requested_labels == c).any() else math.nan
                 for c in range(num_classes)]
    return float(correct.mean()), per_class


# ------------------------------------------------------------------------------------------ Reconstruction

def mse_psnr(x: torch.Tensor, x_hat: torch.Tensor, data_range: float = 2.0) -> tuple[float, float]:
    """Per-image MSE and PSNR = 10 log10(data_range^2 / MSE_i), each averaged over the images.

    x, x_hat: (N, ...) with images in [-1, 1] by default (data_range = 2; use 1 for [0, 1], 255 for
    uint8). PSNR is averaged per image (the usual figure for reconstructions), which is >= the PSNR of
    the mean MSE (Jensen). A perfect reconstruction has PSNR = inf.
    """
    mse = (x.double() - x_hat.double()).square().flatten(1).mean(1)  # (N,)
    psnr = 10 * torch.log10(data_range ** 2 / mse)
    return float(mse.mean()), float(psnr.mean())


# ---------------------------------------------------------------------------------- Representation quality

def _standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean, unit std per feature using the training statistics (constant features stay 0)."""
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def linear_probe_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                          test_labels: torch.Tensor, epochs: int = 100, weight_decay: float = 1e-4) -> float:
    """Test accuracy of multinomial logistic regression on standardised frozen features.

    Minimises CE(W f + b, y) + weight_decay / 2 ||W||^2 with full-batch L-BFGS (strong-Wolfe line
    search) for `epochs` iterations, each one pass over the training set plus line-search passes. The
    problem is convex and W, b start at zero, so the result is deterministic (no seed needed). Runs in
    float32: argmax accuracy does not need float64, and a float64 copy of 50k x 2048 features is 800 MB.
    """
    train, test = _standardize(train_feats.float(), test_feats.float())
    y = train_labels.long()
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    weight = torch.zeros(train.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=epochs, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(train @ weight + bias, y) + weight_decay / 2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (test @ weight + bias).argmax(1)
    return float((pred == test_labels.long()).double().mean())


def knn_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, k: int = 5) -> float:
    """Test accuracy of a k-NN majority vote under cosine similarity (as in self-supervised kNN evals).

    Features are L2-normalised, where Euclidean order equals cosine order (||a - b||^2 = 2 - 2 cos).
    A tie goes to the class of the nearest neighbour if it is among the tied classes, else the lowest label.
    """
    _, idx = knn(F.normalize(test_feats.double(), dim=1), F.normalize(train_feats.double(), dim=1), k)
    neighbour_labels = train_labels.long()[idx]  # (N_test, k), nearest first
    num_classes = int(train_labels.max()) + 1
    votes = torch.zeros(idx.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, neighbour_labels, torch.ones_like(neighbour_labels, dtype=torch.float64))
    votes.scatter_add_(1, neighbour_labels[:, :1], torch.full((idx.shape[0], 1), 0.5, dtype=torch.float64))
    return float((votes.argmax(1) == test_labels.long()).double().mean())


# ----------------------------------------------------------------------------------------- Disentanglement

def discretize(latents: torch.Tensor, bins: int = 20) -> torch.Tensor:
    """(N, D) -> (N, D) bin indices in 0..bins-1: equal-width bins between each column's min and max."""
    low, high = latents.min(0).values, latents.max(0).values
    width = torch.where(high > low, high - low, torch.ones_like(high))  # a constant column -> bin 0
    return ((latents - low) / width * bins).long().clamp(max=bins - 1)


def entropy(labels: torch.Tensor, num_values: int) -> torch.Tensor:
    """H(v) = -sum_v p(v) log p(v) in nats of the empirical distribution of integer labels (N,)."""
    p = torch.bincount(labels, minlength=num_values).double() / labels.shape[0]
    return -torch.special.xlogy(p, p).sum()


def mutual_information(codes: torch.Tensor, num_codes: int, labels: torch.Tensor,
                       num_values: int) -> torch.Tensor:
    """I(z_j; v) in nats for every column j of discrete codes (N, D) against labels (N,): (D,).

    I = sum_{z, v} p(z, v) log(p(z, v) / (p(z) p(v))), from the empirical joint histogram.
    """
    n, d = codes.shape
    cell = (torch.arange(d) * num_codes + codes) * num_values + labels[:, None]  # (N, D) joint cell ids
    joint = torch.bincount(cell.flatten(), minlength=d * num_codes * num_values).double()
    joint = joint.view(d, num_codes, num_values) / n  # p(z_j, v)
    p_z, p_v = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
    return (torch.special.xlogy(joint, joint) - torch.special.xlogy(joint, p_z * p_v)).sum((1, 2))


def mutual_info_gap(latents: torch.Tensor, factors: torch.Tensor, factor_sizes: list[int],
                    bins: int = 20) -> float:
    """MIG (Chen et al. 2018, Eq. 5): (1/K) sum_k (I(z_a; v_k) - I(z_b; v_k)) / H(v_k).

    z_a, z_b are the latents with the largest and second-largest mutual information with factor v_k.
    latents: (N, D) codes (e.g. posterior means), each discretised into `bins` equal-width bins as in
    disentanglement_lib; factors: (N, K) integer levels, factor k in 0..factor_sizes[k]-1. Plug-in
    estimates in nats; every factor must vary in the sample (H(v_k) > 0) and D >= 2.
    """
    _check_2d("latents", latents)
    if latents.shape[1] < 2:
        raise ValueError("MIG needs at least 2 latent dimensions")
    codes, factors = discretize(latents.double(), bins), factors.long()
    gaps = []
    for k, size in enumerate(factor_sizes):
        h = entropy(factors[:, k], size)
        if h <= 0:
            raise ValueError(f"factor {k} is constant in this sample: H(v_k) = 0")
        top2 = mutual_information(codes, bins, factors[:, k], size).topk(2).values
        gaps.append((top2[0] - top2[1]) / h)
    return float(torch.stack(gaps).mean())


def _represent_in_chunks(represent: Callable[[torch.Tensor], torch.Tensor], factors: torch.Tensor,
                         chunk: int = 1024) -> torch.Tensor:
    """represent(factors) in chunks of rows, concatenated as float64 (N, D)."""
    return torch.cat([represent(factors[i:i + chunk]).double() for i in range(0, factors.shape[0], chunk)])


def _factor_vae_votes(represent: Callable[[torch.Tensor], torch.Tensor],
                      sample_factors_fn: Callable[[int, torch.Generator], torch.Tensor], num_factors: int,
                      num_votes: int, samples_per_vote: int, scale: torch.Tensor, active: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
    """(K, D) vote counts: row k, column d counts votes where factor k was fixed and dim d varied least."""
    votes = torch.zeros(num_factors, scale.shape[0], dtype=torch.long)
    for _ in range(num_votes):
        k = int(torch.randint(num_factors, (1,), generator=generator))
        factors = sample_factors_fn(samples_per_vote, generator).clone()
        factors[:, k] = factors[0, k]  # a value drawn from factor k's own distribution, shared by all L
        z = represent(factors).double() / scale  # (L, D) normalised by the global std
        variance = z.var(0).masked_fill(~active, math.inf)
        votes[k, variance.argmin()] += 1
    return votes


def factor_vae_score(represent: Callable[[torch.Tensor], torch.Tensor],
                     sample_factors_fn: Callable[[int, torch.Generator], torch.Tensor], factor_sizes: list[int],
                     num_train_votes: int = 800, num_eval_votes: int = 800, samples_per_vote: int = 64,
                     num_variance_estimate: int = 10_000, prune_below: float = 1e-3,
                     generator: torch.Generator | None = None) -> float:
    """FactorVAE disentanglement score (Kim & Mnih 2018, Sec. 4): held-out majority-vote accuracy.

    1. s_d = std of latent d over num_variance_estimate random samples; dims with
       s_d < prune_below * max_d s_d have collapsed and are ignored.
    2. A vote: pick factor k uniformly, draw L = samples_per_vote factor rows sharing one value of factor k,
       z = represent(factors) / s, vote (k, argmin_d Var_L(z_d)).
    3. Classifier: dim d -> the factor with most training votes for d. Score: its accuracy on
       num_eval_votes fresh votes.
    represent: (n, K) LongTensor of factors -> (n, D) latents (the caller renders and encodes images);
    sample_factors_fn(n, generator) -> (n, K) LongTensor (e.g. shared.shapes.sample_factors).
    disentanglement_lib uses 10,000 / 5,000 votes; the smaller defaults suit a CPU. Returns 0 for a
    constant representation.
    """
    g = _generator(generator)
    scale = _represent_in_chunks(represent, sample_factors_fn(num_variance_estimate, g)).std(0)
    if scale.max() <= 0:
        return 0.0
    active = scale >= prune_below * scale.max()
    scale = torch.where(active, scale, torch.ones_like(scale))
    args = (represent, sample_factors_fn, len(factor_sizes))
    train = _factor_vae_votes(*args, num_train_votes, samples_per_vote, scale, active, g)
    held_out = _factor_vae_votes(*args, num_eval_votes, samples_per_vote, scale, active, g)
    classifier = train.argmax(0)  # (D,) dim -> factor
    return float(held_out[classifier, torch.arange(scale.shape[0])].sum()) / float(held_out.sum())


# -------------------------------------------------------------------------------------------- Memorisation

def nearest_neighbour_memorisation(samples: torch.Tensor, train: torch.Tensor, threshold: float = 0.5,
                                   num_reference: int = 1000,
                                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor | float]:
    """Flag samples that are near-copies of training items, by a scale-free nearest-neighbour ratio.

    ratio(x) = d(x, NN_train(x)) / m, with m = the median, over num_reference random distinct training
    items, of the distance to their nearest OTHER distinct training item (exact duplicates in train are
    merged first: shapes has 46,080 possible images, so a 50k training set repeats many and m would be 0).
    Rows are flattened: pass features or pixels (N, ...).
    Why threshold 0.5: a fresh sample from the data distribution is exchangeable with a training item,
    so its ratio is centred near 1; a ratio < 0.5 means it is twice as close to a training item as
    training items are to each other, far in the tail for fresh data (the relative-distance idea of
    Carlini et al. 2023, 2301.13188). Exact copies have ratio 0.
    Caveat: on a dataset with few distinct images (shapes) a perfect model reproduces training images,
    so report the same figure for held-out real data (the test split) as the baseline.
    Returns {"ratio": (N,), "nn_distance": (N,), "nn_index": (N,) index into train,
    "median_train_nn": float, "fraction_flagged": float, "flagged": indices of samples with ratio < threshold}.
    """
    samples, train = samples.flatten(1), train.flatten(1)
    unique, inverse = torch.unique(train, dim=0, return_inverse=True)
    if unique.shape[0] < 2:
        raise ValueError("train needs at least 2 distinct items")
    first = torch.full((unique.shape[0],), train.shape[0]).scatter_reduce(
        0, inverse, torch.arange(train.shape[0]), reduce="amin")  # unique row -> its first index in train
    reference = torch.randperm(unique.shape[0], generator=_generator(generator))[:num_reference]
    reference_nn, _ = knn(unique[reference], unique, 1, self_index=reference)
    median = reference_nn.median()
    dist, idx = knn(samples, unique, 1)
    ratio = dist[:, 0] / median
    flagged = (ratio < threshold).nonzero().flatten()
    return {"ratio": ratio, "nn_distance": dist[:, 0], "nn_index": first[idx[:, 0]],
            "median_train_nn": float(median), "fraction_flagged": flagged.numel() / max(samples.shape[0], 1),
            "flagged": flagged}


# ----------------------------------------------- Likelihoods (see the module docstring for the convention)

def uniform_dequantize(images_uint8: torch.Tensor, low: float = -1.0, high: float = 1.0,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """k in {0..255} -> x = low + (k + U) (high - low) / 256, U ~ U[0, 1): the data likelihoods are scored on."""
    noise = torch.rand(images_uint8.shape, generator=generator, device=images_uint8.device)
    noise = noise.clamp(max=1 - 2 ** -16)  # float32 resolves k + U near 256 only to 2^-16: stay in level k
    return low + (images_uint8.float() + noise) * ((high - low) / 256)


def bits_per_dim(nll_nats_per_image: float | torch.Tensor, num_dims: int) -> float:
    """NLL / (D ln 2) for a likelihood of the discrete 8-bit data (a tensor of per-image NLLs is averaged)."""
    return float(torch.as_tensor(nll_nats_per_image, dtype=torch.float64).mean()) / (num_dims * math.log(2))


def dequantized_bits_per_dim(nll_nats: float | torch.Tensor, num_dims: int, data_scale: float) -> float:
    """Bits/dim on the 8-bit scale of a density on data scaled by data_scale = (b - a) / 256.

    x = a + u * data_scale with u in [0, 256)^D, so -log p_u(u) = -log p_x(x) - D log(data_scale) and
    bits/dim = (nll_nats - D log(data_scale)) / (D ln 2). For [-1, 1) data_scale = 2 / 256; a uniform
    density on [-1, 1)^D (nll = D ln 2) gives exactly 8 bits/dim.
    """
    nll = float(torch.as_tensor(nll_nats, dtype=torch.float64).mean())
    return bits_per_dim(nll - num_dims * math.log(data_scale), num_dims)


# ----------------------------------------------- Out-of-distribution detection

def auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """Area under the ROC curve of telling `scores_out` from `scores_in` by thresholding the score (higher =
    more out-of-distribution): P(s_out > s_in) + P(s_out = s_in) / 2 over all pairs (the Mann-Whitney U
    statistic / (n_in n_out)), from average ranks, so ties count one half. 1 = perfect, 0.5 = chance, below
    0.5 = the out-of-distribution data score systematically *lower* (for bits/dim: the model gives them higher
    likelihood, as Nalisnick et al. 2019 found for flows on CIFAR-10 vs SVHN)."""
    s_in, s_out = scores_in.flatten().double(), scores_out.flatten().double()
    if s_in.numel() == 0 or s_out.numel() == 0 or not (s_in.isfinite().all() and s_out.isfinite().all()):
        raise ValueError("auroc needs non-empty, finite scores on both sides")
    both = torch.cat([s_in, s_out])
    order = both.argsort()
    sorted_scores = both[order]
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=torch.float64)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts + 1  # rank of each tie group's first member
    ranks[order] = (first + (counts - 1) / 2).to(torch.float64)[inverse]  # average rank within a tie group
    n_in, n_out = s_in.numel(), s_out.numel()
    u_out = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return float(u_out / (n_in * n_out))
