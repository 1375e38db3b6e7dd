"""Evaluate a ConditionalGAN checkpoint with the shared harness (shared/evaluation.py).

    python evaluate.py --checkpoint runs/conditionalgan --num 2000

Prints FID / KID / precision / recall / classifier IS of --num samples (labels drawn uniformly over the
classes) against the training data, with the real-vs-real floor beside each; then the conditioning test: --num
samples requested class by class (equal numbers per class), and the share the dataset's classifier assigns to
the requested class, overall and per class (MNIST: the digit, shapes: the shape). Also near-copies of training
images, parameters and speed; appends the record to <run>/eval.jsonl.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model import sample, sample_any_class
from sample import load_generator
from shared import evaluation
from shared.evaluation import Capabilities


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a ConditionalGAN checkpoint (its moving average of G when the run kept one)."""
    checkpoint: str = "runs/conditionalgan"  # run folder (its latest checkpoint) or checkpoint file
    raw: bool = False  # evaluate G's raw weights, not their moving average (when the run kept one: --ema)


def main(cfg: EvalConfig) -> dict:
    G, state = load_generator(cfg.checkpoint, torch.device("cpu"), cfg.raw)
    caps = Capabilities(sample=lambda n, gen: sample_any_class(G, n, rng=gen),
                        sample_class=lambda labels, gen: sample(G, labels, rng=gen))
    record = evaluation.evaluate_checkpoint("ConditionalGAN", "GAN", caps, cfg, state["config"],
                                            params=sum(p.numel() for p in G.parameters()))
    names = state.get("classes") or [str(k) for k in range(G.cfg.num_classes)]
    print("  classifier accuracy of samples per requested class:")
    for name, acc in zip(names, record["class_accuracy_per_class"]):
        print(f"    {name:24s} {'-' if math.isnan(acc) else f'{acc:.3f}':>8}")
    return record


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
