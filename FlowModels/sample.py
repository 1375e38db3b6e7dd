"""Generate images from a trained RealNVP / Glow, walk its latent space, and check that it inverts.

    python sample.py --pretrained                                   # the shipped weights, pretrained/flow.pt
    python sample.py --checkpoint runs/flow --num 64 --temperature 0.7 --out samples/
writes samples/000000.png ... (one PNG per image) and samples/grid.png at --temperature (Glow Sec. 6: every z
drawn with its std times T; 1 = the model's own distribution, lower = smoother, more typical images);
samples/temperatures.png (rows at T = 0, 0.25, 0.5, 0.7, 0.85, 1, same noise); samples/interpolation.png (rows of
straight lines in z between the latents of two held-out test images); samples/reconstruction.png (held-out
images over f^-1(f(x))), and prints the largest reconstruction error: an invertible flow gives back x to float
rounding. --checkpoint takes a run folder (its latest checkpoint) or a file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import Config, Flow, interpolate, reconstruct, sample
from shared import checkpoint, cli
from shared.data import load_dataset, to_float
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "flow.pt"  # next to this script, not the cwd
TEMPERATURES = (0.0, 0.25, 0.5, 0.7, 0.85, 1.0)


@dataclass
class SampleConfig:
    """Sample from a RealNVP / Glow checkpoint, or from the shipped pretrained flow."""
    checkpoint: str = "runs/flow"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped flow (pretrained/flow.pt) instead of --checkpoint
    num: int = 64  # number of images to write
    temperature: float = 0.7  # sampling temperature T (1 = the model's distribution)
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the latent noise
    interpolations: int = 8  # rows of the latent interpolation strip, between held-out test images (0 = none)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def build(state: dict, path: str | Path, device: torch.device) -> Flow:
    flow = Flow(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(flow, state, "flow", path)
    return flow.eval()


def load_model(path: str | Path, device: torch.device) -> tuple[Flow, dict]:
    """The flow rebuilt from the config saved in the checkpoint, with its weights, and the checkpoint."""
    state = checkpoint.load(path, model="FlowModels", map_location=device)
    return build(state, path, device), state


def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[Flow, dict]:
    """The shipped flow (fp16 on disk, float32 here) and the file's contents ("source" names the run)."""
    path = path or PRETRAINED
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a run (python train.py) and "
                                         f"sample it with --checkpoint, or fetch the file from the project's "
                                         f"repository")
    state = checkpoint.load_pretrained(path, "FlowModels", map_location=device)
    return build(state, path, device), state


def held_out(flow: Flow, n: int, dataset: str = "mnist", data_root: str | None = None) -> torch.Tensor:
    """The first n test images of the dataset the flow was trained on, in [-1, 1] (channels as the flow's)."""
    from shared.evaluation import as_channels

    test = load_dataset(dataset, data_root, flow.cfg.image_size, "test", seed=0)
    return to_float(as_channels(test.images[:n], flow.cfg.channels))


def write_figures(flow: Flow, out: Path, seed: int, interpolations: int, images: torch.Tensor) -> float:
    """temperatures.png, interpolation.png and reconstruction.png; returns max |f^-1(f(x)) - x| over `images`."""
    rows = [sample(flow, 10, t, generator=torch.Generator().manual_seed(seed)) for t in TEMPERATURES]
    save_image(grid(torch.cat(rows), nrow=10), out / "temperatures.png")
    if interpolations and len(images) >= 2:
        pairs = images[: 2 * interpolations].split(2)
        strips = [interpolate(flow, a, b, steps=10) for a, b in (p for p in pairs if len(p) == 2)]
        save_image(grid(torch.cat(strips), nrow=10), out / "interpolation.png")
    x = images[:16]
    x_hat = reconstruct(flow, x)
    save_image(grid(torch.cat([x, x_hat.clamp(-1, 1)]), nrow=len(x)), out / "reconstruction.png")
    return (x_hat - x).abs().max().item()


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
    flow, state = load_pretrained(device) if cfg.pretrained else load_model(cfg.checkpoint, device)
    if cfg.pretrained:
        print(f"pretrained flow: {state.get('source', PRETRAINED)}")
    train_cfg = state.get("config", {})
    dataset = train_cfg.get("dataset", "mnist")
    out = Path(cfg.out)
    save_images(sample(flow, cfg.num, cfg.temperature, generator=torch.Generator().manual_seed(cfg.seed)), out)
    images = held_out(flow, max(16, 2 * cfg.interpolations), dataset, train_cfg.get("data_root") or None)
    err = write_figures(flow, out, cfg.seed, cfg.interpolations, images)
    print(f"{flow.cfg.flow} at T = {cfg.temperature}; reconstruction check: max |f^-1(f(x)) - x| = {err:.2e} "
          f"on {min(16, len(images))} held-out {dataset} images")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.interpolations < 0 or cfg.threads < 0 or not cfg.temperature >= 0:
        raise ValueError("--num must be positive; --interpolations, --threads and --temperature >= 0")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    cli.check_device(cfg.device)
    cli.check_out_dir(cfg.out, "--out")


def cli_main(argv: list[str] | None = None) -> None:
    """sample.py's command line: a bad flag or an unusable checkpoint is one line on stderr, exit code 2."""
    from shared.data import DataError

    cfg = cli.parse(SampleConfig, argv, check=check)
    try:
        print(f"wrote {cfg.num} images to {main(cfg)}")
    except (checkpoint.CheckpointError, DataError) as err:
        cli.fail(str(err).splitlines()[0])


if __name__ == "__main__":
    cli_main()
