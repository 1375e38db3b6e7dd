"""Training speed of the anchor, y0ast/Glow-PyTorch, beside ours, at the same size, on the same machine.

    mkdir -p /work/anchors/glow-src && git --git-dir=/work/.mirror/y0ast+Glow-PyTorch/repo archive HEAD \\
        | tar -x -C /work/anchors/glow-src                          # the anchor's tree (no install needed)
    python experiments/anchor.py --threads 1                         # train.py's Glow default size, 1 thread
    python experiments/anchor.py --depth 8 --width 128 --steps 40   # another size

The anchor (https://github.com/y0ast/Glow-PyTorch) is imported from --anchor-src, unmodified: its model.Glow with
image_shape (32, 32, 1), hidden_channels = our --width, K = our --depth, L = our --levels, its defaults otherwise
(actnorm_scale 1, invconv with LU_decomposed, affine coupling, learn_top, no y_condition). Its training step is
its train.py's `step` without the ignite engine around it: model(x, None) -> nll (bits/dim), nll.mean().backward(),
Adamax(lr 5e-4, weight_decay 5e-5).step(); its act-norms are initialised by one forward pass of a batch first, as
its train.py does. Its input is its own preprocessing (k / 256 - 1/2; it adds the uniform noise itself).
Ours is train.main (the real loop, same data order and batch), once in fp32 and once in bf16 autocast.
Both read the embedded MNIST at 32x32; images/s is timed over --steps steps after --warmup steps.
Nothing of the anchor is copied into this project.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

FOLDER = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(FOLDER))

import train  # noqa: E402
from shared import bench  # noqa: E402
from shared.data import BatchIterator, load_dataset  # noqa: E402


def anchor_images_per_s(src: str, args: argparse.Namespace) -> tuple[float, float]:
    """(images/s, mean bits/dim of the timed steps) of the anchor's training step."""
    # torch 2.14 removed torch.qr, which its 1x1 convolution's init calls: the one shim this driver adds
    torch.qr = lambda a, some=True: torch.linalg.qr(a, mode="reduced" if some else "complete")
    sys.path.insert(0, src)  # for its modules.py and utils.py
    spec = importlib.util.spec_from_file_location("anchor_glow_model", Path(src) / "model.py")
    anchor = importlib.util.module_from_spec(spec)  # its model.py, under a name that is not our model.py's
    spec.loader.exec_module(anchor)
    Glow = anchor.Glow

    torch.manual_seed(0)
    model = Glow(image_shape=(args.image_size, args.image_size, 1), hidden_channels=args.width, K=args.depth,
                 L=args.levels, actnorm_scale=1.0, flow_permutation="invconv", flow_coupling="affine",
                 LU_decomposed=True, y_classes=10, learn_top=True, y_condition=False)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-4, weight_decay=5e-5)
    data = load_dataset("mnist", None, args.image_size, "train")
    batches = BatchIterator(data, args.batch_size, seed=0)
    prep = lambda k: k.float() / 256 - 0.5  # its datasets.preprocess at n_bits = 8
    with torch.no_grad():
        model(prep(next(batches)[0]), None)  # act-norm's data-dependent init
    bpd, start = [], 0.0
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            start = time.perf_counter()
        x = prep(next(batches)[0])
        model.train()
        opt.zero_grad()
        _, nll, _ = model(x, None)
        nll.mean().backward()
        opt.step()
        if i >= args.warmup:
            bpd.append(nll.mean().item())
    seconds = time.perf_counter() - start
    sys.path.remove(src)
    return args.steps * args.batch_size / seconds, sum(bpd) / len(bpd)


def ours_images_per_s(args: argparse.Namespace, precision: str) -> float:
    def config(out: str) -> train.TrainConfig:
        return train.TrainConfig(image_size=args.image_size, batch_size=args.batch_size, levels=args.levels,
                                 depth=args.depth, width=args.width, steps=args.warmup + args.steps, minutes=0,
                                 threads=args.threads, precision=precision, out=out, log_every=args.warmup,
                                 sample_every=10 ** 9, ckpt_every=10 ** 9)
    return bench.train_images_per_s(train.main, config)  # skips the first log record: the warm-up steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anchor-src", default="/work/anchors/glow-src")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=train.TrainConfig.batch_size)
    p.add_argument("--levels", type=int, default=train.TrainConfig.levels)
    p.add_argument("--depth", type=int, default=train.TrainConfig.depth)
    p.add_argument("--width", type=int, default=train.TrainConfig.width)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the medians are reported")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(bench.cpu_line(args.threads), flush=True)
    print(f"Glow L {args.levels}, K {args.depth}, width {args.width}, {args.image_size}x{args.image_size}x1, batch "
          f"{args.batch_size}, {args.steps} timed steps after {args.warmup}", flush=True)
    runs: dict[str, list[float]] = {"ours_fp32": [], "ours_bf16": [], "anchor_fp32": []}
    for r in range(args.rounds):  # interleaved, so a change in the machine's load hits both sides
        for precision in ("fp32", "bf16"):
            runs[f"ours_{precision}"].append(ours_images_per_s(args, precision))
            print(f"  round {r + 1}: ours ({precision}) {runs[f'ours_{precision}'][-1]:8.1f} images/s", flush=True)
        ips, bpd = anchor_images_per_s(args.anchor_src, args)
        runs["anchor_fp32"].append(ips)
        print(f"  round {r + 1}: y0ast/Glow-PyTorch (fp32) {ips:8.1f} images/s (its bits/dim over those steps "
              f"{bpd:.2f})", flush=True)
    results = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}  # medians
    print(f"medians of {args.rounds} rounds: " + ", ".join(f"{k} {v:.1f}" for k, v in results.items()))
    for precision in ("fp32", "bf16"):
        print(f"  ours {precision} / anchor: {results[f'ours_{precision}'] / results['anchor_fp32']:.2f}x")
    out = FOLDER / "runs" / "anchor"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "speed.jsonl", "a") as f:
        f.write(json.dumps({**vars(args), **results, "rounds_detail": runs, "cpu": bench.cpu_line(args.threads)}) + "\n")


if __name__ == "__main__":
    main()
