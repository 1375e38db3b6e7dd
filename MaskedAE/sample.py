"""Reconstruct masked held-out images with a trained MAE, and inpaint your own image.

    python sample.py --pretrained                                   # the shipped MAE of the default MNIST run
    python sample.py --checkpoint runs/mae --num 10 --ratios 0.5,0.75,0.9 --out samples/
    python sample.py --pretrained --image digit.png --box 8,8,20,20 # hide a box (pixels of digit.png) and fill it
    python sample.py --pretrained --image digit.png --mask-ratio 0.6 --invert   # black-on-white drawing, random mask
writes samples/reconstructions.png: for each mask ratio, four rows over --num held-out test images: the original,
the masked input (hidden patches grey), the decoder's reconstruction of every patch, and the reconstruction
pasted into the hidden patches only (the visible ones are the input's); one samples/reconstructions_r0.75.png
per ratio too. With --image: samples/inpainted.png (original | masked | reconstruction | pasted, at the model's
resolution) and samples/inpainted_result.png (the pasted image alone). A patch is hidden when it overlaps the
box x0,y0,x1,y1 (x1, y1 exclusive, in the pixels of the given image, which is resized to the model's size).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import Config, MaskedAutoencoder, box_mask, mask_image, random_masking, reconstruct
from shared import checkpoint, cli
from shared.data import DataError, load_dataset, to_float
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "mae.pt"  # next to this script, not the cwd


@dataclass
class SampleConfig:
    """Reconstruct masked held-out images with an MAE checkpoint (or the shipped weights), or inpaint --image."""
    checkpoint: str = "runs/mae"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped MAE (pretrained/mae.pt, the default MNIST run) instead of --checkpoint
    num: int = 10  # held-out test images per panel
    ratios: str = "0.5,0.75,0.9"  # mask ratios of the panels, comma-separated
    image: str = ""  # your image to inpaint (any PIL-readable file), instead of the held-out panels
    box: str = ""  # with --image: hide the patches overlapping x0,y0,x1,y1 (pixels of --image)
    mask_ratio: float = 0.0  # with --image and no --box: hide this share of patches at random
    invert: bool = False  # with --image: invert it first (MNIST digits are white on black)
    scale: int = 1  # enlarge the written PNGs by this factor (nearest neighbour; the README's use 3)
    out: str = "samples"  # output folder
    seed: int = 0  # seeds the masks and the choice of held-out images
    data_root: str = ""  # where the dataset lives (default: the one the run trained with)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def rebuild(state: dict, path: str | Path, device: torch.device) -> MaskedAutoencoder:
    model = MaskedAutoencoder(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(model, state, "mae", path)
    return model.eval()


def load_model(path: str | Path, device: torch.device) -> tuple[MaskedAutoencoder, dict]:
    """The MAE rebuilt from the config saved in the checkpoint, with its weights (eval mode), and the checkpoint."""
    state = checkpoint.load(path, model="MaskedAE", map_location=device)
    return rebuild(state, path, device), state


def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[MaskedAutoencoder, dict]:
    """The shipped MAE (fp16 on disk, float32 here) and the file's contents (its "source" names the run)."""
    path = Path(path or PRETRAINED)
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a run (python train.py) and use "
                                         f"--checkpoint, or fetch pretrained/mae.pt from the project's repository")
    state = checkpoint.load_pretrained(path, "MaskedAE", map_location=device)
    return rebuild(state, path, device), state


def write(image: torch.Tensor, path: Path, scale: int) -> None:
    """Save a (C, H, W) image in [0, 1], enlarged `scale` times by pixel repetition."""
    save_image(image.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2), path)


