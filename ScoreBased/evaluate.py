"""Evaluate a ScoreBased checkpoint (its EMA U-Net) with the shared harness, plus its exact likelihood through
the probability-flow ODE, and FID / seconds per image for several sampler settings.

    python evaluate.py --checkpoint runs/scorebased --num 2000                 # harness (PC, 50 steps) + bits/dim
    python evaluate.py --checkpoint runs/scorebased --sweep pc:100,em:200,ode:1e-3 --sweep-num 200

The harness scores --num samples of --sampler (the README's recommended setting): FID / KID / precision / recall /
IS with the real-vs-real floors, near-copies, sample images/s. This script adds:
  * bits_per_dim: -log p_0(x) of the first --bpd-num held-out test images, uniformly dequantised into [-1, 1)
    (shared.metrics.uniform_dequantize), from the probability-flow ODE (Eq. 39) with the Hutchinson-Skilling trace
    estimator (one Rademacher probe per image), RK45 at --bpd-rtol / --bpd-atol from t = 1e-5 to 1; converted to
    the 8-bit scale by shared.metrics.dequantized_bits_per_dim (an upper bound on the 8-bit NLL). bpd_images,
    bpd_nfe (function evaluations per batch of --bpd-batch) and bpd_seconds_per_image say what was computed.
With --sweep KIND:VALUE,...: no harness record; instead, for each setting, FID of --sweep-num samples against the
harness's --num training images, beside the real-vs-real FID of the same number of held-out images (small sets
bias FID upwards: compare rows of one N only), NFE and seconds per image; written to <run>/fid_vs_sampler.{json,md}.
KIND:VALUE is pc:STEPS (one Langevin corrector step per predictor step at --snr), pc0:STEPS (the reverse-diffusion
predictor alone), em:STEPS (Euler-Maruyama) or ode:TOL (RK45 with rtol = atol = TOL).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model import ode_likelihood, sample, score_fn, sde_of
from sample import RECOMMENDED, load_model
from shared import cli, evaluation, metrics
from shared.data import load_dataset, to_float
from shared.evaluation import Capabilities
from shared.features import classifier_extractor

KINDS = ("pc", "pc0", "em", "ode")


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a ScoreBased checkpoint (EMA weights)."""
    checkpoint: str = "runs/scorebased"  # run folder (its latest checkpoint) or checkpoint file
    sampler: str = RECOMMENDED["sampler"]  # sampler of the harness's samples: pc | em | ode
    steps: int = RECOMMENDED["steps"]  # pc / em steps of the harness's samples
    snr: float = RECOMMENDED["snr"]  # pc: Langevin signal-to-noise ratio
    rtol: float = RECOMMENDED["rtol"]  # ode sampler: RK45 relative tolerance
    atol: float = RECOMMENDED["atol"]  # ode sampler: RK45 absolute tolerance
    bpd_num: int = 20  # held-out images of the ODE likelihood (0 = none; minutes per image batch on a CPU: README)
    bpd_batch: int = 20  # images per ODE solve of the likelihood
    bpd_rtol: float = 1e-5  # likelihood ODE relative tolerance (paper: 1e-5)
    bpd_atol: float = 1e-5  # likelihood ODE absolute tolerance (paper: 1e-5)
    sweep: str = ""  # comma-separated KIND:VALUE settings (pc:100, pc0:100, em:200, ode:1e-3): FID per setting
    sweep_num: int = 200  # samples per setting of the sweep


def parse_sweep(text: str) -> list[tuple[str, float]]:
    settings = []
    for part in filter(None, text.split(",")):
        kind, _, value = part.partition(":")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if kind not in KINDS or number <= 0 or (kind != "ode" and number != int(number)):
            raise ValueError(f"--sweep settings are KIND:VALUE with KIND in {KINDS} (pc:100, ode:1e-3), got {part!r}")
        settings.append((kind, number))
    return settings


def batched_sampler(net, kind: str, steps: int, snr: float, rtol: float, atol: float, batch: int = 250,
                    nfes: list | None = None):
    """n, generator -> n samples, drawn `batch` at a time; appends each batch's NFE per image to nfes."""
    sampler, corrector = ("pc", 0) if kind == "pc0" else (kind, 1)

    def draw(n: int, gen: torch.Generator) -> torch.Tensor:
        out = []
        for i in range(0, n, batch):
            x, nfe = sample(net, min(batch, n - i), sampler, steps, snr, corrector, rtol, atol, generator=gen)
            out.append(x)
            if nfes is not None:
                nfes.append(nfe)
        return torch.cat(out)
    return draw


