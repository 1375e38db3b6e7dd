"""Run rosinality/stylegan2-pytorch (the anchor of issue 23) on this machine at our architecture; time its loop.

    git --git-dir=/work/.mirror/rosinality+stylegan2-pytorch/repo archive HEAD | tar -x -C /work/anchors/stylegan2-src
    python experiments/anchor.py --src /work/anchors/stylegan2-src --steps 36 --warmup 4 --threads 1
    python experiments/anchor.py --src ... --pl-every 4            # with its path-length step every 4 iterations

Builds the anchor's own Generator, Discriminator and g_ema (its model.py) and runs its own training function
(train.train of its train.py: D step, lazy R1 step every d_reg_every, G step, lazy path-length step every
g_reg_every, EMA accumulate) with its own optimizer settings (Adam lr * k/(k+1), betas (0, 0.99^(k/(k+1)))),
on our data, and reports its training images/s beside the CPU line. Nothing of the anchor is edited or copied;
this process changes only the following, from outside, and says so:
  * its op/ package compiles CUDA extensions at import (torch.utils.cpp_extension.load); there is no CUDA here, so
    `load` is replaced by a stub returning None before the import. On CPU its ops take their own plain-PyTorch
    branches (fused_leaky_relu and upfirdn2d check input.device.type == "cpu"; conv2d_gradfix falls back to F.conv2d);
  * its dataset.py imports lmdb (its LMDB reader, which we do not use): a stub module stands in for it;
  * torchvision >= 0.17 renamed save_image's `range` to `value_range`: its sample-grid call is translated;
  * its channel table is 512 at every resolution up to 32x32; to run it at OUR widths, its layer classes are
    subclassed in this process so that the channel counts 512 -> W, 513 -> W + 1 (the minibatch-stddev input)
    and 8192 -> 16 W (D's last linear layer) are passed to its constructors. Layers, order and maths are its own.
Same size as our default: 32x32, widths W = 64, z = w = 128-d, mapping 8 layers at lr x 0.01, batch 32, R1 every 16,
style mixing 0.9, path length off (g_reg_every beyond the run) unless --pl-every. The data is the shapes dataset
(3 channels: the anchor's tRGB is RGB) -- time ours with `python benchmark.py --dataset shapes` beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

FOLDER = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(FOLDER.parent))  # the project root, for shared.*


def import_anchor(src: Path, width: int):
    """The anchor's model and train modules, imported from `src` with the stubs named in the docstring."""
    import torch.utils.cpp_extension as cpp

    cpp.load = lambda *args, **kwargs: None  # no CUDA build; its CPU branches never call the extension
    sys.modules.setdefault("lmdb", types.ModuleType("lmdb"))
    sys.path.insert(0, str(src))
    import model as anchor_model  # noqa: E402  (the anchor's model.py)
    import train as anchor_train  # noqa: E402  (the anchor's train.py)

    channel_map = {512: width, 513: width + 1, 8192: 16 * width}

    def narrow(cls):
        class Narrow(cls):
            def __init__(self, *args, **kwargs):
                fix = lambda v: channel_map.get(v, v) if type(v) is int else v
                super().__init__(*map(fix, args), **{k: fix(v) for k, v in kwargs.items()})
        Narrow.__name__ = Narrow.__qualname__ = cls.__name__
        return Narrow

    for name in ("ConstantInput", "StyledConv", "ToRGB", "ConvLayer", "ResBlock", "EqualLinear"):
        setattr(anchor_model, name, narrow(getattr(anchor_model, name)))

    from torchvision import utils as tv_utils

    def save_image(tensor, fp, range=None, **kwargs):  # noqa: A002  (its keyword)
        return tv_utils.save_image(tensor, fp, value_range=range, **kwargs)
    anchor_train.utils = types.SimpleNamespace(save_image=save_image)
    return anchor_model, anchor_train


