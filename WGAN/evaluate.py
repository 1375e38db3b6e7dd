"""Evaluate a WGAN checkpoint with the shared harness (shared/evaluation.py).

    python evaluate.py --checkpoint runs/wgan --num 2000

Prints FID / KID / precision / recall / classifier IS of --num samples against the training data (with the
real-vs-real floor beside each), the share of near-copies of training images, parameters and speed, and
appends the record to <run>/eval.jsonl. A GAN has no encoder and no likelihood, so those rows are absent.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Adapted from DCGAN/evaluate.py: flags and the shared-harness call; the capabilities are this model's.
from model import sample
from sample import load_generator
from shared import checkpoint, cli
from shared.data import DataError
from shared.evaluation import Capabilities, evaluate, run_dir_of, train_throughput
from shared.features import inception_extractor


@dataclass
class EvalConfig:
    """Evaluate a WGAN checkpoint."""
    checkpoint: str = "runs/wgan"  # run folder (its latest checkpoint) or checkpoint file
    num: int = 2000  # samples (and real images per reference set)
    data_root: str = ""  # where the dataset lives (default: the one the run trained with)
    seed: int = 0  # seeds the samples and the real subsets
    inception_weights: str = ""  # local Inception-v3 weights (torchvision or pytorch-fid file) instead of the classifier
    threads: int = 0  # CPU threads (0 = torch's default)


def main(cfg: EvalConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    G, state = load_generator(cfg.checkpoint, torch.device("cpu"))
    train_cfg, run = state["config"], run_dir_of(cfg.checkpoint)
    caps = Capabilities(sample=lambda n, gen: sample(G, n, rng=gen))
    return evaluate("WGAN", "GAN", caps, dataset=train_cfg["dataset"],
                    data_root=cfg.data_root or train_cfg["data_root"] or None,
                    image_size=train_cfg["image_size"], num=cfg.num, seed=cfg.seed, run_dir=run,
                    params=sum(p.numel() for p in G.parameters()), train_images_per_s=train_throughput(run),
                    extractor=inception_extractor(cfg.inception_weights) if cfg.inception_weights else None)


def check(cfg: EvalConfig) -> None:
    if cfg.num < 10 or cfg.threads < 0:
        raise ValueError("--num must be >= 10 and --threads >= 0")


if __name__ == "__main__":
    config = cli.parse(EvalConfig, check=check)
    try:
        main(config)
    except (DataError, checkpoint.CheckpointError) as err:
        cli.fail(str(err).splitlines()[0])
