"""Generate images from a trained latent diffusion model (EMA U-Net + decoder), and reconstruct test images.

    python sample.py --pretrained                                  # the shipped networks, pretrained/ldm.pt
    python sample.py --checkpoint runs/ldm --num 64 --steps 20 --out samples/    # DDIM, 20 steps, eta 0
    python sample.py --checkpoint runs/ldm --steps 0                             # ancestral, all T steps
    python sample.py --checkpoint runs/cond --label 3 --guidance 3               # class 3, guided (--class-cond run)
writes samples/000000.png ... (one PNG per image), samples/grid.png, samples/trajectory.png (rows: samples,
columns: the decoded latent D(z_t / s) along each trajectory from z_T to z_0) and samples/reconstructions.png
(rows of test images, each followed by the row of their autoencoder reconstructions). --checkpoint takes the
--out folder of train.py (its diffusion/ run, or its autoencoder/ run when there is no diffusion yet: then only
the reconstructions are written), one stage's run folder, or a checkpoint file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import Config, decode, reconstruct, sample, sample_latents
from networks import Autoencoder, UNet
from shared import checkpoint, cli
from shared.data import load_dataset, to_float
from shared.run import grid

MODEL = "LatentDiffusion"
PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "ldm.pt"  # next to this script, not the cwd
RECOMMENDED_STEPS = 20  # DDIM steps the README recommends (FID against steps: README)


@dataclass
class SampleConfig:
    """Sample from a latent diffusion checkpoint (EMA U-Net, decoder), or from the shipped pretrained one."""
    checkpoint: str = "runs/ldm"  # train.py's --out folder, one stage's run folder, or a checkpoint file
    pretrained: bool = False  # use the shipped networks (pretrained/ldm.pt) instead of --checkpoint
    num: int = 64  # number of images to write
    steps: int = RECOMMENDED_STEPS  # DDIM steps (0 = the ancestral sampler over all T steps)
    eta: float = 0.0  # DDIM noise: 0 deterministic, 1 = the ancestral sampler's variance
    label: int = -1  # class-conditional model: the class to draw (-1 = classes in turn)
    guidance: float = 3.0  # class-conditional model: guidance scale s_g (1 = none, 0 = unconditional)
    trajectory: int = 8  # rows of the decoded z_t strip (0 = none)
    reconstructions: int = 32  # test images to reconstruct into reconstructions.png (0 = none)
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the noise
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def find_run(path: str | Path) -> Path:
    """The checkpoint behind `path`: train.py's --out folder means its diffusion/ run (else its autoencoder/)."""
    # Adapted from VQ-VAE/sample.py (find_run): the stage names
    p = Path(path)
    for stage in ("diffusion", "autoencoder"):
        if p.is_dir() and checkpoint.latest(p / stage) is not None:
            return p / stage
    return p


def build(state: dict, path: str | Path, key: str = "ema") -> tuple[Autoencoder, UNet | None]:
    """The autoencoder (and the U-Net's `key` weights, if the checkpoint holds them) rebuilt from the saved
    config, eval mode."""
    if not isinstance(state.get("model_config"), dict):
        raise checkpoint.CheckpointError(f"{path} has no model config")
    cfg = Config(**state["model_config"])
    ae = Autoencoder(cfg)
    checkpoint.load_weights(ae, state, "autoencoder", path)
    net = None
    if state.get(key) is not None:
        net = UNet(cfg)
        checkpoint.load_weights(net, state, key, path)
    return ae.eval(), None if net is None else net.eval()


def load_model(path: str | Path, device: torch.device) -> tuple[Autoencoder, UNet | None, dict]:
    """(autoencoder, EMA U-Net or None, checkpoint) of a run folder or checkpoint file."""
    run = find_run(path)
    state = checkpoint.load(run, model=MODEL, map_location=device)
    ae, net = build(state, run)
    return ae.to(device), None if net is None else net.to(device), state


