"""Evaluate a BetaVAE checkpoint with the shared harness (shared/evaluation.py).

    python evaluate.py --checkpoint runs/betavae --num 2000

Prints FID / KID / precision / recall / IS of --num prior samples (real-vs-real floor beside each), the
reconstruction MSE / PSNR of held-out images (decoded posterior means), linear-probe and k-NN accuracy of the
posterior means, on shapes MIG and the FactorVAE score of the posterior means against the true factors, and the
folder's own figures on the held-out set: `kl` (mean KL(q(z|x) || p(z)) per image, nats), `kl_per_dim` (the
same per latent dimension), `active_dims` (dimensions with mean KL > 0.1 nats), `recon_nats` (the Bernoulli
reconstruction cost E_q[-log p(x|z)] per image, one z per image, on intensities in [0, 1]) and `neg_elbo_nats`
(recon_nats + kl). The Bernoulli on 8-bit intensities is not a likelihood of the 256-level data, so no
bits_per_dim is reported. The record is appended to <run>/eval.jsonl.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model import BetaVAE, bernoulli_nll, encode, kl_per_dim, reconstruct, reparameterize, sample
from sample import load_vae
from shared import evaluation
from shared.data import ImageData, to_float
from shared.evaluation import Capabilities

ACTIVE_KL = 0.1  # nats: a dimension whose mean KL is below this carries (almost) no information


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a BetaVAE checkpoint."""
    checkpoint: str = "runs/betavae"  # run folder (its latest checkpoint) or checkpoint file


@torch.no_grad()
def latent_figures(vae: BetaVAE, held: ImageData, seed: int) -> dict:
    """KL per dimension, active dimensions, reconstruction cost and negative ELBO on the held-out images."""
    torch.manual_seed(seed)
    x = to_float(held.images)
    mu, logvar = encode(vae, x)
    kl_dims = kl_per_dim(mu, logvar).mean(0)  # (z_dim,)
    recon = torch.cat([bernoulli_nll(vae.decoder(reparameterize(m, lv)), xb)
                       for m, lv, xb in zip(mu.split(250), logvar.split(250), x.split(250))]).mean()
    return {"kl": kl_dims.sum().item(), "kl_per_dim": [round(v, 4) for v in kl_dims.tolist()],
            "active_dims": int((kl_dims > ACTIVE_KL).sum()), "recon_nats": recon.item(),
            "neg_elbo_nats": recon.item() + kl_dims.sum().item()}


def main(cfg: EvalConfig) -> dict:
    vae, state = load_vae(cfg.checkpoint, torch.device("cpu"))
    caps = Capabilities(sample=lambda n, gen: sample(vae, n, rng=gen),
                        encode=lambda x: encode(vae, x)[0],  # the posterior mean
                        reconstruct=lambda x: reconstruct(vae, x))
    train_cfg = state["config"]
    setting = {k: train_cfg[k] for k in ("objective", "beta", "gamma", "capacity_max", "capacity_steps")}
    return evaluation.evaluate_checkpoint(
        "BetaVAE", "VAE", caps, cfg, train_cfg, params=sum(p.numel() for p in vae.parameters()),
        extra=lambda record, ref, held: {**latent_figures(vae, held, cfg.seed), "step": state["step"], **setting})


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
