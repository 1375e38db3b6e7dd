"""Evaluate a VAE checkpoint with the shared harness (shared/evaluation.py), plus its likelihood bounds.

    python evaluate.py --checkpoint runs/vae --num 2000
    python evaluate.py --checkpoint runs/vae --iwae-k 1000 --nll-num 1000   # a tighter bound, slower

The harness scores --num prior samples (decoder means of z ~ N(0, I)): FID / KID / precision / recall / IS with
the real-vs-real floors, near-copies; reconstructions of held-out images (decoder mean at the posterior mean):
MSE / PSNR; the posterior mean as a representation: linear probe and k-NN accuracy (MIG / FactorVAE on shapes).
This script adds, on the first --nll-num held-out test images:
  * nelbo_nats: -ELBO (one z per image, analytic KL), and its terms rec_nats (-E_q log p(x|z)) and kl_nats;
  * iwae_nll_nats: -L_k of Burda et al. with k = --iwae-k, an upper bound on -log p(x) (tighter as k grows);
  * the same in bits. The convention, per likelihood:
      bernoulli: the data are the held-out images binarised once (x ~ Bernoulli(k / 255), fixed seed
        BINARISE_SEED), D binary pixels: *_bits_per_binary_pixel = NLL / (D ln 2). Not the harness's 8-bit
        bits_per_dim (which this run does not report): binary and 8-bit figures do not compare;
      logistic: a likelihood of the 8-bit data, so the harness's bits_per_dim is reported (IWAE, --iwae-k, on
        --num images; = NLL / (D ln 2));
      gaussian: a density on uniformly dequantised data, so bits_per_dim is shared.metrics.
        dequantized_bits_per_dim (8-bit scale, an upper bound), also through the harness;
  * active_units: the latent dimensions u with Cov_x(E_q[z_u]) > 0.01 over those images (Burda et al.);
and writes reconstructions.png, prior_samples.png and interpolations.png into the run folder.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import VAE, elbo, encode, interpolate, iwae_nll, kl_divergence, model_log_likelihood, observe, \
    reconstruct, sample
from sample import load_model
from shared import cli, evaluation, metrics
from shared.data import to_float
from shared.evaluation import Capabilities
from shared.run import grid

BINARISE_SEED = 0xB1A5  # the held-out images are binarised once with this seed (Bernoulli likelihood)
ACTIVE_THRESHOLD = 0.01  # Burda et al.: u is active when Cov_x(E_q[z_u]) > 0.01


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a VAE checkpoint."""
    checkpoint: str = "runs/vae"  # run folder (its latest checkpoint) or checkpoint file
    iwae_k: int = 100  # importance samples of the IWAE bound (1 = a sampled-KL ELBO; 5000 = Burda et al.'s figure)
    nll_num: int = 1000  # held-out test images for the ELBO, IWAE and active units
    iwae_chunk: int = 100  # importance samples decoded at once (memory)


@torch.no_grad()
def likelihood_bounds(model: VAE, images_uint8: torch.Tensor, k: int, chunk: int = 100, seed: int = 0,
                      batch_size: int = 100) -> dict[str, torch.Tensor]:
    """Per-image bounds in nats (N,): nelbo, rec, kl, iwae_nll; and the posterior means mu (N, D_z).

    The data the likelihood scores come from model.observe with a fixed generator (Bernoulli: binarised once with
    BINARISE_SEED; Gaussian: one uniform dequantisation), so every call scores the same x."""
    data_gen = torch.Generator().manual_seed(BINARISE_SEED)
    noise_gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out: dict[str, list[torch.Tensor]] = {"nelbo": [], "rec": [], "kl": [], "iwae_nll": [], "mu": []}
    for chunk_uint8 in images_uint8.split(batch_size):
        x_in, x = (t.to(device) for t in observe(chunk_uint8, model.cfg.likelihood, generator=data_gen))
        mu, logvar = model.encoder(x_in)
        log_p = model_log_likelihood(model, x)
        kl = kl_divergence(mu, logvar).sum(1)
        bound = elbo(mu, logvar, log_p, generator=noise_gen)
        out["nelbo"].append(-bound)
        out["kl"].append(kl)
        out["rec"].append(-bound - kl)
        out["iwae_nll"].append(iwae_nll(x, mu, logvar, log_p, k=k, chunk=chunk, generator=noise_gen).float())
        out["mu"].append(mu)
    return {name: torch.cat(parts).cpu() for name, parts in out.items()}


