"""Training throughput of the MAE on this machine (fp32 vs bf16 autocast), and what masking saves in the encoder.

    python benchmark.py                                     # train.py's defaults: MNIST, 28x28, patch 4, batch 128
    python benchmark.py --precisions fp32                   # fp32 only
    python benchmark.py --mask-ratios 0 0.5 0.75 0.9        # the encoder's FLOPs per image at each mask ratio

Runs the real training loop (train.main) for --steps steps per setting and reads images/s from its metrics.jsonl
(after --warmup steps), then prints the share of this machine's measured matmul peaks it reaches, and the
counted FLOPs of the encoder and decoder per image at each mask ratio (the encoder sees only the visible patches,
so its cost falls with the ratio; the decoder always sees all L). The first line names the CPU.
"""
from __future__ import annotations

import argparse

import torch

import train
from model import MaskedAutoencoder, mae_loss, num_kept, patchify, random_masking
from shared import bench
from shared.data import load_dataset
from shared.dist import cpu_flags


def default_precisions() -> list[str]:
    """fp32, and bf16 where the CPU has native bf16 (AVX512-BF16 or AMX); emulated bf16 is 4-5x slower."""
    return ["fp32", "bf16"] if {"avx512_bf16", "amx_bf16"} & cpu_flags() else ["fp32"]


def flops_per_step(cfg: train.TrainConfig, channels: int, ratio: float | None = None) -> int:
    """FLOPs of one training step (forward and backward) of the network these flags build."""
    model = MaskedAutoencoder(train.model_config(cfg, channels))
    x = torch.randn(cfg.batch_size, channels, cfg.image_size, cfg.image_size)
    return bench.count_flops(lambda: mae_loss(model, model.cfg, x, ratio=ratio)[0].backward())


def forward_flops(cfg: train.TrainConfig, channels: int, ratio: float) -> tuple[int, int]:
    """(encoder, decoder) forward FLOPs per image at mask ratio `ratio`."""
    model = MaskedAutoencoder(train.model_config(cfg, channels))
    x = torch.randn(8, channels, cfg.image_size, cfg.image_size)
    L = model.cfg.num_patches
    ids_shuffle, _ = random_masking(8, L, ratio)
    patches = patchify(x, model.cfg.patch_size)
    with torch.no_grad():
        tokens = model.encoder(patches, ids_shuffle, num_kept(L, ratio))
        enc = bench.count_flops(lambda: model.encoder(patches, ids_shuffle, num_kept(L, ratio)))
        dec = bench.count_flops(lambda: model.decoder(tokens, ids_shuffle))
    return enc // 8, dec // 8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=train.TrainConfig.image_size)
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--dim", type=int, default=train.TrainConfig.dim)
    p.add_argument("--depth", type=int, default=train.TrainConfig.depth)
    p.add_argument("--precisions", nargs="+", default=default_precisions(), choices=["fp32", "bf16"],
                   help="default: fp32, and bf16 on CPUs with native bf16")
    p.add_argument("--mask-ratios", nargs="+", type=float, default=[0.0, 0.5, 0.75, 0.9])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}
    channels = load_dataset(args.dataset, args.data_root or None, args.image_size).channels
    base = train.TrainConfig(dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                             batch_size=args.batch_size, dim=args.dim, depth=args.depth)
    flops = flops_per_step(base, channels)
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    print(f"MaskedAE {args.dataset} {args.image_size}x{args.image_size}, patch {base.patch_size}, dim {args.dim}, "
          f"depth {args.depth}, batch {args.batch_size}, mask {base.mask_ratio}: "
          f"{flops / args.batch_size / 1e6:.1f} MFLOP per training image")
    print("forward MFLOP per image by mask ratio:  ratio  encoder  decoder")
    for ratio in args.mask_ratios:
        enc, dec = forward_flops(base, channels, ratio)
        print(f"{'':40s}{ratio:5.2f} {enc / 1e6:8.2f} {dec / 1e6:8.2f}")
    print(bench.report_header(peaks))
    for precision in args.precisions:
        def config(out: str) -> train.TrainConfig:
            return train.TrainConfig(
                dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                batch_size=args.batch_size, dim=args.dim, depth=args.depth, steps=args.steps, minutes=0,
                threads=args.threads, precision=precision, out=out, log_every=args.warmup,
                sample_every=10 ** 9, ckpt_every=10 ** 9)

        images_per_s = bench.train_images_per_s(train.main, config)  # skips the warm-up window
        print(bench.report_row(precision, images_per_s, flops / args.batch_size, peaks), flush=True)


if __name__ == "__main__":
    main()
