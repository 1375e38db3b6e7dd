"""Training throughput of both stages of the latent diffusion model on this machine, and sampling images/s.

    python benchmark.py --threads 1                          # train.py's defaults: MNIST 32x32, f = 4
    python benchmark.py --widths 32 64 --precisions fp32 bf16

Runs the real training loops (train.main, train.train_autoencoder, then train.train_diffusion on that autoencoder) for
--steps steps per setting and reads images/s from their metrics.jsonl (after --warmup steps), prints the share
of this machine's measured matmul peak each reaches, then the images/s of DDIM sampling at --sample-steps
steps (latent U-Net passes plus one decoder pass per image). The first line names the CPU: figures from
different CPUs cannot be compared.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

import train
from model import Config, kl_divergence, l_simple, reconstruction_loss, sample, schedule_of
from networks import Autoencoder, UNet
from shared import bench
from shared.data import load_dataset


def flops_per_image(cfg: Config, stage: str) -> float:
    """FLOPs of one training image (forward and backward) of the autoencoder or the latent U-Net."""
    if stage == "autoencoder":
        ae, x = Autoencoder(cfg), torch.randn(1, cfg.channels, cfg.image_size, cfg.image_size)

        def step():
            x_hat, mean, logvar = ae(x)
            (reconstruction_loss(x_hat, x).mean() + kl_divergence(mean, logvar).mean()).backward()
    else:
        net, sch = UNet(cfg), schedule_of(cfg)
        z = torch.randn(1, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        step = lambda: l_simple(net, sch, z, torch.tensor([500]), torch.randn_like(z)).backward()
    return bench.count_flops(step)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dataset", default=train.TrainConfig.dataset)
    p.add_argument("--data-root", default="")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--factor", type=int, default=Config.factor)
    p.add_argument("--ae-width", type=int, default=Config.ae_width)
    p.add_argument("--widths", type=int, nargs="+", default=[Config.width], help="U-Net widths")
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of the sampling row (0 = none)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: bench.matmul_peak(dtypes[name]) for name in args.precisions}
    print(f"matmul peak with {args.threads} threads: "
          + ", ".join(f"{name} {peak / 1e12:.3f} TFLOP/s" for name, peak in peaks.items()))
    channels = load_dataset(args.dataset, args.data_root or None, args.image_size).channels
    base = train.TrainConfig(dataset=args.dataset, data_root=args.data_root, image_size=args.image_size,
                             factor=args.factor, ae_width=args.ae_width, steps=args.steps,
                             diffusion_steps=args.steps, threads=args.threads, log_every=args.warmup,
                             sample_every=10 ** 9, ckpt_every=10 ** 9)
    print(bench.report_header(peaks))
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            cfg = dataclasses.replace(base, precision=precision, stage="autoencoder", out=f"{tmp}/{precision}")
            flops = flops_per_image(train.model_config(cfg, channels), "autoencoder")
            speed = bench.train_images_per_s(train.train_autoencoder, lambda out: dataclasses.replace(cfg, out=out))
            print(bench.report_row(f"autoencoder {precision}", speed, flops, peaks), flush=True)
            train.train_autoencoder(dataclasses.replace(cfg, steps=1, log_every=1))  # for the diffusion rows
        for width in args.widths:
            for precision in args.precisions:
                cfg = dataclasses.replace(base, precision=precision, stage="diffusion", width=width,
                                          autoencoder=f"{tmp}/{args.precisions[0]}")
                flops = flops_per_image(train.model_config(cfg, channels), "diffusion")
                speed = bench.train_images_per_s(train.train_diffusion, lambda out: dataclasses.replace(cfg, out=out))
                print(bench.report_row(f"U-Net width {width} {precision}", speed, flops, peaks), flush=True)
            if args.sample_steps:
                mcfg = train.model_config(dataclasses.replace(base, width=width), channels)
                ae, net = Autoencoder(mcfg).eval(), UNet(mcfg).eval()
                start = time.perf_counter()
                sample(ae, net, 64, args.sample_steps, generator=torch.Generator().manual_seed(0))
                print(f"U-Net width {width}: DDIM {args.sample_steps} steps + decoder, batch 64: "
                      f"{64 / (time.perf_counter() - start):.2f} images/s", flush=True)


if __name__ == "__main__":
    main()