def likelihood_bits(net, images_uint8: torch.Tensor, cfg: EvalConfig) -> dict:
    """Bits/dim of the images (uint8) through the probability-flow ODE, with what it cost."""
    gen, sde = torch.Generator().manual_seed(cfg.seed), sde_of(net.cfg)
    score, nll, nfes = score_fn(net, sde), [], []
    start = time.perf_counter()
    for chunk in images_uint8.split(cfg.bpd_batch):
        x = metrics.uniform_dequantize(chunk, generator=gen)  # (B, C, H, W) in [-1, 1)
        nats, nfe = ode_likelihood(sde, score, x, cfg.bpd_rtol, cfg.bpd_atol, eps=1e-5, generator=gen)
        nll.append(nats)
        nfes.append(nfe)
    nll = torch.cat(nll)
    D = images_uint8[0].numel()
    per_image = torch.tensor([metrics.dequantized_bits_per_dim(v, D, 2 / 256) for v in nll.tolist()])
    return {"bits_per_dim": per_image.mean().item(), "bits_per_dim_se": (per_image.std() / len(nll) ** 0.5).item(),
            "bpd_images": len(nll), "bpd_nfe": sum(nfes) / len(nfes),
            "bpd_seconds_per_image": (time.perf_counter() - start) / len(nll), "bpd_rtol": cfg.bpd_rtol}


def fid_per_sampler(net, cfg: EvalConfig, train_config: dict, run: Path) -> list[dict]:
    """The sweep: a row per sampler setting with N, FID, the real-vs-real FID at N, NFE and seconds per image."""
    data_root = cfg.data_root or train_config.get("data_root") or None
    train = load_dataset(train_config["dataset"], data_root, train_config["image_size"], "train", seed=0)
    test = load_dataset(train_config["dataset"], data_root, train_config["image_size"], "test", seed=0)
    extractor = classifier_extractor(train, test, train_config["dataset"])
    ref = extractor(to_float(evaluation.subset(train, cfg.num, cfg.seed).images))[0]
    held = extractor(to_float(evaluation.subset(test, cfg.num, cfg.seed + 1).images))[0]
    rows = []
    for kind, value in parse_sweep(cfg.sweep):
        gen, nfes = torch.Generator().manual_seed(cfg.seed), []
        steps, tol = (int(value), cfg.rtol) if kind != "ode" else (cfg.steps, value)
        start = time.perf_counter()
        fake = batched_sampler(net, kind, steps, cfg.snr, tol, tol, nfes=nfes)(cfg.sweep_num, gen)
        seconds = (time.perf_counter() - start) / cfg.sweep_num
        rows.append({"sampler": kind, "setting": f"tol {value:g}" if kind == "ode" else f"{int(value)} steps",
                     "num": cfg.sweep_num, "nfe": sum(nfes) / len(nfes), "fid": metrics.fid(ref, extractor(fake)[0]),
                     "fid_real_at_num": metrics.fid(ref, held[:cfg.sweep_num]), "seconds_per_image": seconds})
        r = rows[-1]
        print(f"  {kind:4s} {r['setting']:>10s}: NFE {r['nfe']:6.1f}, FID {r['fid']:8.2f} (real-vs-real at this N "
              f"{r['fid_real_at_num']:.2f}), {seconds:.3f} s/image", flush=True)
    (run / "fid_vs_sampler.json").write_text(json.dumps(rows, indent=1))
    lines = ["| sampler | setting | images | NFE / image | FID | real-vs-real FID at that N | s / image |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['setting']} | {r['num']} | {r['nfe']:.0f} | {r['fid']:.2f} | "
              f"{r['fid_real_at_num']:.2f} | {r['seconds_per_image']:.3f} |" for r in rows]
    (run / "fid_vs_sampler.md").write_text("\n".join(lines) + "\n")
    return rows


def main(cfg: EvalConfig) -> dict:
    try:
        check(cfg)
    except ValueError as err:
        cli.fail(str(err))
    net, state = load_model(cfg.checkpoint, torch.device("cpu"))
    run = evaluation.run_dir_of(cfg.checkpoint)
    if cfg.sweep:
        return {"fid_vs_sampler": fid_per_sampler(net, cfg, state["config"], run)}
    nfes: list = []
    caps = Capabilities(sample=batched_sampler(net, cfg.sampler, cfg.steps, cfg.snr, cfg.rtol, cfg.atol, nfes=nfes))
    setting = f"tol {cfg.rtol:g}/{cfg.atol:g}" if cfg.sampler == "ode" else f"{cfg.steps} steps"
    extra = lambda record, ref, held: {"sampler": cfg.sampler, "sampler_setting": setting,
                                       "sample_nfe": sum(nfes) / max(len(nfes), 1), "sde": net.cfg.sde,
                                       **(likelihood_bits(net, held.images[:cfg.bpd_num], cfg) if cfg.bpd_num else {})}
    return evaluation.evaluate_checkpoint("ScoreBased", "diffusion", caps, cfg, state["config"],
                                          params=sum(p.numel() for p in net.parameters()), extra=extra)


def check(cfg: EvalConfig) -> None:
    evaluation.check_eval_config(cfg)
    parse_sweep(cfg.sweep)
    if cfg.sampler not in ("pc", "em", "ode") or cfg.steps <= 0 or cfg.bpd_num < 0 or cfg.bpd_batch <= 0:
        raise ValueError("--sampler must be pc, em or ode; --steps, --bpd-batch positive; --bpd-num >= 0")
    if min(cfg.snr, cfg.rtol, cfg.atol, cfg.bpd_rtol, cfg.bpd_atol) <= 0 or cfg.sweep_num < 2:
        raise ValueError("--snr and the tolerances must be positive, --sweep-num >= 2")


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
