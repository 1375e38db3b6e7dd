"""Evaluate a DDPM checkpoint (its EMA U-Net) with the shared harness, plus its variational bound and FID
against sampling steps.

    python evaluate.py --checkpoint runs/ddpm --num 2000                    # harness (DDIM, 20 steps) + bound
    python evaluate.py --checkpoint runs/ddpm --sweep 10,20,50,100 --sweep-num 200 --ancestral-num 20

The harness scores --num samples of DDIM with --steps (the README's recommended 20) and --eta: FID / KID /
precision / recall / IS with the real-vs-real floors, near-copies, sample images/s. This script adds:
  * bits_per_dim: the variational bound L_T + sum_{t=2}^T L_{t-1} + L_0 (Ho et al. Eq. 5, the discrete decoder
    of Eq. 13) of the first --bound-num held-out test images, in the harness's 8-bit convention (shared.metrics.
    bits_per_dim: NLL / (D ln 2), an upper bound on the 8-bit NLL). The sum over the T - 1 KL terms is estimated
    per image from --bound-timesteps stratified timesteps (one uniform t in each of K equal strata of 2..T,
    weighted (T - 1) / K: unbiased); --bound-timesteps 0 sums all of them (T forward passes per image).
    bound_nats (nats per image), bound_images and bound_timesteps say what was computed.
With --sweep S1,S2,...: no harness record; instead FID of --sweep-num DDIM samples for each step count (and of
--ancestral-num ancestral samples over all T steps, 0 = none) against the harness's --num training images,
beside the real-vs-real FID of the same number of held-out images (small sets bias FID upwards: compare rows of
one N only) and seconds per image; written to <run>/fid_vs_steps.{json,md,png}.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model import sample, schedule_of, variational_bound
from sample import RECOMMENDED_STEPS, load_model
from shared import cli, dist as distributed, evaluation, metrics
from shared.data import load_dataset, to_float
from shared.evaluation import Capabilities
from shared.features import classifier_extractor


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a DDPM checkpoint (EMA weights)."""
    checkpoint: str = "runs/ddpm"  # run folder (its latest checkpoint) or checkpoint file
    steps: int = RECOMMENDED_STEPS  # DDIM steps of the harness's samples (0 = ancestral, all T steps)
    eta: float = 0.0  # DDIM noise of the harness's samples
    bound_num: int = 100  # held-out images of the variational bound (0 = no bound)
    bound_timesteps: int = 50  # stratified timesteps per image for sum L_{t-1} (0 = all T - 1 of them)
    sweep: str = ""  # comma-separated DDIM step counts: FID against steps instead of the harness record
    sweep_num: int = 200  # samples per DDIM row of the sweep
    ancestral_num: int = 20  # samples of the ancestral (all T steps) row of the sweep (0 = none)
    precision: str = "auto"  # fp32 | bf16 | auto: the network's forward passes while sampling (as train.py's flag)


def batched_sampler(net, steps: int, eta: float, batch: int = 250, precision: str = "fp32"):
    """n, generator -> n samples, drawn `batch` at a time (memory), the network under bf16 autocast if asked."""
    device = next(net.parameters()).device

    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        with distributed.autocast(device, precision):
            return torch.cat([sample(net, min(batch, n - i), steps, eta, generator=gen)[0]
                              for i in range(0, n, batch)])
    return draw


