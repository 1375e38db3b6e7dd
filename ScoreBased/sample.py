"""Generate images from a trained score SDE (its EMA weights) with the PC, Euler-Maruyama or ODE sampler.

    python sample.py --pretrained                                  # the shipped EMA U-Net, pretrained/ema_unet.pt
    python sample.py --checkpoint runs/scorebased --sampler pc --steps 100 --snr 0.16   # predictor-corrector
    python sample.py --checkpoint runs/scorebased --sampler em --steps 200              # Euler-Maruyama
    python sample.py --checkpoint runs/scorebased --sampler ode --rtol 1e-3 --atol 1e-3 # probability-flow ODE
writes samples/000000.png ... (one PNG per image), samples/grid.png, and with the pc sampler samples/trajectory.png
(rows: samples, columns: x along each one's reverse diffusion from t = 1 to eps). Prints the network evaluations
(NFE) per image. --checkpoint takes a run folder (its latest checkpoint) or a file; --pretrained needs no training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import SAMPLERS, Config, pc_sampler, sample, score_fn, sde_of
from unet import UNet
from shared import checkpoint, cli
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "ema_unet.pt"  # next to this script, not the cwd
RECOMMENDED = dict(sampler="pc", steps=50, snr=0.16, rtol=1e-3, atol=1e-3)  # README: FID and s/image per setting


@dataclass
class SampleConfig:
    """Sample from a ScoreBased checkpoint (its EMA U-Net), or from the shipped pretrained one."""
    checkpoint: str = "runs/scorebased"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped EMA U-Net (pretrained/ema_unet.pt) instead of --checkpoint
    num: int = 64  # number of images to write
    sampler: str = RECOMMENDED["sampler"]  # pc (predictor-corrector) | em (Euler-Maruyama) | ode (probability flow)
    steps: int = RECOMMENDED["steps"]  # pc / em: time steps from t = 1 to eps = 1e-3
    snr: float = RECOMMENDED["snr"]  # pc: the Langevin corrector's signal-to-noise ratio r
    corrector_steps: int = 1  # pc: Langevin steps per time step (0 = the reverse-diffusion predictor alone)
    rtol: float = RECOMMENDED["rtol"]  # ode: RK45 relative tolerance (paper: 1e-5)
    atol: float = RECOMMENDED["atol"]  # ode: RK45 absolute tolerance (paper: 1e-5)
    trajectory: int = 8  # pc: rows of the x_t strip (0 = none)
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the noise
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def load_model(path: str | Path, device: torch.device, key: str = "ema") -> tuple[UNet, dict]:
    """The U-Net rebuilt from the config saved in the checkpoint, with its `key` weights (ema or unet), eval mode."""
    state = checkpoint.load(path, model="ScoreBased", map_location=device)
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
    state = checkpoint.load_pretrained(path, "ScoreBased", map_location=device)
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


def draw(net: UNet, cfg: SampleConfig, n: int, gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """n samples with cfg's sampler settings and the NFE per image."""
    return sample(net, n, cfg.sampler, cfg.steps, cfg.snr, cfg.corrector_steps, cfg.rtol, cfg.atol, generator=gen)


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
    images, nfe = draw(net, cfg, cfg.num, rng)  # (num, C, H, W) in [-1, 1]
    save_images(images, out)
    print(f"{cfg.sampler} sampler, {net.cfg.sde.upper()} SDE: {nfe} network evaluations per image")
    if cfg.trajectory and cfg.sampler == "pc":
        sde = sde_of(net.cfg)
        x_T = torch.randn(cfg.trajectory, net.cfg.channels, net.cfg.image_size, net.cfg.image_size,
                          generator=rng) * sde.prior_std()
        _, snapshots = pc_sampler(sde, score_fn(net, sde), x_T.to(device), cfg.steps, cfg.snr, cfg.corrector_steps,
                                  generator=rng, keep=10)
        strip = torch.stack([x_T.to(device)] + snapshots, 1).clamp(-1, 1)  # (rows, snapshots, C, H, W), x_T left
        save_image(grid(strip.flatten(0, 1), nrow=strip.shape[1]), out / "trajectory.png")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.steps <= 0 or cfg.trajectory < 0 or cfg.threads < 0 or cfg.corrector_steps < 0:
        raise ValueError("--num and --steps must be positive; --trajectory, --threads, --corrector-steps >= 0")
    if cfg.sampler not in SAMPLERS or not (cfg.snr > 0 and cfg.rtol > 0 and cfg.atol > 0):
        raise ValueError(f"--sampler must be one of {SAMPLERS}; --snr, --rtol, --atol positive")
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
