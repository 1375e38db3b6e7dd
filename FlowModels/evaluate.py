"""Evaluate a RealNVP / Glow checkpoint with the shared harness (shared/evaluation.py).

    python evaluate.py --checkpoint runs/flow --num 2000
    python evaluate.py --checkpoint runs/flow --num 2000 --ood shapes     # + anomaly detection by bits/dim

The harness scores:
  * bits_per_dim: the exact -log p of --num held-out test images, each dequantised once (a fixed seed) into
    (k + u) / 256 and put on the 8-bit scale (shared.metrics.dequantized_bits_per_dim with data_scale 1/256, the
    convention of model.py's docstring); an upper bound on the 8-bit NLL;
  * --num samples at --temperature (default 0.7, sample.py's): FID / KID / precision / recall / IS with the
    real-vs-real floors, near-copies, sample images/s;
  * reconstruct = f^-1(f(x)) of held-out images: MSE / PSNR (a flow inverts: MSE ~ 1e-12);
  * encode = every latent z concatenated (D numbers): linear-probe and k-NN accuracy;
  * with --ood DATASET: the same bits/dim of DATASET's test images (in the model's channels and size) and the
    AUROC of bits/dim as an anomaly score (P(bits/dim of an OOD image > that of a held-out one); < 0.5 means the
    model gives the other data the higher likelihood, as Nalisnick et al. 2019 found for flows).
This script adds bits_per_dim_se (standard error over images), the temperature, the largest reconstruction error
and the figures samples_T*.png, interpolation.png, reconstruction.png in the run folder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.utils import save_image

from model import bits_per_dim, encode, interpolate, log_prob, reconstruct, sample
from sample import load_model
from shared import cli, evaluation, metrics
from shared.data import to_float
from shared.evaluation import Capabilities
from shared.run import grid

DEQUANTIZE_SEED = 0xF10  # every evaluation dequantises the same images with the same noise


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a RealNVP / Glow checkpoint."""
    checkpoint: str = "runs/flow"  # run folder (its latest checkpoint) or checkpoint file
    temperature: float = 0.7  # temperature of the harness's samples (1 = the model's own distribution)
    batch: int = 250  # images per forward pass


def bits_per_dim_fn(flow, batch: int = 250):
    """For the harness: uint8 images (n, C, H, W) -> bits/dim per image (n,), one seeded dequantisation."""
    device = next(flow.parameters()).device

    @torch.no_grad()
    def bpd(images_uint8: torch.Tensor) -> torch.Tensor:
        gen, out = torch.Generator().manual_seed(DEQUANTIZE_SEED), []
        for chunk in images_uint8.split(batch):
            x = metrics.uniform_dequantize(chunk, 0.0, 1.0, generator=gen).to(device)  # (k + u) / 256
            out.append(bits_per_dim(-log_prob(flow, x).double(), flow.cfg.num_dims).cpu())
        return torch.cat(out)
    return bpd


def write_figures(flow, held_uint8: torch.Tensor, run_dir, seed: int) -> dict[str, str]:
    """samples at T = 0.7 and 1 (64 each), interpolation.png (8 rows between held-out pairs), reconstruction.png."""
    paths = {}
    for t in (0.7, 1.0):
        path = run_dir / f"samples_T{t:g}.png"
        save_image(grid(sample(flow, 64, t, generator=torch.Generator().manual_seed(seed)), nrow=8), path)
        paths[f"samples_T{t:g}_png"] = str(path)
    x = to_float(held_uint8[:16])
    rows = [interpolate(flow, x[2 * i], x[2 * i + 1], steps=10) for i in range(len(x) // 2)]
    save_image(grid(torch.cat(rows), nrow=10), run_dir / "interpolation.png")
    save_image(grid(torch.cat([x, reconstruct(flow, x).clamp(-1, 1)]), nrow=len(x)), run_dir / "reconstruction.png")
    paths.update(interpolation_png=str(run_dir / "interpolation.png"),
                 reconstruction_png=str(run_dir / "reconstruction.png"))
    return paths


def main(cfg: EvalConfig) -> dict:
    try:
        check(cfg)
    except ValueError as err:
        cli.fail(str(err))
    flow, state = load_model(cfg.checkpoint, torch.device("cpu"))
    run_dir = evaluation.run_dir_of(cfg.checkpoint)
    bpd = bits_per_dim_fn(flow, cfg.batch)
    caps = Capabilities(sample=lambda n, gen: sample(flow, n, cfg.temperature, generator=gen),
                        encode=lambda x: encode(flow, x), reconstruct=lambda x: reconstruct(flow, x),
                        bits_per_dim=bpd)

    def extra(record: dict, ref, held) -> dict:
        per_image = bpd(held.images)
        x = to_float(held.images[:250])
        return {"flow": flow.cfg.flow, "temperature": cfg.temperature,
                "bits_per_dim_se": (per_image.std() / len(per_image) ** 0.5).item(),
                "max_reconstruction_error": (reconstruct(flow, x) - x).abs().max().item(),
                **write_figures(flow, held.images, run_dir, cfg.seed)}

    return evaluation.evaluate_checkpoint("FlowModels", "flow", caps, cfg, state["config"],
                                          params=sum(p.numel() for p in flow.parameters()), extra=extra)


def check(cfg: EvalConfig) -> None:
    evaluation.check_eval_config(cfg)
    if not cfg.temperature >= 0 or cfg.batch < 1:
        raise ValueError("--temperature must be >= 0 and --batch >= 1")


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
