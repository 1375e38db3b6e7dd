"""Evaluate a latent diffusion model with the shared harness, plus FID against sampler settings.

    python evaluate.py --checkpoint runs/ldm --num 2000                     # harness (DDIM 20 steps)
    python evaluate.py --checkpoint runs/ldm --sweep 10,20,50 --sweep-num 500 --ancestral-num 50
    python evaluate.py --checkpoint runs/cond --guidance 3                  # a --class-cond run, guided samples

--checkpoint takes train.py's --out folder (both stages), one stage's run folder or a checkpoint file; the
record goes to <that folder>/eval.jsonl. The harness scores: samples (FID / KID / precision / recall /
classifier IS against the training data, memorisation, sample images/s: latent DDIM with --steps and --eta,
then one decoder pass), the autoencoder's reconstructions of held-out test images (mse, psnr: the decoder of
the mean of q(z|x)), and the latent means as a representation (linear probe, k-NN). A class-conditional run is
also scored on class accuracy of its guided samples. This script adds:
  autoencoder_train_images_per_s, diffusion_train_images_per_s  each stage's median logged training speed
                        (train_images_per_s is the diffusion stage's)
  scale_factor          the latent scale s = 1 / std(z) stage 2 used
  sample_steps, sample_eta, sample_guidance   the sampler setting the harness scored
An autoencoder checkpoint without a diffusion model (stage 1 only) is scored on reconstructions and
representation only.
With --sweep S1,S2,...: no harness record; instead FID of --sweep-num samples for each DDIM step count (and of
--ancestral-num ancestral samples over all T steps, 0 = none) against --num training images, beside the
real-vs-real FID of the same number of held-out images (small sets bias FID upwards: compare rows of one N
only) and seconds per image; written to <run>/fid_vs_steps.{json,md,png}.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model import encode, reconstruct, sample
from sample import RECOMMENDED_STEPS, find_run, load_model
from shared import cli, evaluation, metrics
from shared.data import load_dataset, to_float
from shared.evaluation import Capabilities, run_dir_of, train_throughput
from shared.features import classifier_extractor


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a latent diffusion model (EMA U-Net + decoder), or an autoencoder alone."""
    checkpoint: str = "runs/ldm"  # train.py's --out folder, one stage's run folder, or a checkpoint file
    steps: int = RECOMMENDED_STEPS  # DDIM steps of the harness's samples (0 = ancestral, all T steps)
    eta: float = 0.0  # DDIM noise of the harness's samples
    guidance: float = 3.0  # class-conditional run: guidance scale s_g of the scored samples (1 = none)
    sweep: str = ""  # comma-separated DDIM step counts: FID against steps instead of the harness record
    sweep_num: int = 500  # samples per DDIM row of the sweep
    ancestral_num: int = 50  # samples of the ancestral (all T steps) row of the sweep (0 = none)


def batched_sampler(ae, net, steps: int, eta: float, guidance: float, batch: int = 250):
    """n, generator -> n unconditional samples (a class-conditional net: classes in turn), `batch` at a time."""
    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.cat([sample(ae, net, len(c), steps, eta, gen, class_labels(net, c), guidance)
                          for c in torch.arange(n).split(batch)])
    return draw


def class_labels(net, index: torch.Tensor) -> torch.Tensor | None:
    """Labels index % K for a class-conditional net (so an unconditional draw covers the classes), else None."""
    return index % net.cfg.num_classes if net.cfg.num_classes else None


def fid_against_steps(ae, net, cfg: EvalConfig, train_config: dict, run: Path) -> list[dict]:
    """The sweep: rows of steps, sampler, N, FID, real-vs-real FID at N, seconds per image."""
    # Adapted from DDPM/evaluate.py (fid_against_steps): samples through the decoder, guidance
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
        fake = batched_sampler(ae, net, steps, 0.0, cfg.guidance)(n, gen)
        seconds = (time.perf_counter() - start) / n
        rows.append({"sampler": name, "steps": steps or net.cfg.timesteps, "num": n,
                     "fid": metrics.fid(ref, extractor(fake)[0]), "fid_real_at_num": metrics.fid(ref, held[:n]),
                     "seconds_per_image": seconds})
        print(f"  {name:9s} {rows[-1]['steps']:5d} steps, {n:5d} images: FID {rows[-1]['fid']:8.2f} "
              f"(real-vs-real at this N {rows[-1]['fid_real_at_num']:.2f}), {seconds:.4f} s/image", flush=True)
    write_sweep(rows, run)
    return rows


