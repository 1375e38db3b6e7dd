"""Generate images from a trained StyleGAN2 (its EMA generator).

    python sample.py --pretrained                               # the shipped weights, pretrained/generator.pt
    python sample.py --checkpoint runs/stylegan --num 64 --truncation 0.7 --out samples/
writes samples/000000.png ... (one PNG per image), samples/grid.png, samples/style_mixing.png (rows take the
coarse styles, layers < --mix-cutoff, from one latent; columns the fine styles from another; the top row and the
left column are the sources) and samples/interpolation.png (rows of straight walks in w space).
--truncation PSI moves every w towards the tracked mean w: w' = w_avg + PSI (w - w_avg) (1 = off, 0 = the mean
image). --checkpoint takes a run folder (its latest checkpoint) or a file; --pretrained needs no training.
"""
# Adapted from DCGAN/sample.py: the EMA generator, --truncation, the style-mixing grid and w-space walks.
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import Config, Generator, interpolate_w, sample, style_mixing_grid
from shared import checkpoint, cli
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "generator.pt"  # next to this script, not the cwd


@dataclass
class SampleConfig:
    """Sample from a StyleGAN checkpoint (its EMA generator), or from the shipped pretrained generator."""
    checkpoint: str = "runs/stylegan"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped generator (pretrained/generator.pt) instead of --checkpoint
    num: int = 64  # number of images to write
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the latents and the noise
    truncation: float = 1.0  # psi of the truncation trick around the tracked mean w (1 = off, 0 = the mean image)
    mix_rows: int = 5  # rows of the style-mixing grid (0 = no grid)
    mix_cols: int = 6  # columns of the style-mixing grid
    mix_cutoff: int = 0  # layers < this take the row latent (coarse), the rest the column latent; 0 = num_ws // 2
    interpolations: int = 8  # rows of the w-space interpolation strip (0 = none)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def load_generator(path: str | Path, device: torch.device) -> tuple[Generator, dict]:
    """The EMA generator rebuilt from the config saved in the checkpoint (eval mode), and the checkpoint."""
    state = checkpoint.load(path, model="StyleGAN", map_location=device)
    G = Generator(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(G, state, "G_ema", path)
    return G.eval(), state


def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[Generator, dict]:
    """The shipped generator (fp16 on disk, float32 here; the run's EMA generator, stored as "G"), and the file's
    contents (its "source" says which run made it). `path` defaults to PRETRAINED."""
    path = path or PRETRAINED
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a run (python train.py) and "
                                         f"sample it with --checkpoint, or fetch the file from the project's "
                                         f"repository")
    state = checkpoint.load_pretrained(path, "StyleGAN", map_location=device)
    G = Generator(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(G, state, "G", path)
    return G.eval(), state


def save_images(images: torch.Tensor, out: Path) -> None:
    """images (N, C, H, W) in [-1, 1] -> out/000000.png ... and out/grid.png (a near-square grid)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        save_image((img + 1) / 2, out / f"{i:06d}.png")
    save_image(grid(images, nrow=int(math.ceil(math.sqrt(len(images))))), out / "grid.png")


def main(cfg: SampleConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    G, state = load_pretrained(device) if cfg.pretrained else load_generator(cfg.checkpoint, device)
    if cfg.pretrained:
        print(f"pretrained generator: {state.get('source', PRETRAINED)}")
    if not 0 < (cfg.mix_cutoff or 1) < G.cfg.num_ws:
        raise checkpoint.CheckpointError(f"--mix-cutoff must be in [1, {G.cfg.num_ws - 1}] for this generator "
                                         f"({G.cfg.num_ws} style inputs), got {cfg.mix_cutoff}")
    rng = torch.Generator().manual_seed(cfg.seed)
    psi, out = cfg.truncation, Path(cfg.out)
    save_images(sample(G, cfg.num, rng=rng, psi=psi), out)  # (num, C, H, W) in [-1, 1]
    if cfg.mix_rows:
        z_rows, z_cols = torch.randn(cfg.mix_rows, G.cfg.z_dim, generator=rng), torch.randn(cfg.mix_cols, G.cfg.z_dim,
                                                                                             generator=rng)
        mixed = style_mixing_grid(G, z_rows, z_cols, cfg.mix_cutoff or G.cfg.num_ws // 2, psi=psi)
        save_image(grid(mixed, nrow=cfg.mix_cols + 1), out / "style_mixing.png")
    if cfg.interpolations:
        z = torch.randn(cfg.interpolations, 2, G.cfg.z_dim, generator=rng)
        rows = [interpolate_w(G, z0, z1, steps=10, psi=psi) for z0, z1 in z]
        save_image(grid(torch.cat(rows), nrow=10), out / "interpolation.png")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.interpolations < 0 or cfg.threads < 0 or cfg.mix_rows < 0 or cfg.mix_cols < 1:
        raise ValueError("--num and --mix-cols must be positive; --interpolations, --mix-rows, --threads >= 0")
    if not 0 <= cfg.truncation <= 1 or cfg.mix_cutoff < 0:
        raise ValueError(f"--truncation must be in [0, 1] and --mix-cutoff >= 0, got {cfg.truncation}, "
                         f"{cfg.mix_cutoff}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    cli.check_device(cfg.device)
    cli.check_out_dir(cfg.out, "--out")


def cli_main(argv: list[str] | None = None) -> None:
    """sample.py's command line: a bad flag or an unusable checkpoint is one line on stderr, exit code 2."""
    cfg = cli.parse(SampleConfig, argv, check=check)
    try:
        print(f"wrote {cfg.num} images to {main(cfg)}")
    except checkpoint.CheckpointError as err:
        cli.fail(str(err).splitlines()[0])


if __name__ == "__main__":
    cli_main()
