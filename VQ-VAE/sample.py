"""Generate images from a trained VQ-VAE and its prior, and reconstruct test images.

    python sample.py --pretrained                              # the shipped weights, pretrained/vqvae_prior.pt
    python sample.py --checkpoint runs/vqvae --num 64 --out samples/
    python sample.py --checkpoint runs/vqvae --temperature 0.8 --top-k 32
writes samples/000000.png ... (one PNG per image, codes drawn from the prior and decoded), samples/grid.png and
samples/reconstructions.png (rows of test images, each followed by the row of their reconstructions).
--checkpoint takes the --out folder of train.py (its prior/ run, or its vqvae/ run when there is no prior yet:
then only the reconstructions are written), one stage's run folder, or a checkpoint file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.utils import save_image

from model import VQVAE, Config, Prior, reconstruct, sample
from shared import checkpoint, cli
from shared.data import load_dataset, to_float
from shared.run import grid

MODEL = "VQ-VAE"
PRETRAINED = Path(__file__).resolve().parent / "pretrained" / "vqvae_prior.pt"  # next to this script, not the cwd


@dataclass
class SampleConfig:
    """Sample from a VQ-VAE prior checkpoint, or from the shipped pretrained networks."""
    checkpoint: str = "runs/vqvae"  # train.py's --out folder, one stage's run folder, or a checkpoint file
    pretrained: bool = False  # use the shipped networks (pretrained/vqvae_prior.pt) instead of --checkpoint
    num: int = 64  # number of images to sample
    out: str = "samples"  # output folder
    seed: int = 0  # seed of the sampled codes
    temperature: float = 1.0  # softmax temperature of the prior (< 1: more typical, less varied samples)
    top_k: int = 0  # sample among the k most likely codes at each position (0 = all)
    reconstructions: int = 32  # test images to reconstruct into reconstructions.png (0 = none)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads (0 = torch's default)


def find_run(path: str | Path) -> Path:
    """The checkpoint behind `path`: train.py's --out folder means its prior/ run (else its vqvae/ run)."""
    p = Path(path)
    for stage in ("prior", "vqvae"):
        if p.is_dir() and checkpoint.latest(p / stage) is not None:
            return p / stage
    return p


def build(state: dict, path: str | Path) -> tuple[VQVAE, Prior | None]:
    """The VQ-VAE (and the prior, if the checkpoint holds one) rebuilt from the saved config, eval mode."""
    if not isinstance(state.get("model_config"), dict):
        raise checkpoint.CheckpointError(f"{path} has no model config")
    cfg = Config(**state["model_config"])
    vq = VQVAE(cfg)
    checkpoint.load_weights(vq, state, "vqvae", path)
    prior = None
    if state.get("prior") is not None:
        prior = Prior(cfg)
        checkpoint.load_weights(prior, state, "prior", path)
    return vq.eval(), None if prior is None else prior.eval()


def load_model(path: str | Path, device: torch.device) -> tuple[VQVAE, Prior | None, dict]:
    """(vqvae, prior or None, checkpoint) of a run folder or checkpoint file."""
    run = find_run(path)
    state = checkpoint.load(run, model=MODEL, map_location=device)
    return (*build(state, run), state)


def load_pretrained(device: torch.device, path: Path | None = None) -> tuple[VQVAE, Prior | None, dict]:
    """The shipped networks (fp16 on disk, float32 here) and the file's contents ("source" names the run)."""
    path = path or PRETRAINED
    if not path.is_file():
        raise checkpoint.CheckpointError(f"no pretrained weights at {path}: train a run (python train.py) and "
                                         f"sample it with --checkpoint, or fetch the file from the project's "
                                         f"repository")
    state = checkpoint.load_pretrained(path, MODEL, map_location=device)
    return (*build(state, path), state)


def save_images(images: torch.Tensor, out: Path) -> None:
    """images (N, C, H, W) in [-1, 1] -> out/000000.png ... and out/grid.png (a near-square grid)."""
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        save_image((img + 1) / 2, out / f"{i:06d}.png")
    save_image(grid(images, nrow=int(math.ceil(math.sqrt(len(images))))), out / "grid.png")


def interleave(x: torch.Tensor, x_hat: torch.Tensor, row: int = 8) -> torch.Tensor:
    """Rows of `row` originals, each followed by the row of their reconstructions (len(x) % row == 0)."""
    return torch.stack([x.view(-1, row, *x.shape[1:]), x_hat.view(-1, row, *x.shape[1:])], 1).flatten(0, 2)


def main(cfg: SampleConfig) -> Path:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    vq, prior, state = load_pretrained(device) if cfg.pretrained else load_model(cfg.checkpoint, device)
    if cfg.pretrained:
        print(f"pretrained VQ-VAE and prior: {state.get('source', PRETRAINED)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if prior is None:
        print(f"{cfg.checkpoint} has no prior yet: reconstructions only (train it: python train.py --stage prior)")
    else:
        rng = torch.Generator().manual_seed(cfg.seed)
        save_images(sample(vq, prior, cfg.num, cfg.temperature, cfg.top_k, rng), out)  # (num, C, H, W)
    if cfg.reconstructions:
        run_cfg = state.get("config", {})  # a pretrained file has none: the default dataset (embedded MNIST)
        test = load_dataset(run_cfg.get("dataset", "mnist"), run_cfg.get("data_root") or None,
                            vq.cfg.image_size, "test")
        n = min(cfg.reconstructions, len(test)) // 8 * 8
        if n:
            x = to_float(test.images[torch.arange(n) * (len(test) // n)]).to(device)  # spread over the set
            save_image(grid(interleave(x, reconstruct(vq, x)), nrow=8), out / "reconstructions.png")
    return out


def check(cfg: SampleConfig) -> None:
    if cfg.num <= 0 or cfg.reconstructions < 0 or cfg.threads < 0 or cfg.top_k < 0:
        raise ValueError("--num must be positive; --reconstructions, --top-k and --threads >= 0")
    if cfg.reconstructions % 8:
        raise ValueError(f"--reconstructions must be a multiple of 8 (rows of 8), got {cfg.reconstructions}")
    if not cfg.temperature > 0:
        raise ValueError(f"--temperature must be positive, got {cfg.temperature}")
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
