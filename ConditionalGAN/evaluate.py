"""Evaluate a ConditionalGAN checkpoint with the shared harness (shared/evaluation.py).

    python evaluate.py --checkpoint runs/conditionalgan --num 2000

Prints FID / KID / precision / recall / classifier IS of --num samples (labels drawn uniformly over the
classes) against the training data, with the real-vs-real floor beside each; then the conditioning test: --num
samples requested class by class (equal numbers per class), and the share the dataset's classifier assigns to
the requested class, overall and per class (shapes: the shape, MNIST: the digit). Also near-copies of training
images, parameters and speed; appends the record to <run>/eval.jsonl.
"""
# Adapted from DCGAN/evaluate.py: flags and the shared-harness call; the capabilities are this model's.
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model import sample, sample_any_class
from sample import load_generator
from shared import checkpoint, cli
from shared.data import DataError
from shared.evaluation import Capabilities, evaluate, run_dir_of, train_throughput
from shared.features import inception_extractor


@dataclass
class EvalConfig:
    """Evaluate a ConditionalGAN checkpoint."""
    checkpoint: str = "runs/conditionalgan"  # run folder (its latest checkpoint) or checkpoint file
    num: int = 2000  # samples (and real images per reference set); also the samples of the class-accuracy test
    data_root: str = ""  # where the dataset lives (default: the one the run trained with)
    seed: int = 0  # seeds the samples and the real subsets
    raw: bool = False  # evaluate G's raw weights, not their moving average (when the run kept one)
    inception_weights: str = ""  # local Inception-v3 weights (torchvision or pytorch-fid file) instead of the classifier
    threads: int = 0  # CPU threads (0 = torch's default)


def main(cfg: EvalConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    G, state = load_generator(cfg.checkpoint, torch.device("cpu"), cfg.raw)
    train_cfg, run = state["config"], run_dir_of(cfg.checkpoint)
    caps = Capabilities(sample=lambda n, gen: sample_any_class(G, n, rng=gen),
                        sample_class=lambda labels, gen: sample(G, labels, rng=gen))
    record = evaluate("ConditionalGAN", "GAN", caps, dataset=train_cfg["dataset"],
                      data_root=cfg.data_root or train_cfg["data_root"] or None,
                      image_size=train_cfg["image_size"], num=cfg.num, seed=cfg.seed, run_dir=run,
                      params=sum(p.numel() for p in G.parameters()), train_images_per_s=train_throughput(run),
                      extractor=inception_extractor(cfg.inception_weights) if cfg.inception_weights else None)
    names = state.get("classes") or [str(k) for k in range(G.cfg.num_classes)]
    print("  classifier accuracy of samples per requested class:")
    for name, acc in zip(names, record["class_accuracy_per_class"]):
        print(f"    {name:24s} {'-' if math.isnan(acc) else f'{acc:.3f}':>8}")
    return record


def check(cfg: EvalConfig) -> None:
    if cfg.num < 10 or cfg.threads < 0:
        raise ValueError("--num must be >= 10 and --threads >= 0")


if __name__ == "__main__":
    config = cli.parse(EvalConfig, check=check)
    try:
        main(config)
    except (DataError, checkpoint.CheckpointError) as err:
        cli.fail(str(err).splitlines()[0])
