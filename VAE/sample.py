"""Generate images from a trained VAE: decoder means of z ~ N(0, I).

    python sample.py --pretrained                              # the shipped weights, pretrained/decoder.pt
    python sample.py --checkpoint runs/vae --num 64 --out samples/
writes samples/000000.png ... (one PNG per image), samples/grid.png and samples/interpolation.png (rows of
straight-line walks between random latents). Every image is the decoder's mean E[x|z] (for the Bernoulli decoder
the pixel probabilities), not a draw from p(x|z). --checkpoint takes a run folder (its latest checkpoint) or a
file; --pretrained needs no training: it loads the default MNIST run that ships with this folder.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import VAE, Config, decode, sample
from shared import checkpoint, cli
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "decoder.pt"  # next to this script, not the cwd
# The encoder ships as a second file: encoder + decoder together are 2.2 MB in fp16, over the 2 MB a file may take.
PRETRAINED_ENCODER = PRETRAINED.with_name("encoder.pt")


@dataclass
class SampleConfig:
    """Sample from a VAE checkpoint, or from the shipped pretrained weights."""
    checkpoint: str = "runs/vae"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped weights (pretrained/decoder.pt) instead of --checkpoint
    num: int = 64  # number of images to write
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the latent noise
    interpolations: int = 8  # rows of the latent interpolation strip (0 = none)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def build(state: dict, path: str | Path, device: torch.device) -> VAE:
    """The VAE rebuilt from the config saved with the weights, in eval mode."""
    model = VAE(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(model, state, "vae", path)
    return model.eval()


def load_model(path: str | Path, device: torch.device | str) -> tuple[VAE, dict]:
    """The VAE of a run folder or checkpoint file, and the checkpoint."""
    state = checkpoint.load(path, model="VAE", map_location=device)
    return build(state, path, torch.device(device)), state


def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[VAE, dict]:
    """The shipped decoder (fp16 on disk, float32 here) and, when pretrained/encoder.pt sits beside it, the encoder
    (state["encoder_loaded"] says which); the decoder file's contents ("source" names the run that made it).
    `path` defaults to PRETRAINED; the encoder is looked for next to it."""
    path = path or PRETRAINED
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a run (python train.py) and "
                                         f"sample it with --checkpoint, or fetch the file from the project's "
                                         f"repository")
    state = checkpoint.load_pretrained(path, "VAE", map_location=device)
    model = VAE(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(model.decoder, state, "decoder", path)
    encoder_path = path.with_name("encoder.pt")
    state["encoder_loaded"] = encoder_path.is_file()
    if state["encoder_loaded"]:
        checkpoint.load_weights(model.encoder, checkpoint.load_pretrained(encoder_path, "VAE", device), "encoder",
                                encoder_path)
    return model.eval(), state


def export_pretrained(run: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """Write out_dir/decoder.pt and out_dir/encoder.pt (fp16, weights_only-safe) from a run's checkpoint."""
    from shared.pretrained import git_commit

    state = checkpoint.load(run, "VAE")
    cfg = state["config"]
    source = (f"VAE run {run}: step {state['step']}, --dataset {cfg.get('dataset')}, --minutes {cfg.get('minutes')}, "
              f"{state.get('world_size', 1)} process(es), commit {git_commit(Path(run))}")
    paths = []
    for part in ("decoder", "encoder"):
        weights = {k[len(part) + 1:]: v for k, v in state["vae"].items() if k.startswith(part + ".")}
        paths.append(checkpoint.save_pretrained(Path(out_dir) / f"{part}.pt", "VAE", state["model_config"],
                                                {part: weights}, source))
    return paths[0], paths[1]


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
    model, state = load_pretrained(device) if cfg.pretrained else load_model(cfg.checkpoint, device)
    if cfg.pretrained:
        print(f"pretrained VAE: {state.get('source', PRETRAINED)}")
    rng = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out)
    save_images(sample(model, cfg.num, rng=rng), out)  # (num, C, H, W) in [-1, 1]
    if cfg.interpolations:
        z = torch.randn(cfg.interpolations, 2, model.cfg.z_dim, generator=rng)
        t = torch.linspace(0, 1, 10)[None, :, None]  # (1, 10, 1)
        path = (1 - t) * z[:, :1] + t * z[:, 1:]  # (rows, 10, z_dim)
        save_image(grid(decode(model, path.flatten(0, 1).to(device)), nrow=10), out / "interpolation.png")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.interpolations < 0 or cfg.threads < 0:
        raise ValueError("--num must be positive; --interpolations and --threads >= 0")
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
    if sys.argv[1:2] == ["--export"]:  # python sample.py --export RUN OUT_DIR (the shipped pretrained/ files)
        for written in export_pretrained(sys.argv[2], sys.argv[3]):
            print(f"wrote {written} ({written.stat().st_size / 1e6:.2f} MB)")
    else:
        cli_main()
