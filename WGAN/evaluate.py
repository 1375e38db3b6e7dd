"""Evaluate a WGAN checkpoint with the shared harness (shared/evaluation.py).

    python evaluate.py --checkpoint runs/wgan --num 2000

Prints FID / KID / precision / recall / classifier IS of --num samples against the training data (with the
real-vs-real floor beside each), the share of near-copies of training images, parameters and speed, and
appends the record to <run>/eval.jsonl. A GAN has no encoder and no likelihood, so those rows are absent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model import sample
from sample import load_generator
from shared import evaluation


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a WGAN checkpoint (either variant: only G is needed)."""
    checkpoint: str = "runs/wgan"  # run folder (its latest checkpoint) or checkpoint file


def main(cfg: EvalConfig) -> dict:
    G, state = load_generator(cfg.checkpoint, torch.device("cpu"))
    caps = evaluation.Capabilities(sample=lambda n, gen: sample(G, n, rng=gen))
    return evaluation.evaluate_checkpoint("WGAN", "GAN", caps, cfg, state["config"],
                                          params=sum(p.numel() for p in G.parameters()))


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
