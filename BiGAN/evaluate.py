"""Evaluate a BiGAN checkpoint with the shared harness (shared/evaluation.py), against an untrained encoder.

    python evaluate.py --checkpoint runs/bigan --num 2000

Prints and appends to <run>/eval.jsonl:
  * sample quality: FID / KID / precision / recall / classifier IS of --num samples against the training data,
    with the real-vs-real floor beside each, and the share of near-copies of training images;
  * reconstruction G(E(x)) of held-out test images: MSE and PSNR, beside `mse_random_sample`, the MSE between
    the same images and random samples G(z) (what a reconstruction that knew nothing about x would score);
  * representation: linear-probe and 5-NN accuracy of E(x) on the labels (shapes class, MNIST digit), and on
    `shapes` MIG and the FactorVAE score; beside them `*_random_init`: the same probe on the untrained encoder
    of the same architecture, initialised exactly as train.py initialised this run's E (same seed), so the
    difference is what adversarial training taught E.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model import Config, encode, reconstruct, sample
from sample import load_models
from shared import evaluation, metrics
from shared.data import ImageData, to_float
from shared.evaluation import Capabilities, representation
from train import build


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a BiGAN checkpoint."""
    checkpoint: str = "runs/bigan"  # run folder (its latest checkpoint) or checkpoint file


def main(cfg: EvalConfig) -> dict:
    G, E, state = load_models(cfg.checkpoint, torch.device("cpu"))
    train_cfg = state["config"]
    caps = Capabilities(sample=lambda n, gen: sample(G, n, rng=gen), encode=lambda x: encode(E, x),
                        reconstruct=lambda x: reconstruct(G, E, x))
    record = evaluation.evaluate_checkpoint("BiGAN", "GAN", caps, cfg, train_cfg,
                                            params=sum(p.numel() for net in (G, E) for p in net.parameters()),
                                            extra=lambda rec, ref, held: baselines(G, state, ref, held, cfg.seed))
    print(f"  BiGAN encoder vs the same encoder untrained (random init, seed {train_cfg['seed']}):")
    for key in ("linear_probe", "knn"):
        print(f"    {key:26s} {record[key]:8.4f}   random init {record[key + '_random_init']:8.4f}")
    print(f"    {'reconstruction MSE':26s} {record['mse']:8.4f}   random sample G(z) {record['mse_random_sample']:8.4f}")
    return record


def baselines(G, state: dict, train: ImageData, test: ImageData, seed: int) -> dict:
    """Probe accuracy of the untrained E, and the MSE of held-out images to random samples G(z), on the harness's
    own sets (`train`: the training images that fit the probe, `test`: the held-out images that score it), so the
    figures sit beside the harness's and go into the same eval.jsonl record."""
    _, E0, _ = build(Config(**state["model_config"]), state["config"]["seed"])  # E exactly as train.py began
    E0.eval()
    rand = representation(lambda x: encode(E0, x), train, test)
    x = to_float(test.images)
    fake = sample(G, len(x), rng=torch.Generator().manual_seed(seed + 3))
    return {"linear_probe_random_init": rand["linear_probe"], "knn_random_init": rand["knn"],
            "mse_random_sample": metrics.mse_psnr(x, fake)[0]}


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
