"""Generate images of chosen classes from a trained conditional GAN.

    python sample.py --pretrained                                            # the shipped weights, every class
    python sample.py --checkpoint runs/conditionalgan --class 2 --num 16     # 16 images of class 2
    python sample.py --checkpoint runs/conditionalgan --class 0,3,7          # a list (or --class 0 3 7)
    python sample.py --checkpoint runs/conditionalgan                        # every class
writes <out>/class_K/000000.png ... for each requested class K and <out>/grid.png, a class-by-row grid (row i =
the i-th requested class; each column shares one z, so a column shows what the label alone changes).
--checkpoint takes a run folder (its latest checkpoint) or a file; --pretrained uses pretrained/generator.pt
next to this script (the generator of the default MNIST run) instead.
"""
# Adapted from DCGAN/sample.py: checkpoint loading and PNG/grid writing; --class, the moving average, --pretrained.
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import Config, Generator, sample
from shared import checkpoint, cli
from shared.run import grid

GRID_COLUMNS = 16  # at most this many images per class in grid.png
PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "generator.pt"  # not relative to the cwd


@dataclass
class SampleConfig:
    """Sample chosen classes from a ConditionalGAN checkpoint (or the shipped pretrained generator)."""
    checkpoint: str = "runs/conditionalgan"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped weights in pretrained/generator.pt instead of --checkpoint
    classes: str = ""  # class indices, e.g. "2" or "0,3,7" (also --class); empty = every class
    num: int = 10  # images per requested class
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the latent noise
    raw: bool = False  # use G's raw weights, not their moving average (when the run kept one: train.py --ema)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def load_generator(path: str, device: torch.device, raw: bool = False) -> tuple[Generator, dict]:
    """G rebuilt from the config saved in the checkpoint (eval mode), and the checkpoint. Its weights are the
    moving average the run kept (train.py --ema), or G's raw weights if raw or if the run kept none."""
    state = checkpoint.load(path, model="ConditionalGAN", map_location=device)
    G = Generator(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(G, state, "G" if raw or state.get("G_ema") is None else "G_ema", path)
    return G.eval(), state


def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[Generator, dict]:
    """The shipped generator (fp16 on disk, float32 here), rebuilt from its model_config (eval mode)."""
    path = Path(path or PRETRAINED)
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a model (python train.py) and "
                                         f"use --checkpoint, or fetch pretrained/generator.pt from the repository")
    state = checkpoint.load_pretrained(path, "ConditionalGAN", map_location=device)
    G = Generator(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(G, state, "G", path)
    return G.eval(), state


def parse_classes(text: str, num_classes: int) -> list[int]:
    """"0,3,7" -> [0, 3, 7]; "" -> every class. ValueError names the bad entry and the valid range."""
    if not text.strip():
        return list(range(num_classes))
    try:
        classes = [int(c) for c in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--class takes class indices like 2 or 0,3,7, got {text!r}") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"--class {bad[0]} is out of range: this model has classes 0..{num_classes - 1}")
    return classes


def main(cfg: SampleConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    G, state = load_pretrained(device) if cfg.pretrained else load_generator(cfg.checkpoint, device, cfg.raw)
    classes = parse_classes(cfg.classes, G.cfg.num_classes)
    z = torch.randn(cfg.num, G.cfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    out = Path(cfg.out)
    rows = []
    for k in classes:
        images = sample(G, torch.full((cfg.num,), k, dtype=torch.long), z=z)  # (num, C, H, W), all of class k
        (out / f"class_{k}").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            save_image((img + 1) / 2, out / f"class_{k}" / f"{i:06d}.png")
        rows.append(images[:GRID_COLUMNS])
    save_image(grid(torch.cat(rows), nrow=min(cfg.num, GRID_COLUMNS)), out / "grid.png")
    names = state.get("classes") or [str(k) for k in range(G.cfg.num_classes)]
    print(f"wrote {cfg.num} images each of class {', '.join(f'{k} ({names[k]})' for k in classes)} to {out}")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.threads < 0:
        raise ValueError("--num must be positive and --threads >= 0")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.classes.strip():
        parse_classes(cfg.classes, num_classes=10 ** 9)  # syntax only; the range is checked against the model
    cli.check_device(cfg.device)
    cli.check_out_dir(cfg.out, "--out")


def parse_args(argv: list[str] | None = None) -> SampleConfig:
    """cli.parse with `--class` as an alias of `--classes` that also takes a space-separated list."""
    parser = cli.build_parser(SampleConfig)
    parser.add_argument("--class", dest="class_list", nargs="+", default=None, metavar="K",
                        help="class index or indices to sample (same as --classes)")
    ns = vars(parser.parse_args(argv))
    class_list = ns.pop("class_list")
    if class_list is not None:
        ns["classes"] = ",".join(class_list)
    cfg = SampleConfig(**ns)
    try:
        check(cfg)
    except ValueError as e:
        cli.fail(str(e))
    return cfg


def run(argv: list[str] | None = None) -> None:
    """The command line: parse, sample, and a one-line error (exit 2) for an unusable checkpoint or class."""
    cfg = parse_args(argv)
    try:
        main(cfg)
    except (checkpoint.CheckpointError, ValueError) as err:
        cli.fail(str(err).splitlines()[0])


if __name__ == "__main__":
    run()
