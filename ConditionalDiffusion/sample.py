"""Generate images of chosen classes from a trained ConditionalDiffusion model (its EMA U-Net), guided.

    python sample.py --pretrained                                       # shipped weights, every class, w = 2
    python sample.py --checkpoint runs/conditionaldiffusion --class 7 --guidance 3 --num 16
    python sample.py --checkpoint runs/conditionaldiffusion --class 0 3 7 --guidance 1   # a list: class-by-row grid
    python sample.py --checkpoint runs/conditionaldiffusion --guidance 0                 # unconditional
    python sample.py --checkpoint runs/conditionaldiffusion --steps 0                    # ancestral, all T steps
writes <out>/class_K/000000.png ... per requested class K, <out>/grid.png (row i = the i-th requested class; a
column shares one x_T, so a column shows what the label alone changes) and <out>/trajectory.png (one row per
class: x_t from x_T on the left to x_0). Guidance: eps~ = eps_uncond + w (eps_cond - eps_uncond); w = 0
unconditional, w = 1 conditional, w > 1 guided. --checkpoint takes a run folder (its latest checkpoint) or a file.
"""
# Adapted from DDPM/sample.py (loading, --pretrained, --steps/--eta, trajectory) and ConditionalGAN/sample.py
# (--class, the class-by-row grid)
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import Config, UNet, sample
from shared import checkpoint, cli, dist as distributed
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "ema_unet.pt"  # next to this script, not the cwd
RECOMMENDED_STEPS = 20  # DDIM steps (DDPM's recommendation; README)
RECOMMENDED_GUIDANCE = 2.0  # guidance weight w: the best FID of the default run's guidance sweep (README)
GRID_COLUMNS = 16  # at most this many images per class in grid.png


@dataclass
class SampleConfig:
    """Sample chosen classes from a ConditionalDiffusion checkpoint (EMA U-Net), or the shipped pretrained one."""
    checkpoint: str = "runs/conditionaldiffusion"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped EMA U-Net (pretrained/ema_unet.pt) instead of --checkpoint
    classes: str = ""  # class indices, e.g. "2" or "0,3,7" (also --class 0 3 7); empty = every class
    guidance: float = RECOMMENDED_GUIDANCE  # w: 0 unconditional, 1 conditional, > 1 guided
    num: int = 8  # images per requested class
    steps: int = RECOMMENDED_STEPS  # DDIM steps (0 = the ancestral sampler over all T steps)
    eta: float = 0.0  # DDIM noise: 0 deterministic, 1 = the ancestral sampler's variance
    trajectory: bool = True  # also write trajectory.png (one row per requested class)
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the noise
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # the network's passes: fp32 | bf16 autocast | auto (bf16 where a probe says faster)
    threads: int = 0  # CPU threads (0 = torch's default)


# Copied from DDPM/sample.py: load_model with "DDPM"->"ConditionalDiffusion"
def load_model(path: str | Path, device: torch.device, key: str = "ema") -> tuple[UNet, dict]:
    """The U-Net rebuilt from the config saved in the checkpoint, with its `key` weights (ema or unet), eval mode."""
    state = checkpoint.load(path, model="ConditionalDiffusion", map_location=device)
    net = UNet(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(net, state, key, path)
    return net.eval(), state


# Copied from DDPM/sample.py: load_pretrained with "DDPM"->"ConditionalDiffusion"
def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[UNet, dict]:
    """The shipped EMA U-Net (fp16 on disk, float32 here) and the file's contents ("source" names the run)."""
    path = path or PRETRAINED
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a run (python train.py) and "
                                         f"sample it with --checkpoint, or fetch the file from the project's "
                                         f"repository")
    state = checkpoint.load_pretrained(path, "ConditionalDiffusion", map_location=device)
    net = UNet(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(net, state, "unet", path)
    return net.eval(), state


# Copied from ConditionalGAN/sample.py: parse_classes
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
    net, state = load_pretrained(device) if cfg.pretrained else load_model(cfg.checkpoint, device)
    if cfg.pretrained:
        print(f"pretrained EMA U-Net: {state.get('source', PRETRAINED)}")
    classes = parse_classes(cfg.classes, net.cfg.num_classes)
    c, size, out = net.cfg.channels, net.cfg.image_size, Path(cfg.out)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_T = torch.randn(cfg.num, c, size, size, generator=gen).repeat(len(classes), 1, 1, 1)  # column j: one x_T
    labels = torch.tensor(classes).repeat_interleave(cfg.num)  # (len(classes) * num,), row-major by class
    with distributed.autocast(device, distributed.resolve_precision(cfg.precision, device)):  # x_t stays fp32
        images, snapshots = sample(net, labels, cfg.guidance, cfg.steps, cfg.eta, generator=gen, x_T=x_T,
                                   keep=10 if cfg.trajectory else 0)
    rows = images.view(len(classes), cfg.num, c, size, size)  # (classes, num, C, H, W)
    for k, row in zip(classes, rows):
        (out / f"class_{k}").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(row):
            save_image((img + 1) / 2, out / f"class_{k}" / f"{i:06d}.png")
    save_image(grid(rows[:, :GRID_COLUMNS].flatten(0, 1), nrow=min(cfg.num, GRID_COLUMNS)), out / "grid.png")
    if cfg.trajectory:  # the first image of each class along its trajectory
        strip = torch.stack(snapshots, 1).view(len(classes), cfg.num, len(snapshots), c, size, size)[:, 0]
        save_image(grid(strip.flatten(0, 1), nrow=len(snapshots)), out / "trajectory.png")
    names = state.get("classes") or [str(k) for k in range(net.cfg.num_classes)]
    print(f"wrote {cfg.num} images each of class {', '.join(f'{k} ({names[k]})' for k in classes)} "
          f"at guidance w = {cfg.guidance:g} to {out}")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.steps < 0 or cfg.threads < 0 or not 0 <= cfg.eta <= 1 or cfg.guidance < 0:
        raise ValueError("--num must be positive; --steps, --threads, --guidance >= 0; --eta in [0, 1]")
    if cfg.device not in ("auto", "cpu", "cuda") or cfg.precision not in ("auto", "fp32", "bf16"):
        raise ValueError("--device must be auto, cpu or cuda and --precision auto, fp32 or bf16")
    if cfg.classes.strip():
        parse_classes(cfg.classes, num_classes=10 ** 9)  # syntax only; the range is checked against the model
    cli.check_device(cfg.device)
    cli.check_out_dir(cfg.out, "--out")


def parse_args(argv: list[str] | None = None) -> SampleConfig:
    """cli.parse with `--class` as an alias of `--classes` that also takes a space-separated list."""
    # Adapted from ConditionalGAN/sample.py (parse_args): this folder's SampleConfig
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


def cli_main(argv: list[str] | None = None) -> None:
    """The command line: a bad flag, an unusable checkpoint or class is one line on stderr, exit code 2."""
    cfg = parse_args(argv)
    try:
        main(cfg)
    except (checkpoint.CheckpointError, ValueError) as err:
        cli.fail(str(err).splitlines()[0])


if __name__ == "__main__":
    cli_main()