def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[Autoencoder, UNet | None, dict]:
    """The shipped networks (fp16 on disk, float32 here) and the file's contents ("source" names the run)."""
    path = path or PRETRAINED
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a run (python train.py) and "
                                         f"sample it with --checkpoint, or fetch the file from the project's "
                                         f"repository")
    state = checkpoint.load_pretrained(path, MODEL, map_location=device)
    ae, net = build(state, path, key="unet")
    return ae.to(device), None if net is None else net.to(device), state


def labels_for(net: UNet, n: int, label: int) -> torch.Tensor | None:
    """Labels (n,) for a class-conditional U-Net (label -1: 0, 1, ..., K-1, 0, ...), None for an unconditional one."""
    if not net.cfg.num_classes:
        return None
    return torch.full((n,), label) if label >= 0 else torch.arange(n) % net.cfg.num_classes


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
    ae, net, state = load_pretrained(device) if cfg.pretrained else load_model(cfg.checkpoint, device)
    if cfg.pretrained:
        print(f"pretrained autoencoder and U-Net: {state.get('source', PRETRAINED)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if net is None:
        print(f"{cfg.checkpoint} has no diffusion model yet: reconstructions only (python train.py --stage diffusion)")
    else:
        if cfg.label >= max(net.cfg.num_classes, 1):
            raise checkpoint.CheckpointError(f"--label {cfg.label}: the model has {net.cfg.num_classes} classes")
        rng = torch.Generator().manual_seed(cfg.seed)
        y = labels_for(net, cfg.num, cfg.label)
        save_images(sample(ae, net, cfg.num, cfg.steps, cfg.eta, rng, y, cfg.guidance), out)  # (num, C, H, W)
        if cfg.trajectory:
            _, snapshots = sample_latents(net, cfg.trajectory, cfg.steps, cfg.eta, rng,
                                          labels_for(net, cfg.trajectory, cfg.label), cfg.guidance, keep=10)
            strip = torch.stack([decode(ae, z / net.scale_factor) for z in snapshots], 1)  # (rows, snaps, C, H, W)
            save_image(grid(strip.flatten(0, 1), nrow=len(snapshots)), out / "trajectory.png")
    if cfg.reconstructions:
        run_cfg = state.get("config", {})  # a pretrained file has none: the default dataset (embedded MNIST)
        test = load_dataset(run_cfg.get("dataset", "mnist"), run_cfg.get("data_root") or None, ae.cfg.image_size,
                            "test")
        n = min(cfg.reconstructions, len(test)) // 8 * 8
        if n:
            x = to_float(test.images[torch.arange(n) * (len(test) // n)]).to(device)  # spread over the set
            rows = torch.stack([x.view(-1, 8, *x.shape[1:]), reconstruct(ae, x).view(-1, 8, *x.shape[1:])], 1)
            save_image(grid(rows.flatten(0, 2), nrow=8), out / "reconstructions.png")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.steps < 0 or cfg.trajectory < 0 or cfg.threads < 0 or not 0 <= cfg.eta <= 1:
        raise ValueError("--num must be positive; --steps, --trajectory, --threads >= 0; --eta in [0, 1]")
    if cfg.reconstructions < 0 or cfg.reconstructions % 8 or cfg.guidance < 0 or cfg.label < -1:
        raise ValueError("--reconstructions must be a multiple of 8 (rows of 8), --guidance >= 0, --label >= -1")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    cli.check_device(cfg.device)
    cli.check_out_dir(cfg.out, "--out")


def cli_main(argv: list[str] | None = None) -> None:
    """sample.py's command line: a bad flag or an unusable checkpoint is one line on stderr, exit code 2."""
    cfg = cli.parse(SampleConfig, argv, check=check)
    try:
        print(f"wrote images to {main(cfg)}")
    except checkpoint.CheckpointError as err:
        cli.fail(str(err).splitlines()[0])


if __name__ == "__main__":
    cli_main()