def active_units(mu: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> list[int]:
    """Dimensions u whose posterior mean varies over the data: Cov_x(E_q[z_u]) > threshold (mu: (N, D_z))."""
    return [int(u) for u in torch.nonzero(mu.double().var(0) > threshold).flatten()]


def bits_per_dim_fn(model: VAE, k: int, chunk: int, seed: int):
    """For the harness (8-bit likelihoods only): uint8 images -> IWAE bits/dim per image (n,)."""
    d = model.cfg.channels * model.cfg.image_size ** 2

    def bpd(images_uint8: torch.Tensor) -> torch.Tensor:
        nll = likelihood_bounds(model, images_uint8, k, chunk, seed)["iwae_nll"].double()
        if model.cfg.likelihood == "logistic":
            return nll / (d * math.log(2))  # metrics.bits_per_dim per image: a discrete 8-bit likelihood
        return torch.tensor([metrics.dequantized_bits_per_dim(v, d, 2 / 256) for v in nll.tolist()])
    return bpd


def write_figures(model: VAE, held_uint8: torch.Tensor, run_dir: Path, seed: int) -> dict[str, str]:
    """reconstructions.png (rows: held-out images, their reconstructions), prior_samples.png (64 decoder means),
    interpolations.png (8 rows of 10: straight lines between the posterior means of two held-out images)."""
    device = next(model.parameters()).device
    x = to_float(held_uint8[:64]).to(device)
    recon = reconstruct(model, x)
    n = len(x) // 8 * 8
    pairs = torch.stack([x[:n].view(-1, 8, *x.shape[1:]), recon[:n].view(-1, 8, *x.shape[1:])], 1).flatten(0, 2)
    paths = {"reconstructions_png": run_dir / "reconstructions.png", "prior_samples_png": run_dir / "prior_samples.png",
             "interpolations_png": run_dir / "interpolations.png"}
    save_image(grid(pairs, nrow=8), paths["reconstructions_png"])
    save_image(grid(sample(model, 64, rng=torch.Generator().manual_seed(seed)), nrow=8), paths["prior_samples_png"])
    rows = [interpolate(model, x[2 * i], x[2 * i + 1], steps=10) for i in range(min(8, len(x) // 2))]
    save_image(grid(torch.cat(rows), nrow=10), paths["interpolations_png"])
    return {name: str(path) for name, path in paths.items()}


def likelihood_record(model: VAE, held_uint8: torch.Tensor, cfg: EvalConfig, log=print) -> dict:
    """The folder's own figures (see the module docstring), for evaluate(extra=...)."""
    images = held_uint8[: cfg.nll_num]
    start = time.perf_counter()
    b = likelihood_bounds(model, images, cfg.iwae_k, cfg.iwae_chunk, cfg.seed)
    seconds = time.perf_counter() - start
    d = model.cfg.channels * model.cfg.image_size ** 2
    units = active_units(b["mu"])
    record = {"likelihood": model.cfg.likelihood, "nll_num": len(images), "iwae_k": cfg.iwae_k,
              "iwae_seconds": seconds, "nelbo_nats": b["nelbo"].mean().item(), "rec_nats": b["rec"].mean().item(),
              "kl_nats": b["kl"].mean().item(), "iwae_nll_nats": b["iwae_nll"].mean().item(),
              "num_active_units": len(units), "active_units": units}
    if model.cfg.likelihood == "bernoulli":
        for name in ("nelbo", "iwae_nll"):
            record[f"{name}_bits_per_binary_pixel"] = b[name].double().mean().item() / (d * math.log(2))
    log(f"  active units (Cov_x E_q[z_u] > {ACTIVE_THRESHOLD}): {len(units)} of {model.cfg.z_dim}: {units}")
    return record


def main(cfg: EvalConfig) -> dict:
    try:
        check(cfg)
    except ValueError as err:
        cli.fail(str(err))
    model, state = load_model(cfg.checkpoint, torch.device("cpu"))
    run_dir = evaluation.run_dir_of(cfg.checkpoint)
    eight_bit = model.cfg.likelihood in ("logistic", "gaussian")
    caps = Capabilities(sample=lambda n, gen: sample(model, n, rng=gen),
                        encode=lambda x: encode(model, x), reconstruct=lambda x: reconstruct(model, x),
                        bits_per_dim=bits_per_dim_fn(model, cfg.iwae_k, cfg.iwae_chunk, cfg.seed) if eight_bit
                        else None)

    def extra(record: dict, ref, held) -> dict:
        return {**likelihood_record(model, held.images, cfg), **write_figures(model, held.images, run_dir, cfg.seed)}

    return evaluation.evaluate_checkpoint("VAE", "VAE", caps, cfg, state["config"],
                                          params=sum(p.numel() for p in model.parameters()), extra=extra)


def check(cfg: EvalConfig) -> None:
    evaluation.check_eval_config(cfg)
    if cfg.iwae_k < 1 or cfg.nll_num < 2 or cfg.iwae_chunk < 1:
        raise ValueError("--iwae-k and --iwae-chunk must be >= 1 and --nll-num >= 2")


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
