"""Generate images from a trained BiGAN, and reconstruct held-out images through its encoder.

    python sample.py --pretrained --out samples/                  # the shipped G and E of the default MNIST run
    python sample.py --checkpoint runs/bigan --num 64 --out samples/
writes samples/000000.png ... (one PNG per image), samples/grid.png, samples/interpolation.png (rows of slerp
walks between random latents) and samples/reconstructions.png: pairs of rows, held-out test images x above
their reconstructions G(E(x)) (with --pretrained: the embedded MNIST test images). --checkpoint takes a run
folder (its latest checkpoint) or a file; --pretrained uses pretrained/generator.pt next to this script instead.
"""
# Adapted from DCGAN/sample.py: checkpoint loading and PNG/grid writing; adds E, the reconstructions and --pretrained.
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import Config, Encoder, Generator, interpolate, reconstruct, sample
from shared import checkpoint, cli
from shared.data import DataError, load_dataset, to_float
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "generator.pt"  # not relative to the cwd


@dataclass
class SampleConfig:
    """Sample from a BiGAN checkpoint (or the shipped pretrained weights) and reconstruct held-out images."""
    checkpoint: str = "runs/bigan"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped G and E in pretrained/generator.pt (default MNIST run) instead of --checkpoint
    num: int = 64  # number of images to write
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the latent noise and of the held-out images shown
    interpolations: int = 8  # rows of the latent interpolation strip (0 = none)
    reconstructions: int = 32  # held-out images in reconstructions.png, 8 per row pair (0 = none)
    data_root: str = ""  # where the dataset lives (default: the one the run trained with)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def load_models(path: str, device: torch.device) -> tuple[Generator, Encoder, dict]:
    """G and E rebuilt from the config saved in the checkpoint, with their weights (eval mode), and the checkpoint."""
    state = checkpoint.load(path, model="BiGAN", map_location=device)
    return *rebuild(state, path, device), state


def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[Generator, Encoder, dict]:
    """The shipped G and E (fp16 on disk, float32 here), rebuilt from their model_config (eval mode)."""
    path = Path(path or PRETRAINED)
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a model (python train.py) and "
                                         f"use --checkpoint, or fetch pretrained/generator.pt from the repository")
    state = checkpoint.load_pretrained(path, "BiGAN", map_location=device)
    return *rebuild(state, path, device), state


def rebuild(state: dict, path: str | Path, device: torch.device) -> tuple[Generator, Encoder]:
    mcfg = Config(**state["model_config"])
    G, E = Generator(mcfg).to(device), Encoder(mcfg).to(device)
    checkpoint.load_weights(G, state, "G", path)
    checkpoint.load_weights(E, state, "E", path)
    return G.eval(), E.eval()


def held_out(dataset: str, data_root: str, image_size: int, n: int, seed: int) -> torch.Tensor:
    """n seeded test-split images (n, C, H, W) in [-1, 1] of `dataset` (the one the run trained on)."""
    data = load_dataset(dataset, data_root or None, image_size, "test", seed=0)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return to_float(data.images[idx])


def reconstruction_grid(G: Generator, E: Encoder, x: torch.Tensor, per_row: int = 8) -> torch.Tensor:
    """Rows of x alternating with rows of G(E(x)): (2 n, C, H, W), for a grid with nrow=per_row."""
    x = x[: len(x) // per_row * per_row]
    pairs = torch.stack([x.view(-1, per_row, *x.shape[1:]),
                         reconstruct(G, E, x).view(-1, per_row, *x.shape[1:])], dim=1)  # (rows, 2, per_row, C, H, W)
    return pairs.flatten(0, 2)


def main(cfg: SampleConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    if cfg.pretrained:  # the default run's data: embedded MNIST (or torchvision's files under --data-root)
        G, E, _ = load_pretrained(device)
        dataset, data_root = "mnist", cfg.data_root
    else:
        G, E, state = load_models(cfg.checkpoint, device)
        dataset, data_root = state["config"]["dataset"], cfg.data_root or state["config"]["data_root"]
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
    if cfg.reconstructions:
        x = held_out(dataset, data_root, G.cfg.image_size, cfg.reconstructions, cfg.seed).to(device)
        per_row = min(8, len(x))
        save_image(grid(reconstruction_grid(G, E, x, per_row), nrow=per_row), out / "reconstructions.png")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.interpolations < 0 or cfg.reconstructions < 0 or cfg.threads < 0:
        raise ValueError("--num must be positive; --interpolations, --reconstructions and --threads >= 0")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    cli.check_device(cfg.device)
    cli.check_out_dir(cfg.out, "--out")


def run(argv: list[str] | None = None) -> None:
    """The command line: parse, sample, and a one-line error (exit 2) for an unusable checkpoint or data."""
    cfg = cli.parse(SampleConfig, argv, check=check)
    try:
        print(f"wrote {cfg.num} images to {main(cfg)}")
    except (DataError, checkpoint.CheckpointError) as err:
        cli.fail(str(err).splitlines()[0])


if __name__ == "__main__":
    run()
