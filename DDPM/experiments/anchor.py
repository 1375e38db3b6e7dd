"""Run lucidrains/denoising-diffusion-pytorch (the anchor of issue 20) on this machine, score it with our harness.

    python experiments/anchor.py export                      # the embedded MNIST as a folder of 32x32 PNGs
    ANCHOR=/work/anchors/ddpm-venv/bin/python                # a venv with the anchor installed (README)
    $ANCHOR experiments/anchor.py run --minutes 10            # its Unet + GaussianDiffusion + Trainer, 1 thread
    $ANCHOR experiments/anchor.py score --num 500             # its EMA model's DDIM samples through our harness

`export` writes the 5,000 training digits of the embedded MNIST, at 32x32 exactly as our train.py sees them
(shared.data.load_dataset), as runs/anchor/lucidrains/mnist32/00000.png ...: the anchor's Trainer reads a folder.

`run` builds the anchor's own classes from its installed package, unmodified, with its README's Trainer
configuration (ANCHOR_CONFIG below; what is scaled for the CPU is said there), and adds from outside only:
  * a wall-clock stop: its EMA's update() (called once after every optimizer step) is wrapped so that, once
    --minutes have passed, train_num_steps is set to the current step and its own loop ends;
  * a final `trainer.save("final")` (its own save method) and a json of the steps, seconds and images/s.
No file of the anchor is edited or copied into this project.

`score` loads that checkpoint's EMA model into the anchor's classes and hands its `sample()` (its default
sampler at the configured sampling_timesteps: DDIM, eta 0) to shared.evaluation.evaluate, the harness our
evaluate.py uses: the same reference set, classifier features and timing of sample images/s. The record is
appended to runs/anchor/lucidrains/eval.jsonl.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FOLDER = HERE.parent
WORK = FOLDER / "runs" / "anchor" / "lucidrains"
IMAGES = WORK / "mnist32"

# The anchor's README configuration (Unet dim 64, mults 1,2,4,8; GaussianDiffusion T 1000, sampling_timesteps
# 250; Trainer batch 32, lr 8e-5, gradient_accumulate_every 2, ema_decay 0.995, amp, calculate_fid), scaled for
# a CPU where it has to be:
#   * Unet dim 32, mults 1,2,4 (2.6M parameters, the "default small U-Net" issue 20 names) instead of 35.7M;
#   * sampling_timesteps 100 (the DDIM setting issue 20's reference figure used) instead of 250;
#   * amp off (fp16 autocast is a GPU feature), calculate_fid off (it downloads Inception weights; we score
#     with our harness instead), no intermediate sample grids (save_and_sample_every beyond the budget);
#   * augment_horizontal_flip off: mirrored digits are not MNIST digits (the Trainer's default is on).
# Everything else is the package's default (objective pred_v, sigmoid schedule, its EMA warm-up).
ANCHOR_CONFIG = {
    "unet": {"dim": 32, "dim_mults": (1, 2, 4), "channels": 1, "flash_attn": True},
    "diffusion": {"image_size": 32, "timesteps": 1000, "sampling_timesteps": 100},
    "trainer": {"train_batch_size": 32, "train_lr": 8e-5, "train_num_steps": 700000, "gradient_accumulate_every": 2,
                "ema_decay": 0.995, "amp": False, "calculate_fid": False, "save_and_sample_every": 10 ** 9,
                "augment_horizontal_flip": False},
}


def export(out: Path = IMAGES, dataset: str = "mnist", image_size: int = 32, limit: int | None = None) -> int:
    """The training split (its first `limit` images) as PNGs, grey for 1 channel: the pixels our train.py trains
    on. Returns the count."""
    from PIL import Image

    from shared.data import load_dataset

    data = load_dataset(dataset, None, image_size, "train", seed=0)
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(data.images[:limit]):  # (C, H, W) uint8
        array = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
        Image.fromarray(array).save(out / f"{i:05d}.png")
    return len(data.images[:limit])


def build(config: dict = ANCHOR_CONFIG):
    """The anchor's Unet and GaussianDiffusion, from its installed package."""
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    return GaussianDiffusion(Unet(**config["unet"]), **config["diffusion"])


