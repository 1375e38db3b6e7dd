"""Generate images from a trained WGAN (either variant: sampling only needs G).

    python sample.py --pretrained --out samples              # the shipped weights (pretrained/generator.pt)
    python sample.py --checkpoint runs/wgan --num 64 --out samples
writes samples/000000.png ... (one PNG per image), samples/grid.png and samples/interpolation.png
(rows of slerp walks between random latents). --checkpoint takes a run folder (its latest checkpoint) or a file.
"""
# Adapted from DCGAN/sample.py: the same flags and PNG / grid writing, plus --pretrained (the shipped weights).
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import Config, Generator, interpolate, sample
from shared import checkpoint, cli
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "generator.pt"  # next to this script, not the cwd


@dataclass
class SampleConfig:
    """Sample from a WGAN checkpoint, or from the shipped weights with --pretrained."""
    checkpoint: str = "runs/wgan"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # sample the shipped generator (pretrained/generator.pt) instead of --checkpoint
    num: int = 64  # number of images to write
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the latent noise
    interpolations: int = 8  # rows of the latent interpolation strip (0 = none)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def load_generator(path: str, device: torch.device) -> tuple[Generator, dict]:
    """G rebuilt from the config saved in the checkpoint, with its weights (eval mode), and the checkpoint."""
    state = checkpoint.load(path, model="WGAN", map_location=device)
    G = Generator(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(G, state, "G", path)
    return G.eval(), state


def load_pretrained(device: torch.device) -> Generator:
    """The shipped generator (fp16 on disk, float32 here), rebuilt from the config stored with it."""
    if not PRETRAINED.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {PRETRAINED}: train a model (python train.py) "
                                         f"and sample it with --checkpoint, or fetch the file from the repository")
    state = checkpoint.load_pretrained(PRETRAINED, model="WGAN", map_location=device)
    G = Generator(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(G, state, "G", PRETRAINED)
    return G.eval()


def main(cfg: SampleConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    G = load_pretrained(device) if cfg.pretrained else load_generator(cfg.checkpoint, device)[0]
    rng = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    images = sample(G, cfg.num, rng=rng)  # (num, C, H, W) in [-1, 1]
    for i, img in enumerate(images):
        save_image((img + 1) / 2, out / f"{i:06d}.png")
    save_image(grid(images, nrow=int(math.ceil(math.sqrt(cfg.num)))), out / "grid.png")
    if cfg.interpolations:
        z = torch.randn(cfg.interpolations, 2, G.cfg.z_dim, generator=rng)
        rows = [interpolate(G, z0, z1, steps=10) for z0, z1 in z]
        save_image(grid(torch.cat(rows), nrow=10), out / "interpolation.png")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.interpolations < 0 or cfg.threads < 0:
        raise ValueError("--num must be positive; --interpolations and --threads >= 0")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    cli.check_device(cfg.device)
    cli.check_out_dir(cfg.out, "--out")


def cli_main(argv: list[str] | None = None) -> None:
    """sample.py's command line: errors a user can act on are one line, exit code 2."""
    cfg = cli.parse(SampleConfig, argv, check=check)
    try:
        print(f"wrote {cfg.num} images to {main(cfg)}")
    except checkpoint.CheckpointError as err:
        cli.fail(str(err).splitlines()[0])


if __name__ == "__main__":
    cli_main()
