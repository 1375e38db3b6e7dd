"""Generate images from a trained DDPM (its EMA weights) with DDIM or the ancestral sampler.

    python sample.py --pretrained                              # the shipped EMA U-Net, pretrained/ema_unet.pt
    python sample.py --checkpoint runs/ddpm --num 64 --steps 20 --out samples/   # DDIM, 20 steps, eta 0
    python sample.py --checkpoint runs/ddpm --steps 50 --eta 1                   # stochastic DDIM
    python sample.py --checkpoint runs/ddpm --steps 0                            # ancestral DDPM, all T steps
writes samples/000000.png ... (one PNG per image), samples/grid.png and samples/trajectory.png (rows: samples,
columns: x_t along each one's trajectory from x_T to x_0). --checkpoint takes a run folder (its latest
checkpoint) or a file; --pretrained needs no training: it loads the EMA U-Net of the default MNIST run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import Config, UNet, sample
from shared import checkpoint, cli, dist as distributed
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "ema_unet.pt"  # next to this script, not the cwd
RECOMMENDED_STEPS = 20  # DDIM steps the README recommends (FID against steps: README)


@dataclass
class SampleConfig:
    """Sample from a DDPM checkpoint (its EMA U-Net), or from the shipped pretrained one."""
    checkpoint: str = "runs/ddpm"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped EMA U-Net (pretrained/ema_unet.pt) instead of --checkpoint
    num: int = 64  # number of images to write
    steps: int = RECOMMENDED_STEPS  # DDIM steps (0 = the ancestral sampler over all T steps)
    eta: float = 0.0  # DDIM noise: 0 deterministic, 1 = the ancestral sampler's variance
    trajectory: int = 8  # rows of the x_t strip (0 = none)
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the noise
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)
    precision: str = "auto"  # fp32 | bf16 | auto: bf16 autocast of the network where a measured probe says it is faster


def load_model(path: str | Path, device: torch.device, key: str = "ema") -> tuple[UNet, dict]:
    """The U-Net rebuilt from the config saved in the checkpoint, with its `key` weights (ema or unet), eval mode."""
    state = checkpoint.load(path, model="DDPM", map_location=device)
    net = UNet(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(net, state, key, path)
    return net.eval(), state


def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[UNet, dict]:
    """The shipped EMA U-Net (fp16 on disk, float32 here) and the file's contents ("source" names the run)."""
    path = path or PRETRAINED
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a run (python train.py) and "
                                         f"sample it with --checkpoint, or fetch the file from the project's "
                                         f"repository")
    state = checkpoint.load_pretrained(path, "DDPM", map_location=device)
    net = UNet(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(net, state, "unet", path)
    return net.eval(), state


# Copied from DCGAN/sample.py: save_images
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
    net, state = load_pretrained(device) if cfg.pretrained else load_model(cfg.checkpoint, device)
    if cfg.pretrained:
        print(f"pretrained EMA U-Net: {state.get('source', PRETRAINED)}")
    rng = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    with distributed.autocast(device, distributed.resolve_precision(cfg.precision, device)):
        images = sample(net, cfg.num, cfg.steps, cfg.eta, generator=rng)[0]  # (num, C, H, W) in [-1, 1]
        _, snapshots = sample(net, cfg.trajectory, cfg.steps, cfg.eta, generator=rng, keep=10) if cfg.trajectory \
            else (None, [])
    save_images(images, out)
    if cfg.trajectory:
        strip = torch.stack(snapshots, 1)  # (rows, snapshots, C, H, W): x_T side on the left
        save_image(grid(strip.flatten(0, 1), nrow=len(snapshots)), out / "trajectory.png")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.steps < 0 or cfg.trajectory < 0 or cfg.threads < 0 or not 0 <= cfg.eta <= 1:
        raise ValueError("--num must be positive; --steps, --trajectory, --threads >= 0; --eta in [0, 1]")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision must be auto, fp32 or bf16, got {cfg.precision!r}")
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
