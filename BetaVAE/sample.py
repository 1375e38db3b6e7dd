"""Samples, reconstructions and latent traversals from a trained beta-VAE.

    python sample.py --pretrained                              # the shipped weights, pretrained/vae.pt
    python sample.py --checkpoint runs/betavae --num 64 --out samples/
writes samples/000000.png ... (one PNG per prior sample), samples/grid.png, samples/reconstructions.png (test
images above their reconstructions), samples/traversal.png (one row per latent dimension, ordered by KL, largest
first, varied over [-3, 3] with the others at a test image's posterior mean), samples/traversal.gif (every
dimension at once, as an animation over [-3, 3]; one column per test image) and samples/traversal.json (the
order and each dimension's KL in nats). --checkpoint takes a run folder (its latest checkpoint) or a file.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import BetaVAE, Config, reconstruct, sample, traverse
from shared import checkpoint, cli
from shared.data import load_dataset, to_float
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "vae.pt"  # next to this script, not the cwd


@dataclass
class SampleConfig:
    """Sample from a BetaVAE checkpoint, or from the shipped pretrained weights."""
    checkpoint: str = "runs/betavae"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped weights (pretrained/vae.pt) instead of --checkpoint
    num: int = 64  # number of prior samples to write
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the latent noise
    bases: int = 8  # test images whose posterior means the traversals start from (columns of the GIF)
    steps: int = 10  # values per traversal row, evenly spaced in [-limit, limit]
    limit: float = 3.0  # traversal range
    data_root: str = ""  # where the run's dataset lives (default: the one it trained with)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def rebuild(state: dict, path: str | Path, device: torch.device) -> BetaVAE:
    vae = BetaVAE(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(vae, state, "vae", path)
    return vae.eval()


def load_vae(path: str | Path, device: torch.device) -> tuple[BetaVAE, dict]:
    """The VAE rebuilt from the config saved in the checkpoint, with its weights (eval mode), and the checkpoint."""
    state = checkpoint.load(path, model="BetaVAE", map_location=device)
    return rebuild(state, path, device), state


def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[BetaVAE, dict]:
    """The shipped VAE (fp16 on disk, float32 here) and the file's contents ("source" names the run)."""
    path = path or PRETRAINED
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a run (python train.py) and "
                                         f"sample it with --checkpoint, or fetch the file from the project's "
                                         f"repository")
    state = checkpoint.load_pretrained(path, "BetaVAE", map_location=device)
    return rebuild(state, path, device), state


def traversal_grid(images: torch.Tensor) -> torch.Tensor:
    """One base image's traversal (z_dim, steps, C, H, W) -> (z_dim * steps, C, H, W), row-major."""
    return images.flatten(0, 1)


def save_traversals(images: torch.Tensor, order: list[int], kl: torch.Tensor, out: Path) -> None:
    """images (n, z_dim, steps, C, H, W) from model.traverse -> out/traversal.png (base image 0, a row per
    dimension), out/traversal.gif (frame s: every dimension at its s-th value, rows = dimensions, columns = the
    n base images; forth and back) and out/traversal.json (order, KL per dimension in nats)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    n, dims, steps = images.shape[:3]
    save_image(grid(traversal_grid(images[0]), nrow=steps), out / "traversal.png")
    frames: list = []
    for s in list(range(steps)) + list(range(steps - 2, 0, -1)):
        g = grid(images[:, :, s].transpose(0, 1).flatten(0, 1), nrow=n)  # (C, H', W') in [0, 1]
        array = (g.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        img = Image.fromarray(array if array.shape[2] == 3 else array[:, :, 0]).convert("RGB")
        # one shared 64-colour palette (from the first frame) keeps the GIF small
        frames.append(img.quantize(colors=64) if not frames else img.quantize(palette=frames[0]))
    frames[0].save(out / "traversal.gif", save_all=True, append_images=frames[1:], duration=120, loop=0,
                   optimize=True)
    (out / "traversal.json").write_text(json.dumps(
        {"order": order, "kl_nats": [round(float(kl[d]), 4) for d in order],
         "note": "rows of traversal.png / traversal.gif: latent dimensions by mean KL over 256 test images"}) + "\n")


def main(cfg: SampleConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    vae, state = load_pretrained(device) if cfg.pretrained else load_vae(cfg.checkpoint, device)
    if cfg.pretrained:
        print(f"pretrained BetaVAE: {state.get('source', PRETRAINED)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    images = sample(vae, cfg.num, rng=torch.Generator().manual_seed(cfg.seed))  # (num, C, H, W) in [-1, 1]
    for i, img in enumerate(images):
        save_image((img + 1) / 2, out / f"{i:06d}.png")
    save_image(grid(images, nrow=int(math.ceil(math.sqrt(len(images))))), out / "grid.png")
    train_cfg = state.get("config") or {}
    dataset = train_cfg.get("dataset", "shapes")  # a pretrained file keeps only the source line: shapes default
    if "config" not in state and "--dataset " in state.get("source", ""):
        dataset = state["source"].split("--dataset ", 1)[1].split(",")[0]
    test = load_dataset(dataset, cfg.data_root or train_cfg.get("data_root") or None, vae.cfg.image_size, "test")
    x = to_float(test.images[:256]).to(device)
    save_image(grid(torch.cat([x[:32], reconstruct(vae, x[:32])]), nrow=8), out / "reconstructions.png")
    trav, order, kl = traverse(vae, x[:cfg.bases], steps=cfg.steps, limit=cfg.limit, kl_images=x)
    save_traversals(trav, order, kl, out)
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.bases <= 0 or cfg.steps < 2 or cfg.threads < 0 or cfg.limit <= 0:
        raise ValueError("--num and --bases must be positive, --steps >= 2, --limit > 0, --threads >= 0")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    cli.check_device(cfg.device)
    cli.check_out_dir(cfg.out, "--out")


def cli_main(argv: list[str] | None = None) -> None:
    """sample.py's command line: a bad flag or an unusable checkpoint is one line on stderr, exit code 2."""
    from shared.data import DataError

    cfg = cli.parse(SampleConfig, argv, check=check)
    try:
        print(f"wrote {cfg.num} samples, reconstructions and traversals to {main(cfg)}")
    except (checkpoint.CheckpointError, DataError) as err:
        cli.fail(str(err).splitlines()[0])


if __name__ == "__main__":
    cli_main()
