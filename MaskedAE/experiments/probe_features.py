"""Linear-probe and k-NN accuracy of an MAE checkpoint's encoder for each feature choice, beside its untrained twin
and raw pixels, on the harness's own sets (shared.evaluation: --num training images fit, --num test images score).

    python experiments/probe_features.py runs/mae --num 2000
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import FEATURES, features  # noqa: E402
from sample import load_model  # noqa: E402
from shared.data import load_dataset  # noqa: E402
from shared.evaluation import representation, subset  # noqa: E402
from train import build  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, state = load_model(args.checkpoint, torch.device("cpu"))
    cfg = state["config"]
    train = load_dataset(cfg["dataset"], cfg["data_root"] or None, cfg["image_size"], "train", seed=0)
    test = load_dataset(cfg["dataset"], cfg["data_root"] or None, cfg["image_size"], "test", seed=0)
    ref, held = subset(train, args.num, args.seed), subset(test, args.num, args.seed + 1)  # as the harness
    twin = build(model.cfg, cfg["seed"]).eval()
    print(f"{args.checkpoint}: step {state['step']}")
    print(f"  {'pixels':10s} {representation(lambda x: x.flatten(1), ref, held)}")
    for kind in FEATURES:
        print(f"  {kind:10s} trained {representation(lambda x: features(model.encoder, x, kind), ref, held)}   "
              f"random init {representation(lambda x: features(twin.encoder, x, kind), ref, held)}", flush=True)


if __name__ == "__main__":
    main()