def masked_view(x: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The input (B, C, H, W) with its hidden patches grey (0 in [-1, 1])."""
    return x * (1 - mask_image(mask.to(x.dtype), patch_size, x.shape[-1]))


def panel(x: torch.Tensor, masked: torch.Tensor, rec: torch.Tensor, pasted: torch.Tensor) -> torch.Tensor:
    """Four rows of N images (original, masked, reconstruction, pasted): (4 N, C, H, W), for a grid of nrow=N."""
    return torch.cat([x, masked, rec, pasted])


def reconstruction_panel(model: MaskedAutoencoder, x: torch.Tensor, ratio: float,
                         generator: torch.Generator) -> torch.Tensor:
    """panel() of images x under random masks of the given ratio."""
    _, mask = random_masking(len(x), model.cfg.num_patches, ratio, generator=generator)
    mask = mask.to(x.device)
    return panel(x, masked_view(x, mask, model.cfg.patch_size), *reconstruct(model, x, mask))


def held_out(dataset: str, data_root: str, image_size: int, n: int, seed: int) -> torch.Tensor:
    """n seeded test-split images (n, C, H, W) in [-1, 1] of `dataset` (the one the run trained on)."""
    data = load_dataset(dataset, data_root or None, image_size, "test", seed=0)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return to_float(data.images[idx])


def read_image(path: str, cfg: Config, invert: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """A user's image resized to the model's size, (1, C, S, S) in [-1, 1], and its original (width, height)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert("L" if cfg.channels == 1 else "RGB")
            size = img.size
            img = img.resize((cfg.image_size, cfg.image_size), Image.Resampling.BICUBIC)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read --image {path}: {err}") from None
    x = torch.from_numpy(np.array(img)).float().view(cfg.image_size, cfg.image_size, -1).permute(2, 0, 1)
    x = x / 127.5 - 1
    return (-x if invert else x)[None], size


def parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--ratios takes comma-separated numbers, got {text!r}") from None
    if not all(0 <= r < 1 for r in ratios):
        raise ValueError(f"every --ratios value must be in [0, 1), got {text!r}")
    return ratios


def parse_box(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    try:
        x0, y0, x1, y1 = (float(v) for v in parts)
    except ValueError:
        raise ValueError(f"--box takes x0,y0,x1,y1 (four numbers), got {text!r}") from None
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"--box needs x1 > x0 and y1 > y0, got {text!r}")
    return x0, y0, x1, y1


def inpaint(model: MaskedAutoencoder, cfg: SampleConfig, out: Path) -> None:
    """Inpaint --image under --box or a random --mask-ratio mask; write inpainted.png and inpainted_result.png."""
    mcfg = model.cfg
    device = next(model.parameters()).device
    x, (w, h) = read_image(cfg.image, mcfg, cfg.invert)
    if cfg.box:
        x0, y0, x1, y1 = parse_box(cfg.box)
        sx, sy = mcfg.image_size / w, mcfg.image_size / h  # the box in the resized image's pixels
        mask = box_mask((x0 * sx, y0 * sy, x1 * sx, y1 * sy), mcfg)
        if mask.sum() == 0 or mask.sum() == mcfg.num_patches:
            raise ValueError(f"--box {cfg.box} hides {int(mask.sum())} of {mcfg.num_patches} patches; it must hide "
                             f"some but not all (the image is {w}x{h} pixels)")
    else:
        _, mask = random_masking(1, mcfg.num_patches, cfg.mask_ratio, generator=torch.Generator().manual_seed(cfg.seed))
    x, mask = x.to(device), mask.to(device)
    rec, pasted = reconstruct(model, x, mask)
    write(grid(panel(x, masked_view(x, mask, mcfg.patch_size), rec, pasted), nrow=4), out / "inpainted.png", cfg.scale)
    write(((pasted[0] + 1) / 2).clamp(0, 1).cpu(), out / "inpainted_result.png", cfg.scale)
    print(f"hid {int(mask.sum())} of {mcfg.num_patches} patches of {cfg.image}")


def main(cfg: SampleConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    if cfg.pretrained:  # the default run's data: embedded MNIST (or torchvision's files under --data-root)
        model, state = load_pretrained(device)
        print(f"pretrained MAE: {state.get('source', PRETRAINED)}")
        dataset, data_root = "mnist", cfg.data_root
    else:
        model, state = load_model(cfg.checkpoint, device)
        dataset, data_root = state["config"]["dataset"], cfg.data_root or state["config"]["data_root"]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.image:
        inpaint(model, cfg, out)
        return out
    x = held_out(dataset, data_root, model.cfg.image_size, cfg.num, cfg.seed).to(device)
    panels = []
    for ratio in parse_ratios(cfg.ratios):
        panels.append(reconstruction_panel(model, x, ratio, torch.Generator().manual_seed(cfg.seed + 1)))
        write(grid(panels[-1], nrow=len(x)), out / f"reconstructions_r{ratio:.2f}.png", cfg.scale)
    write(grid(torch.cat(panels), nrow=len(x)), out / "reconstructions.png", cfg.scale)
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.threads < 0 or cfg.scale < 1:
        raise ValueError("--num and --scale must be positive and --threads >= 0")
    parse_ratios(cfg.ratios)
    if not 0 <= cfg.mask_ratio < 1:
        raise ValueError(f"--mask-ratio must be in [0, 1), got {cfg.mask_ratio}")
    if cfg.image and not cfg.box and cfg.mask_ratio == 0:
        raise ValueError("--image needs a mask: --box x0,y0,x1,y1 or --mask-ratio R")
    if cfg.box:
        if not cfg.image:
            raise ValueError("--box needs --image")
        parse_box(cfg.box)
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    cli.check_device(cfg.device)
    cli.check_out_dir(cfg.out, "--out")


def cli_main(argv: list[str] | None = None) -> None:
    """sample.py's command line: a bad flag, image or checkpoint is one line on stderr, exit code 2."""
    cfg = cli.parse(SampleConfig, argv, check=check)
    try:
        print(f"wrote {main(cfg)}")
    except (ValueError, DataError, checkpoint.CheckpointError) as err:
        cli.fail(str(err).splitlines()[0])


if __name__ == "__main__":
    cli_main()
