"""Translate images with a trained CycleGAN: A -> B and B -> A, with side-by-side panels.

    python sample.py --pretrained                                # the shipped weights, on held-out shapes
    python sample.py --checkpoint runs/cyclegan --num 16 --out translations/
    python sample.py --checkpoint runs/cyclegan --input-a my_photos/ --input-b my_paintings/
writes out/AtoB/000000.png ... (the translations of A images), out/BtoA/..., and out/AtoB_panel.png,
out/BtoA_panel.png: one row per image, input | translation | reconstruction (translated back).
Without --input-a / --input-b, the first --num held-out test images of the run's own domains are used.
--checkpoint takes a run folder (its latest checkpoint) or a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from domains import load_domains
from model import Config, Generator, translate
from shared import checkpoint, cli
from shared.data import DataError, load_dataset, to_float
from shared.run import grid

PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "generators.pt"  # next to this script, not the cwd


@dataclass
class SampleConfig:
    """Translate images with a CycleGAN checkpoint, or with the shipped pretrained generators."""
    checkpoint: str = "runs/cyclegan"  # run folder (uses its latest checkpoint) or checkpoint file
    pretrained: bool = False  # use the shipped generators (pretrained/generators.pt) instead of --checkpoint
    input_a: str = ""  # folder of domain-A images to translate to B (default: the run's held-out A images)
    input_b: str = ""  # folder of domain-B images to translate to A (default: the run's held-out B images)
    num: int = 8  # images per direction (from the inputs, in order)
    out: str = "translations"  # output folder
    data_root: str = ""  # where the run's dataset lives (default: the one it trained with)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def load_generators(path: str | Path, device: torch.device | str,
                    pretrained: bool = False) -> tuple[Generator, Generator, dict]:
    """G_AB and G_BA rebuilt from the config saved with them (eval mode), and the file's contents."""
    path = Path(path)
    if pretrained and not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a run (python train.py) and "
                                         f"sample it with --checkpoint, or fetch the file from the project's "
                                         f"repository")
    state = (checkpoint.load_pretrained if pretrained else checkpoint.load)(path, "CycleGAN", map_location=device)
    nets = []
    for key in ("G_AB", "G_BA"):
        G = Generator(Config(**state["model_config"])).to(device)
        checkpoint.load_weights(G, state, key, path)
        nets.append(G.float().eval())
    return nets[0], nets[1], state


def inputs(cfg: SampleConfig, train_config: dict, image_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A images, B images) in [-1, 1], --num of each: from --input-a/--input-b, else the run's test domains."""
    held_out = None
    chosen = []
    for folder, side in ((cfg.input_a, "a"), (cfg.input_b, "b")):
        if folder:
            images = load_dataset(f"folder:{folder}", None, image_size).images
        else:
            if held_out is None:
                held_out = load_domains(train_config["dataset"], cfg.data_root or train_config.get("data_root") or None,
                                        image_size, "test", pair=train_config.get("pair", "auto"))
            images = getattr(held_out, side).images
        if images.shape[1] != channels:  # a grayscale folder for an RGB model, or the other way round
            images = images.expand(-1, channels, -1, -1) if images.shape[1] == 1 else images.float().mean(
                1, keepdim=True).round().to(torch.uint8)
        chosen.append(to_float(images[:cfg.num]))
    return chosen[0], chosen[1]


def write(direction: str, x: torch.Tensor, forward: Generator, backward: Generator, out: Path) -> None:
    """out/<direction>/000000.png ... (translations) and out/<direction>_panel.png: input | translation | back."""
    fake = translate(forward, x)
    rec = translate(backward, fake)
    (out / direction).mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(fake):
        save_image((img + 1) / 2, out / direction / f"{i:06d}.png")
    rows = torch.stack([x, fake, rec], dim=1).flatten(0, 1)  # (N, 3, C, H, W) -> (3N, C, H, W)
    save_image(grid(rows, nrow=3), out / f"{direction}_panel.png")


def main(cfg: SampleConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    G_AB, G_BA, state = load_generators(PRETRAINED if cfg.pretrained else cfg.checkpoint, device, cfg.pretrained)
    if cfg.pretrained:
        print(f"pretrained generators: {state.get('source', PRETRAINED)}")
    train_config = state.get("config") or {k: state[k] for k in ("dataset", "pair") if k in state}  # run | pretrained
    if not train_config and not (cfg.input_a and cfg.input_b):
        raise checkpoint.CheckpointError("this file records no dataset: pass --input-a and --input-b")
    mcfg = G_AB.cfg
    a, b = inputs(cfg, train_config, mcfg.image_size, mcfg.channels)
    out = Path(cfg.out)
    write("AtoB", a, G_AB, G_BA, out)
    write("BtoA", b, G_BA, G_AB, out)
    return out


def export_pretrained(run: str, out: str | Path = PRETRAINED) -> Path:
    """pretrained/generators.pt from a run: shared.pretrained's fp16 G_AB and G_BA, plus the run's --dataset and
    --pair (so --pretrained knows which held-out images to translate).
        python -c "import sample; sample.export_pretrained('runs/leaderboard/shapes')"
    """
    from shared import pretrained

    path = pretrained.export(run, "CycleGAN", ["G_AB", "G_BA"], str(out))
    run_config = checkpoint.load(run, "CycleGAN")["config"]
    state = torch.load(path, weights_only=True)
    checkpoint.save(path, {**state, "dataset": run_config["dataset"], "pair": run_config.get("pair", "auto")})
    return path


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.threads < 0:
        raise ValueError("--num must be positive and --threads >= 0")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")
    cli.check_device(cfg.device)
    cli.check_out_dir(cfg.out, "--out")


def cli_main(argv: list[str] | None = None) -> None:
    """sample.py's command line: a bad flag, checkpoint or input folder is one line on stderr, exit code 2."""
    cfg = cli.parse(SampleConfig, argv, check=check)
    try:
        print(f"wrote A -> B and B -> A translations and panels to {main(cfg)}")
    except (checkpoint.CheckpointError, DataError) as err:
        cli.fail(str(err).splitlines()[0])


if __name__ == "__main__":
    cli_main()
