"""Evaluate a StyleGAN checkpoint (its EMA generator) with the shared harness (shared/evaluation.py).

    python evaluate.py --checkpoint runs/stylegan --num 2000
    python evaluate.py --checkpoint runs/stylegan --num 2000 --truncation 0.7    # truncated samples

Prints FID / KID / precision / recall / classifier IS of --num samples against the training data (with the
real-vs-real floor beside each), the share of near-copies of training images, parameters and speed, and
appends the record to <run>/eval.jsonl. A GAN has no encoder and no likelihood, so those rows are absent.
"""
# Adapted from DCGAN/evaluate.py: the EMA generator and --truncation.
from __future__ import annotations

from dataclasses import dataclass

import torch

from model import sample
from sample import load_generator
from shared import evaluation
from shared.evaluation import Capabilities


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a StyleGAN checkpoint."""
    checkpoint: str = "runs/stylegan"  # run folder (its latest checkpoint) or checkpoint file
    truncation: float = 1.0  # psi of the truncation trick (1 = off); recorded in the eval record


def main(cfg: EvalConfig) -> dict:
    G, state = load_generator(cfg.checkpoint, torch.device("cpu"))
    caps = Capabilities(sample=lambda n, gen: sample(G, n, rng=gen, psi=cfg.truncation))
    return evaluation.evaluate_checkpoint("StyleGAN", "GAN", caps, cfg, state["config"],
                                          params=sum(p.numel() for p in G.parameters()),
                                          extra=lambda record, ref, held: {"truncation": cfg.truncation})


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