def stratified_timesteps(T: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """One uniform draw from each of k equal strata of 2..T."""
    edges = torch.linspace(2, T + 1, k + 1)
    return (edges[:-1] + torch.rand(k, generator=gen) * (edges[1:] - edges[:-1])).floor().long().clamp(2, T)


def bound_bits(net, images_uint8: torch.Tensor, k: int, seed: int = 0) -> dict:
    """The variational bound of the images (uint8), per image in nats, averaged: bits/dim and nats."""
    gen, sch = torch.Generator().manual_seed(seed), schedule_of(net.cfg)
    x0 = images_uint8.double() / 127.5 - 1  # the 8-bit grid of the discrete decoder
    nats = torch.cat([variational_bound(net, sch, chunk, None if k == 0 else
                                        stratified_timesteps(sch.T, k, gen), generator=gen)
                      for chunk in x0.split(100)])
    return {"bits_per_dim": metrics.bits_per_dim(nats, x0[0].numel()), "bound_nats": nats.mean().item(),
            "bound_images": len(x0), "bound_timesteps": k or sch.T - 1}


def fid_against_steps(net, cfg: EvalConfig, train_config: dict, run: Path) -> list[dict]:
    """The sweep: rows of steps, sampler, N, FID, real-vs-real FID at N, seconds per image."""
    data_root = cfg.data_root or train_config.get("data_root") or None
    train = load_dataset(train_config["dataset"], data_root, train_config["image_size"], "train", seed=0)
    test = load_dataset(train_config["dataset"], data_root, train_config["image_size"], "test", seed=0)
    extractor = classifier_extractor(train, test, train_config["dataset"])
    ref = extractor(to_float(evaluation.subset(train, cfg.num, cfg.seed).images))[0]
    held = extractor(to_float(evaluation.subset(test, cfg.num, cfg.seed + 1).images))[0]
    settings = [(int(s), "ddim", cfg.sweep_num) for s in cfg.sweep.split(",")]
    settings += [(0, "ancestral", cfg.ancestral_num)] if cfg.ancestral_num else []
    rows = []
    for steps, name, n in settings:
        gen = torch.Generator().manual_seed(cfg.seed)
        start = time.perf_counter()
        fake = batched_sampler(net, steps, 0.0, precision=cfg.precision)(n, gen)
        seconds = (time.perf_counter() - start) / n
        rows.append({"sampler": name, "steps": steps or net.cfg.timesteps, "num": n,
                     "fid": metrics.fid(ref, extractor(fake)[0]), "fid_real_at_num": metrics.fid(ref, held[:n]),
                     "seconds_per_image": seconds, "precision": cfg.precision})
        print(f"  {name:9s} {rows[-1]['steps']:5d} steps, {n:5d} images: FID {rows[-1]['fid']:8.2f} "
              f"(real-vs-real at this N {rows[-1]['fid_real_at_num']:.2f}), {seconds:.3f} s/image", flush=True)
    write_sweep(rows, run)
    return rows


def write_sweep(rows: list[dict], run: Path) -> None:
    (run / "fid_vs_steps.json").write_text(json.dumps(rows, indent=1))
    lines = ["| sampler | steps | images | FID | real-vs-real FID at that N | s / image |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['steps']} | {r['num']} | {r['fid']:.2f} | {r['fid_real_at_num']:.2f} | "
              f"{r['seconds_per_image']:.3f} |" for r in rows]
    (run / "fid_vs_steps.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, marker in (("ddim", "o-"), ("ancestral", "s")):
        pts = [r for r in rows if r["sampler"] == name]
        if pts:
            ax.plot([r["steps"] for r in pts], [r["fid"] for r in pts], marker,
                    label=f"{name} ({pts[0]['num']} images)")
            for r in pts:
                ax.annotate(f"{r['seconds_per_image']:.2f} s/img", (r["steps"], r["fid"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 4))
    ax.set(xscale="log", xlabel="sampling steps", ylabel="FID (classifier features)", title="DDPM: FID against steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run / "fid_vs_steps.png", dpi=120)
    plt.close(fig)


def main(cfg: EvalConfig) -> dict:
    try:
        check(cfg)
    except ValueError as err:
        cli.fail(str(err))
    net, state = load_model(cfg.checkpoint, torch.device("cpu"))
    cfg.precision = distributed.resolve_precision(cfg.precision, torch.device("cpu"))
    run = evaluation.run_dir_of(cfg.checkpoint)
    if cfg.sweep:
        return {"fid_vs_steps": fid_against_steps(net, cfg, state["config"], run)}
    caps = Capabilities(sample=batched_sampler(net, cfg.steps, cfg.eta, precision=cfg.precision))
    extra = lambda record, ref, held: {"sample_steps": cfg.steps or net.cfg.timesteps, "sample_eta": cfg.eta,
                                       "sample_precision": cfg.precision,
                                       **(bound_bits(net, held.images[:cfg.bound_num], cfg.bound_timesteps, cfg.seed)
                                          if cfg.bound_num else {})}
    return evaluation.evaluate_checkpoint("DDPM", "diffusion", caps, cfg, state["config"],
                                          params=sum(p.numel() for p in net.parameters()), extra=extra)


def check(cfg: EvalConfig) -> None:
    evaluation.check_eval_config(cfg)
    try:
        steps = [int(s) for s in cfg.sweep.split(",")] if cfg.sweep else []
    except ValueError:
        raise ValueError(f"--sweep must be comma-separated integers, got {cfg.sweep!r}") from None
    if min([cfg.steps, cfg.bound_num, cfg.bound_timesteps, cfg.ancestral_num, *steps]) < 0 or cfg.sweep_num < 2 \
            or not 0 <= cfg.eta <= 1:
        raise ValueError("--steps, --bound-num, --bound-timesteps, --ancestral-num, --sweep must be >= 0, "
                         "--sweep-num >= 2, --eta in [0, 1]")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision must be auto, fp32 or bf16, got {cfg.precision!r}")


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