def stop_after(trainer, seconds: float) -> None:
    """Wrap trainer.ema.update (called after each optimizer step) to end its loop once `seconds` have passed."""
    deadline, update = time.time() + seconds, trainer.ema.update

    def update_then_check() -> None:
        update()
        if time.time() > deadline:
            trainer.train_num_steps = trainer.step  # its `while self.step < self.train_num_steps` ends

    trainer.ema.update = update_then_check


def run(minutes: float, threads: int = 1) -> dict:
    import torch
    from denoising_diffusion_pytorch import Trainer

    torch.set_num_threads(threads)
    if not IMAGES.is_dir():
        export()
    torch.manual_seed(0)
    diffusion = build()
    trainer = Trainer(diffusion, str(IMAGES), results_folder=str(WORK / "results"), **ANCHOR_CONFIG["trainer"])
    stop_after(trainer, minutes * 60)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save("final")
    cfg = ANCHOR_CONFIG["trainer"]
    images = trainer.step * cfg["train_batch_size"] * cfg["gradient_accumulate_every"]
    record = {"steps": trainer.step, "seconds": seconds, "images": images, "train_images_per_s": images / seconds,
              "params": sum(p.numel() for p in diffusion.model.parameters()), "threads": threads,
              "config": {k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                         for k, v in ANCHOR_CONFIG.items()},
              "source": source_line()}
    (WORK / "train.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    return record


def source_line() -> str:
    from importlib.metadata import version

    return f"denoising-diffusion-pytorch {version('denoising-diffusion-pytorch')}"


def load_ema(path: Path | None = None):
    """The EMA GaussianDiffusion of the final checkpoint, eval mode."""
    import torch
    from ema_pytorch import EMA

    data = torch.load(path or WORK / "results" / "model-final.pt", map_location="cpu", weights_only=True)
    ema = EMA(build(), beta=ANCHOR_CONFIG["trainer"]["ema_decay"], update_every=10)
    ema.load_state_dict(data["ema"])
    return ema.ema_model.eval()


def anchor_sampler(diffusion, batch: int = 250):
    """n, generator -> n images in [-1, 1] from the anchor's own sample() (its global RNG, seeded here)."""
    import torch

    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))
        with torch.inference_mode():
            out = torch.cat([diffusion.sample(batch_size=min(batch, n - i)) for i in range(0, n, batch)])
        return out.float() * 2 - 1  # its sample() returns [0, 1] (auto_normalize)
    return draw


def score(num: int, seed: int = 0, threads: int = 1) -> dict:
    import torch

    from shared import evaluation

    torch.set_num_threads(threads)
    diffusion = load_ema()
    train = json.loads((WORK / "train.json").read_text()) if (WORK / "train.json").is_file() else {}
    extra = lambda record, ref, held: {"anchor_steps": train.get("steps"), "sampler": "its DDIM",
                                       "sample_steps": ANCHOR_CONFIG["diffusion"]["sampling_timesteps"],
                                       "source": train.get("source", source_line())}
    caps = evaluation.Capabilities(sample=anchor_sampler(diffusion))
    return evaluation.evaluate("lucidrains/denoising-diffusion-pytorch", "diffusion", caps, dataset="mnist",
                               data_root=None, image_size=32, num=num, seed=seed, run_dir=WORK,
                               params=sum(p.numel() for p in diffusion.model.parameters()),
                               train_images_per_s=train.get("train_images_per_s"), extra=extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("export")
    r = sub.add_parser("run")
    r.add_argument("--minutes", type=float, default=10.0)
    r.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("score")
    s.add_argument("--num", type=int, default=500, help="samples and real images (as evaluate.py --num)")
    s.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.command == "export":
        print(f"wrote {export()} PNGs to {IMAGES}")
    elif args.command == "run":
        run(args.minutes, args.threads)
    else:
        score(args.num, threads=args.threads)


if __name__ == "__main__":
    main()
