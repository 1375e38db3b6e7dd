"""Evaluate a VQ-VAE and its prior with the shared harness (shared/evaluation.py).

    python evaluate.py --checkpoint runs/vqvae --num 2000
    python evaluate.py --checkpoint runs/vqvae --temperature 0.8 --top-k 32   # samples of a cooler prior

--checkpoint takes train.py's --out folder (both stages), one stage's run folder or a checkpoint file; the
record goes to <that folder>/eval.jsonl. The harness scores: reconstructions of held-out test images (MSE,
PSNR), samples decoded from prior codes (FID / KID / precision / recall / classifier IS against the training
data, memorisation) and the quantised z_q as a representation (linear probe, k-NN). The folder's own figures,
on the same held-out images:
  codebook_perplexity   exp(H) of the held-out code distribution (K = every code equally used)
  codebook_usage        share of the K codes used at least once on the held-out images
  prior_bits_per_code   the prior's -log2 p(k_t | k_<t), averaged over the code grid
  prior_code_bits_per_dim  the prior's bits per image for the code grid / (C x H x W): the rate of the lossy
                        code (bits to store an image's codes), NOT a likelihood of the 8-bit pixels; that is
                        why the harness's bits_per_dim (a likelihood of the 8-bit data) is absent
  uniform_code_bits_per_dim  the same rate with every code costing log2 K bits (no prior)
A VQ-VAE checkpoint without a prior (stage 1 only) is scored on reconstructions, representation and codebook.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from model import prior_nll, reconstruct, sample
from sample import load_model
from shared import cli, evaluation
from shared.data import to_float
from shared.evaluation import Capabilities, run_dir_of, train_throughput


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a VQ-VAE (and its prior)."""
    checkpoint: str = "runs/vqvae"  # train.py's --out folder, one stage's run folder, or a checkpoint file
    temperature: float = 1.0  # prior softmax temperature of the scored samples
    top_k: int = 0  # sample among the top k codes (0 = all)


@torch.no_grad()
def codebook_figures(vq, prior, images_uint8: torch.Tensor) -> dict:
    """Codebook perplexity and usage on these images; with a prior, its bits per code and per image dim."""
    codes = torch.cat([vq.quantize(vq.encoder(to_float(x)))[1] for x in images_uint8.split(250)])  # (N, g, g)
    K, dims = vq.cfg.codes, images_uint8[0].numel()
    counts = torch.bincount(codes.flatten(), minlength=K).double()
    p = counts / counts.sum()
    record = {"codebook_perplexity": float(torch.exp(-(p * p.clamp_min(1e-30).log()).sum())),
              "codebook_usage": float((counts > 0).double().mean()),
              "uniform_code_bits_per_dim": codes[0].numel() * math.log2(K) / dims}
    if prior is not None:
        nats = torch.cat([prior_nll(prior, k) for k in codes.split(250)])  # (N,) nats per code
        bits_per_code = nats.double().mean().item() / math.log(2)
        record.update(prior_bits_per_code=bits_per_code,
                      prior_code_bits_per_dim=bits_per_code * codes[0].numel() / dims)
    return record


def main(cfg: EvalConfig) -> dict:
    vq, prior, state = load_model(cfg.checkpoint, torch.device("cpu"))
    if prior is None:
        print(f"{cfg.checkpoint} holds no prior (stage 1 only): no samples are scored")

    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.cat([sample(vq, prior, len(c), cfg.temperature, cfg.top_k, gen) for c in torch.arange(n).split(250)])

    caps = Capabilities(sample=draw if prior is not None else None,
                        encode=lambda x: vq.quantize(vq.encoder(x))[0].flatten(1),  # z_q, (N, D h w)
                        reconstruct=lambda x: reconstruct(vq, x))

    def extra(record: dict, ref, held) -> dict:
        run = run_dir_of(cfg.checkpoint)
        speed = train_throughput(run / "vqvae") or train_throughput(run)  # stage 1's training images/s
        return {"train_images_per_s": speed, "sample_temperature": cfg.temperature, "sample_top_k": cfg.top_k,
                **codebook_figures(vq, prior, held.images)}

    params = sum(p.numel() for m in (vq, prior) if m is not None for p in m.parameters())
    return evaluation.evaluate_checkpoint("VQ-VAE", "VAE", caps, cfg, state["config"], params=params, extra=extra)


def check(cfg: EvalConfig) -> None:
    evaluation.check_eval_config(cfg)
    if not cfg.temperature > 0 or cfg.top_k < 0:
        raise ValueError("--temperature must be positive and --top-k >= 0")


def cli_main(argv: list[str] | None = None) -> None:
    """evaluation.cli_main with this folder's flag checks: errors are one line, exit code 2."""
    cli.parse(EvalConfig, argv, check=check)  # --temperature / --top-k, before any work
    evaluation.cli_main(EvalConfig, main, argv)


if __name__ == "__main__":
    cli_main()
