"""Short probes for choosing train.py's defaults: train for --minutes, then score held-out bits/dim.

    python experiments/probe.py NAME --minutes 2 -- --flow glow --depth 8 --width 64     # flags after -- go to train.py

Trains into runs/probe/NAME (train.main with the given flags, 1 thread) and appends to runs/probe/results.jsonl
the steps made, training images/s and the bits/dim of the first --num embedded-MNIST test images (one seeded
dequantisation, evaluate.bits_per_dim_fn: the harness's figure).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

FOLDER = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(FOLDER))

import evaluate  # noqa: E402
import train  # noqa: E402
from shared import cli  # noqa: E402
from shared.data import load_dataset  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--num", type=int, default=1000)
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    out = FOLDER / "runs" / "probe" / args.name
    cfg = cli.parse(train.TrainConfig, ["--minutes", str(args.minutes), "--threads", "1", "--out", str(out),
                                        "--sample-every", "100000", "--ckpt-every", "100000", *extra], train.check)
    run = train.main(cfg)
    flow, state = evaluate.load_model(run, torch.device("cpu"))
    test = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "test", seed=0)
    bpd = evaluate.bits_per_dim_fn(flow)(test.images[: args.num])
    ips = evaluate.evaluation.train_throughput(run)
    record = {"name": args.name, "flags": " ".join(extra), "minutes": args.minutes, "steps": state["step"],
              "train_images_per_s": ips, "test_bits_per_dim": bpd.mean().item(),
              "params": sum(p.numel() for p in flow.parameters()), "precision": json.loads(
                  (run / "config.json").read_text())["precision_resolved"]}
    print(json.dumps(record))
    with open(FOLDER / "runs" / "probe" / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
