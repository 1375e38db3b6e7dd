"""Training throughput of both VQ-VAE stages on this machine (the real training loops of train.py).

    python benchmark.py                                     # train.py's defaults: MNIST 32x32, batch 64, fp32
    python benchmark.py --precisions fp32 bf16              # also bf16 autocast (default only on native-bf16 CPUs)
    python benchmark.py --hidden 256 --res-hidden 256 --codes 512 --code-dim 64   # the paper's network

Runs train.main for --steps steps per stage and setting (stage 2 on the codes of a 2-step stage 1) and reads
images/s from each stage's metrics.jsonl (after the first --warmup steps), then prints the share of this
machine's measured matmul peaks it reaches. The first line names the CPU: figures from different CPUs cannot be
compared.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

import train
from model import VQVAE, Config, Prior, commitment_loss, prior_nll, reconstruction_loss
from shared import bench
from shared.data import load_dataset
from shared.dist import cpu_flags


def default_precisions() -> list[str]:
    """fp32, and bf16 where the CPU has native bf16 (AVX512-BF16 or AMX); emulated bf16 is 4-5x slower."""
    return ["fp32", "bf16"] if {"avx512_bf16", "amx_bf16"} & cpu_flags() else ["fp32"]


def flops_per_step(cfg: Config, batch: int) -> dict[str, int]:
    """FLOPs of one training step of each stage (forward + backward), on the same networks."""
    vq, prior = VQVAE(cfg), Prior(cfg)
    x = torch.randn(batch, cfg.channels, cfg.image_size, cfg.image_size)
    codes = torch.randint(0, cfg.codes, (batch, cfg.grid, cfg.grid))

    def vq_step() -> None:
        x_hat, z_e, z_q, _ = vq(x)
        (reconstruction_loss(x_hat, x) + commitment_loss(z_e, z_q, cfg.beta)).backward()

    return {"vqvae": bench.count_flops(vq_step),
            "prior": bench.count_flops(lambda: prior_nll(prior, codes).mean().backward())}


def stage_images_per_s(stage: str, make_config) -> float:
    """bench.train_images_per_s for one stage: its metrics.jsonl lives in OUT/<stage>/."""
    def run(cfg: train.TrainConfig) -> None:
        train.main(cfg)
        shutil.copy(Path(cfg.out) / stage / "metrics.jsonl", Path(cfg.out) / "metrics.jsonl")
    return bench.train_images_per_s(run, make_config)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    for name in ("hidden", "res_hidden", "codes", "code_dim", "prior_width", "prior_layers"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(train.TrainConfig, name))
    p.add_argument("--precisions", nargs="+", default=default_precisions(), choices=["fp32", "bf16"],
                   help="default: fp32, and bf16 on CPUs with native bf16")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}  # only the ones asked for
    channels = load_dataset(args.dataset, args.data_root or None, args.image_size).channels
    sizes = dict(hidden=args.hidden, res_hidden=args.res_hidden, codes=args.codes, code_dim=args.code_dim,
                 prior_width=args.prior_width, prior_layers=args.prior_layers)
    flops = flops_per_step(Config(image_size=args.image_size, channels=channels, **sizes), args.batch_size)
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    print(f"VQ-VAE {args.dataset} {args.image_size}x{args.image_size}, batch {args.batch_size}, {sizes}: "
          + ", ".join(f"{stage} {f / args.batch_size / 1e9:.3f}" for stage, f in flops.items())
          + " GFLOP per training image")
    print(bench.report_header(peaks))
    for precision in args.precisions:
        for stage in ("vqvae", "prior"):
            def config(out: str) -> train.TrainConfig:
                return train.TrainConfig(
                    dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                    batch_size=args.batch_size, threads=args.threads, precision=precision, out=out,
                    stage="vqvae" if stage == "vqvae" else "both", steps=args.steps if stage == "vqvae" else 2,
                    prior_steps=args.steps, log_every=args.warmup, sample_every=10 ** 9, ckpt_every=10 ** 9,
                    **sizes)

            images_per_s = stage_images_per_s(stage, config)  # skips the warm-up window
            print(bench.report_row(f"{stage} {precision}", images_per_s, flops[stage] / args.batch_size, peaks),
                  flush=True)


if __name__ == "__main__":
    main()
