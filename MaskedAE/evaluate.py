"""Evaluate an MAE checkpoint with the shared harness (shared/evaluation.py), against two baselines.

    python evaluate.py --checkpoint runs/mae --num 2000
    python evaluate.py --checkpoint runs/mae --features mean       # the mean patch token instead of all patch tokens

Prints and appends to <run>/eval.jsonl:
  * representation (the harness): linear-probe and 5-NN accuracy on the labels of the frozen encoder's features
    of the whole, UNMASKED image (--features: every patch token after the final LayerNorm, concatenated, by
    default; or their mean, the cls token, both, or the mean token of every block; see the README), fitted on
    --num training images and scored on --num held-out test images; on `shapes` also MIG and the FactorVAE score.
    Beside them: `*_random_init`, the same probes on the untrained twin (the same architecture initialised
    exactly as train.py initialised this run, same seed), and `*_pixels`, the same probes on the raw pixels;
  * reconstruction (the harness's mse / psnr): held-out test images with a random mask at the run's mask ratio
    (one mask per image, seeded by --seed, the same for every checkpoint of a size), the reconstruction pasted
    into the hidden patches, compared with the whole original image, so the visible patches add zero error:
    mse = (hidden share) x (MSE on the hidden patches). `mse_masked` is the MSE on the hidden patches alone, also
    at mask ratios 0.5 and 0.9 (`mse_masked_r0.50`, ...), and `mse_masked_mean_fill` what filling every hidden
    pixel with the mean of the image's visible pixels scores (a reconstruction that learned nothing).
An MAE does not sample, so there are no FID / precision / recall rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from model import FEATURES, MaskedAutoencoder, features, mask_image, random_masking, reconstruct
from sample import load_model
from shared import cli, evaluation
from shared.data import ImageData, to_float
from shared.evaluation import Capabilities, representation
from train import build


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate an MAE checkpoint."""
    checkpoint: str = "runs/mae"  # run folder (its latest checkpoint) or checkpoint file
    features: str = "tokens"  # encoder features for the probes: tokens (all patch tokens) | mean | cls | mean+cls | blocks (model.features; README)


def fixed_mask(n: int, model: MaskedAutoencoder, ratio: float, seed: int) -> torch.Tensor:
    """The evaluation's masks (n, L): seeded, independent of the training RNG."""
    return random_masking(n, model.cfg.num_patches, ratio, generator=torch.Generator().manual_seed(seed + 7))[1]


def masked_mse(model: MaskedAutoencoder, x: torch.Tensor, ratio: float, seed: int) -> tuple[float, float]:
    """(MSE of the reconstruction on the hidden pixels, MSE of a mean-of-visible-pixels fill there)."""
    mask = fixed_mask(len(x), model, ratio, seed)
    hidden = mask_image(mask, model.cfg.patch_size, x.shape[-1]).expand_as(x)  # (N, C, H, W), 1 = hidden
    rec = torch.cat([reconstruct(model, xb, mb)[0] for xb, mb in zip(x.split(250), mask.split(250))])
    fill = ((x * (1 - hidden)).flatten(1).sum(1) / (1 - hidden).flatten(1).sum(1))[:, None, None, None]
    per_pixel = lambda y: ((y - x).square() * hidden).sum() / hidden.sum()
    return float(per_pixel(rec)), float(per_pixel(fill.expand_as(x)))


def baselines(model: MaskedAutoencoder, state: dict, kind: str, train: ImageData, test: ImageData,
              seed: int) -> dict:
    """The untrained twin's and the raw pixels' probes on the harness's own sets, and the masked-patch errors."""
    twin = build(model.cfg, state["config"]["seed"]).eval()  # exactly as train.py began
    rand = representation(lambda x: features(twin.encoder, x, kind), train, test)
    pixels = representation(lambda x: x.flatten(1), train, test)
    out = {"features": kind, "linear_probe_random_init": rand["linear_probe"], "knn_random_init": rand["knn"],
           "linear_probe_pixels": pixels["linear_probe"], "knn_pixels": pixels["knn"]}
    x = to_float(test.images)
    out["mse_masked"], out["mse_masked_mean_fill"] = masked_mse(model, x, model.cfg.mask_ratio, seed)
    for ratio in (0.5, 0.9):
        out[f"mse_masked_r{ratio:.2f}"] = masked_mse(model, x, ratio, seed)[0]
    return out


def main(cfg: EvalConfig) -> dict:
    if cfg.features not in FEATURES:
        cli.fail(f"--features must be one of {', '.join(FEATURES)}, got {cfg.features!r}")
    model, state = load_model(cfg.checkpoint, torch.device("cpu"))
    gen = torch.Generator().manual_seed(cfg.seed + 7)  # the harness reconstructs chunk by chunk: masks drawn in turn

    def pasted(x: torch.Tensor) -> torch.Tensor:
        mask = random_masking(len(x), model.cfg.num_patches, model.cfg.mask_ratio, generator=gen)[1]
        return reconstruct(model, x, mask)[1]

    caps = Capabilities(encode=lambda x: features(model.encoder, x, cfg.features), reconstruct=pasted)
    record = evaluation.evaluate_checkpoint(
        "MaskedAE", "autoencoder", caps, cfg, state["config"], params=sum(p.numel() for p in model.parameters()),
        extra=lambda rec, ref, held: baselines(model, state, cfg.features, ref, held, cfg.seed))
    print(f"  MAE encoder ({cfg.features} features) vs its untrained twin and raw pixels:")
    for key in ("linear_probe", "knn"):
        print(f"    {key:14s} {record[key]:8.4f}   random init {record[key + '_random_init']:8.4f}   "
              f"pixels {record[key + '_pixels']:8.4f}")
    print(f"    MSE on hidden patches at r = {model.cfg.mask_ratio}: {record['mse_masked']:.4f} "
          f"(mean-of-visible fill {record['mse_masked_mean_fill']:.4f})")
    return record


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
