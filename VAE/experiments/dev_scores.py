"""Quick held-out figures for development runs (the EXPERIMENTS.md tables), cheaper than evaluate.py:

    python experiments/dev_scores.py runs/dev/a runs/dev/b      # from inside VAE/

For each run: -ELBO, its terms and the IWAE NLL (k = 100) in nats on the first 300 of the harness's held-out
MNIST images (evaluation.subset(test, 2000, seed 1), binarised once with evaluate.BINARISE_SEED, exactly as
evaluate.py), the active units, and FID-1000: 1,000 prior samples against 1,000 training images in the features
of the harness's MNIST classifier (the harness itself uses 2,000 of each, so the values differ from its FID).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate import active_units, likelihood_bounds  # noqa: E402
from model import sample  # noqa: E402
from sample import load_model  # noqa: E402
from shared import metrics  # noqa: E402
from shared.data import load_dataset, to_float  # noqa: E402
from shared.evaluation import subset  # noqa: E402
from shared.features import classifier_extractor  # noqa: E402


def main(runs: list[str]) -> None:
    torch.set_num_threads(1)
    for run in runs:
        model, state = load_model(run, "cpu")
        size = model.cfg.image_size
        train, test = load_dataset("mnist", None, size, "train"), load_dataset("mnist", None, size, "test")
        extractor = classifier_extractor(train, test, "mnist", log=lambda s: None)
        b = likelihood_bounds(model, subset(test, 2000, 1).images[:300], k=100)
        f_ref, _ = extractor(to_float(subset(train, 1000, 0).images))
        f_fake, _ = extractor(sample(model, 1000, rng=torch.Generator().manual_seed(0)))
        print(f"{run}: step {state['step']}, -ELBO {b['nelbo'].mean():.2f} (rec {b['rec'].mean():.2f}, KL "
              f"{b['kl'].mean():.2f}), IWAE-100 {b['iwae_nll'].mean():.2f} nats, {len(active_units(b['mu']))} "
              f"active units, FID-1000 {metrics.fid(f_ref, f_fake):.1f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