class TimedBatches:
    """Our images as the anchor's loader: an endless iterable of (B, 3, H, W) in [-1, 1]; records when each batch
    is taken (one per training iteration), so images/s excludes start-up."""

    def __init__(self, images: torch.Tensor, batch: int, seed: int = 0) -> None:
        self.images, self.batch, self.stamps = images, batch, []
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self):
        while True:
            order = torch.randperm(len(self.images), generator=self.gen)
            for i in range(0, len(order) - self.batch + 1, self.batch):
                self.stamps.append(time.perf_counter())
                yield self.images[order[i:i + self.batch]].float() / 127.5 - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default="/work/anchors/stylegan2-src", help="the anchor's exported tree")
    p.add_argument("--work", default="/work/anchors/stylegan2-run", help="its cwd (it writes sample/, checkpoint/)")
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--latent", type=int, default=128)
    p.add_argument("--n-mlp", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--r1", type=float, default=0.01)
    p.add_argument("--r1-every", type=int, default=16)
    p.add_argument("--pl-every", type=int, default=0, help="its path-length step every N iterations (0 = off)")
    p.add_argument("--steps", type=int, default=36)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="", help="json file for the result")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from shared.bench import cpu_line
    from shared.data import load_dataset

    print(cpu_line(args.threads), flush=True)
    work = Path(args.work)
    for sub in ("sample", "checkpoint"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    import os
    os.chdir(work)
    anchor_model, anchor_train = import_anchor(Path(args.src), args.width)
    data = load_dataset(args.dataset, None, 32, "train", seed=0).images  # (N, C, 32, 32) uint8
    data = data.expand(-1, 3, -1, -1) if data.shape[1] == 1 else data

    torch.manual_seed(0)
    G = anchor_model.Generator(32, args.latent, args.n_mlp, channel_multiplier=2)
    D = anchor_model.Discriminator(32, channel_multiplier=2)
    G_ema = anchor_model.Generator(32, args.latent, args.n_mlp, channel_multiplier=2).eval()
    anchor_train.accumulate(G_ema, G, 0)
    pl_every = args.pl_every or 10 ** 9  # its step 0 still runs one PL step (0 % k == 0): inside the warm-up
    g_ratio, d_ratio = pl_every / (pl_every + 1), args.r1_every / (args.r1_every + 1)  # as its train.py main
    g_optim = torch.optim.Adam(G.parameters(), lr=0.002 * g_ratio, betas=(0 ** g_ratio, 0.99 ** g_ratio))
    d_optim = torch.optim.Adam(D.parameters(), lr=0.002 * d_ratio, betas=(0 ** d_ratio, 0.99 ** d_ratio))
    ns = argparse.Namespace(iter=args.steps, start_iter=0, batch=args.batch, n_sample=64, latent=args.latent,
                            mixing=0.9, r1=args.r1, d_reg_every=args.r1_every, g_reg_every=pl_every,
                            path_regularize=2.0, path_batch_shrink=2, augment=False, augment_p=0, ada_target=0.6,
                            ada_length=500 * 1000, ada_every=256, distributed=False, wandb=False)
    params = (sum(q.numel() for q in G.parameters()), sum(q.numel() for q in D.parameters()))
    print(f"anchor G {params[0]:,} / D {params[1]:,} parameters, width {args.width}, {args.dataset}", flush=True)
    loader = TimedBatches(data, args.batch)
    anchor_train.train(ns, loader, G, D, g_optim, d_optim, G_ema, torch.device("cpu"))
    end = time.perf_counter()
    stamps = loader.stamps[args.warmup:args.steps] + [end]  # iterations warmup..steps-1, each to the next batch
    images_per_s = args.batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])
    result = {"anchor": "rosinality/stylegan2-pytorch", "images_per_s": images_per_s, "steps": args.steps,
              "warmup": args.warmup, "width": args.width, "latent": args.latent, "n_mlp": args.n_mlp,
              "batch": args.batch, "r1_every": args.r1_every, "pl_every": args.pl_every, "params": params,
              "cpu": cpu_line(args.threads), "dataset": args.dataset}
    print(json.dumps(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