def write_sweep(rows: list[dict], run: Path) -> None:
    # Adapted from DDPM/evaluate.py (write_sweep): the plot's title and 4-digit seconds
    (run / "fid_vs_steps.json").write_text(json.dumps(rows, indent=1))
    lines = ["| sampler | steps | images | FID | real-vs-real FID at that N | s / image |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['steps']} | {r['num']} | {r['fid']:.2f} | {r['fid_real_at_num']:.2f} | "
              f"{r['seconds_per_image']:.4f} |" for r in rows]
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
                ax.annotate(f"{r['seconds_per_image'] * 1000:.1f} ms/img", (r["steps"], r["fid"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 4))
    ax.set(xscale="log", xlabel="sampling steps", ylabel="FID (classifier features)",
           title="LatentDiffusion: FID against steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run / "fid_vs_steps.png", dpi=120)
    plt.close(fig)


def main(cfg: EvalConfig) -> dict:
    try:
        check(cfg)
    except ValueError as err:
        cli.fail(str(err))
    ae, net, state = load_model(cfg.checkpoint, torch.device("cpu"))
    run = run_dir_of(cfg.checkpoint)
    if cfg.sweep:
        if net is None:
            cli.fail(f"{cfg.checkpoint} holds no diffusion model (stage 1 only): nothing to sweep")
        return {"fid_vs_steps": fid_against_steps(ae, net, cfg, state["config"], run)}
    if net is None:
        print(f"{cfg.checkpoint} holds no diffusion model (stage 1 only): no samples are scored")
    conditional = net is not None and net.cfg.num_classes > 0
    caps = Capabilities(
        sample=batched_sampler(ae, net, cfg.steps, cfg.eta, cfg.guidance) if net is not None else None,
        sample_class=(lambda y, gen: sample(ae, net, len(y), cfg.steps, cfg.eta, gen, y, cfg.guidance))
        if conditional else None,
        encode=lambda x: encode(ae, x).flatten(1),  # the mean of q(z|x), (N, c h w)
        reconstruct=lambda x: reconstruct(ae, x))

    def extra(record: dict, ref, held) -> dict:
        top = run_dir_of(find_run(cfg.checkpoint)).parent  # train.py's --out folder
        ae_speed = train_throughput(top / "autoencoder")
        diffusion_speed = train_throughput(top / "diffusion")
        figures = {"autoencoder_train_images_per_s": ae_speed, "diffusion_train_images_per_s": diffusion_speed,
                   "train_images_per_s": diffusion_speed if net is not None else ae_speed}
        if net is not None:
            figures.update(scale_factor=net.scale_factor.item(), sample_steps=cfg.steps or net.cfg.timesteps,
                           sample_eta=cfg.eta, sample_guidance=cfg.guidance if conditional else None)
        return figures

    params = sum(p.numel() for m in (ae, net) if m is not None for p in m.parameters())
    return evaluation.evaluate_checkpoint("LatentDiffusion", "diffusion", caps, cfg, state["config"], params=params,
                                          extra=extra)


def check(cfg: EvalConfig) -> None:
    evaluation.check_eval_config(cfg)
    try:
        steps = [int(s) for s in cfg.sweep.split(",")] if cfg.sweep else []
    except ValueError:
        raise ValueError(f"--sweep must be comma-separated integers, got {cfg.sweep!r}") from None
    if min([cfg.steps, cfg.ancestral_num, *steps]) < 0 or cfg.sweep_num < 2 or not 0 <= cfg.eta <= 1 \
            or cfg.guidance < 0:
        raise ValueError("--steps, --ancestral-num, --sweep must be >= 0, --sweep-num >= 2, --eta in [0, 1], "
                         "--guidance >= 0")


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
