"""Evaluate a ConditionalDiffusion checkpoint (its EMA U-Net) with the shared harness, and its guidance sweep.

    python evaluate.py --checkpoint runs/conditionaldiffusion --num 2000                 # harness at w = --guidance
    python evaluate.py --checkpoint runs/conditionaldiffusion --sweep 0,1,2,3,5 --sweep-num 500   # the trade-off

Guidance: eps~ = eps_uncond + w (eps_cond - eps_uncond); w = 0 unconditional, 1 conditional, > 1 guided.
The harness scores --num DDIM samples (--steps 20, --eta 0) at --guidance: FID / KID / precision / recall / IS
with their real-vs-real floors, near-copies, sample images/s, and the conditioning test of the harness
(shared.evaluation.conditional_quality): samples requested class by class, the share the dataset's classifier
assigns to the requested class, overall and per class (MNIST: the digit; shapes: the shape). The samples are
drawn class-balanced (labels 0, 1, ..., K-1, 0, 1, ...), and the conditioning test scores those same samples
(BalancedSampler), so a w costs --num samples, not twice that.
With --sweep W1,W2,...: no harness record; for each w, --sweep-num class-balanced samples: FID against the
harness's --num training images (beside the real-vs-real FID of as many held-out images: small sets bias FID
upwards, compare rows of one N only), the classifier accuracy of the requested class (overall and the worst
class) and seconds per image; written to <run>/guidance_sweep.{json,md,png} (the plot: FID against accuracy).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model import sample
from sample import RECOMMENDED_GUIDANCE, RECOMMENDED_STEPS, load_model
from shared import cli, dist as distributed, evaluation, metrics
from shared.data import load_dataset, to_float
from shared.evaluation import Capabilities
from shared.features import classifier_extractor


@dataclass
class EvalConfig(evaluation.EvalConfig):
    """Evaluate a ConditionalDiffusion checkpoint (EMA weights)."""
    checkpoint: str = "runs/conditionaldiffusion"  # run folder (its latest checkpoint) or checkpoint file
    guidance: float = RECOMMENDED_GUIDANCE  # w of the harness's samples (0 uncond, 1 cond, > 1 guided)
    steps: int = RECOMMENDED_STEPS  # DDIM steps of the samples (0 = ancestral, all T steps)
    eta: float = 0.0  # DDIM noise of the samples
    sweep: str = ""  # comma-separated guidance weights: the FID / class-accuracy sweep instead of the harness record
    sweep_num: int = 500  # samples per guidance weight of the sweep
    precision: str = "auto"  # the network's passes: fp32 | bf16 autocast | auto (bf16 where a probe says faster)


class BalancedSampler:
    """Samples at one guidance weight, drawn class-balanced, and the harness's class-by-class requests served
    from those same samples (the harness asks for labels arange(num) % K in chunks, in order, after `sample`)."""

    def __init__(self, net, guidance: float, steps: int, eta: float, precision: str = "fp32",
                 batch: int = 250) -> None:
        self.net, self.guidance, self.steps, self.eta, self.batch = net, guidance, steps, eta, batch
        self.precision = precision  # bf16: the U-Net's passes under autocast; x_t and the sampler's math stay fp32
        self.labels, self.images, self.served = torch.zeros(0, dtype=torch.long), torch.zeros(0), 0

    def sample_labels(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Samples (n, C, H, W) of the requested labels (n,), `batch` at a time."""
        with distributed.autocast(torch.device("cpu"), self.precision):
            return torch.cat([sample(self.net, y, self.guidance, self.steps, self.eta, generator=gen)[0].float()
                              for y in labels.split(self.batch)])

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        self.labels = torch.arange(n) % self.net.cfg.num_classes
        self.images, self.served = self.sample_labels(self.labels, gen), 0
        return self.images

    def sample_class(self, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        end = self.served + len(labels)
        if torch.equal(self.labels[self.served:end], labels):  # the next chunk of the balanced draw
            self.served = end
            return self.images[end - len(labels):end]
        return self.sample_labels(labels, gen)  # any other request: fresh samples


net_device = torch.device("cpu")  # evaluate.py samples on the CPU


def guidance_sweep(net, cfg: EvalConfig, train_config: dict, run: Path) -> list[dict]:
    """Rows of w, N, FID, real-vs-real FID at N, class accuracy (overall, worst class), seconds per image."""
    data_root = cfg.data_root or train_config.get("data_root") or None
    train = load_dataset(train_config["dataset"], data_root, train_config["image_size"], "train", seed=0)
    test = load_dataset(train_config["dataset"], data_root, train_config["image_size"], "test", seed=0)
    extractor = classifier_extractor(train, test, train_config["dataset"])
    ref = extractor(to_float(evaluation.subset(train, cfg.num, cfg.seed).images))[0]
    held = extractor(to_float(evaluation.subset(test, cfg.num, cfg.seed + 1).images))[0]
    rows = []
    for w in [float(s) for s in cfg.sweep.split(",")]:
        gen = torch.Generator().manual_seed(cfg.seed)
        sampler = BalancedSampler(net, w, cfg.steps, cfg.eta, distributed.resolve_precision(cfg.precision, net_device))
        start = time.perf_counter()
        fake = sampler.sample(cfg.sweep_num, gen)
        seconds = (time.perf_counter() - start) / cfg.sweep_num
        cond = evaluation.conditional_quality(extractor, sampler.sample_class, cfg.sweep_num, train.num_classes, gen)
        per_class = [a for a in cond["class_accuracy_per_class"] if not math.isnan(a)]
        rows.append({"guidance": w, "num": cfg.sweep_num, "fid": metrics.fid(ref, extractor(fake)[0]),
                     "fid_real_at_num": metrics.fid(ref, held[:cfg.sweep_num]),
                     "class_accuracy": cond["class_accuracy"], "worst_class_accuracy": min(per_class),
                     "class_accuracy_per_class": cond["class_accuracy_per_class"], "seconds_per_image": seconds,
                     "precision": sampler.precision})
        r = rows[-1]
        print(f"  w {w:4g}: FID {r['fid']:8.2f} (real-vs-real at N = {cfg.sweep_num}: {r['fid_real_at_num']:.2f}), "
              f"class accuracy {r['class_accuracy']:.3f} (worst class {r['worst_class_accuracy']:.3f}), "
              f"{seconds:.3f} s/image", flush=True)
    write_sweep(rows, run, train_config["dataset"])
    return rows


def write_sweep(rows: list[dict], run: Path, dataset: str) -> None:
    """guidance_sweep.json, .md (the table) and .png (FID against class accuracy, one point per w)."""
    (run / "guidance_sweep.json").write_text(json.dumps(rows, indent=1))
    lines = ["| w | images | FID | real-vs-real FID at that N | class accuracy | worst class | s / image |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['guidance']:g} | {r['num']} | {r['fid']:.2f} | {r['fid_real_at_num']:.2f} | "
              f"{r['class_accuracy']:.3f} | {r['worst_class_accuracy']:.3f} | {r['seconds_per_image']:.3f} |"
              for r in rows]
    (run / "guidance_sweep.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([r["class_accuracy"] for r in rows], [r["fid"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"w = {r['guidance']:g}", (r["class_accuracy"], r["fid"]), fontsize=8,
                    textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel="classifier accuracy of the requested class", ylabel="FID (classifier features)",
           title=f"ConditionalDiffusion on {dataset}: guidance trade-off ({rows[0]['num']} samples per w)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(run / "guidance_sweep.png", dpi=120)
    plt.close(fig)


def main(cfg: EvalConfig) -> dict:
    try:
        check(cfg)
    except ValueError as err:
        cli.fail(str(err))
    net, state = load_model(cfg.checkpoint, torch.device("cpu"))
    run = evaluation.run_dir_of(cfg.checkpoint)
    if cfg.sweep:
        return {"guidance_sweep": guidance_sweep(net, cfg, state["config"], run)}
    sampler = BalancedSampler(net, cfg.guidance, cfg.steps, cfg.eta,
                              distributed.resolve_precision(cfg.precision, net_device))
    caps = Capabilities(sample=sampler.sample, sample_class=sampler.sample_class)
    extra = lambda record, ref, held: {"guidance": cfg.guidance, "sample_steps": cfg.steps or net.cfg.timesteps,
                                       "sample_eta": cfg.eta, "sample_precision": sampler.precision}
    record = evaluation.evaluate_checkpoint("ConditionalDiffusion", "diffusion", caps, cfg, state["config"],
                                            params=sum(p.numel() for p in net.parameters()), extra=extra)
    names = state.get("classes") or [str(k) for k in range(net.cfg.num_classes)]
    print(f"  classifier accuracy of samples per requested class (w = {cfg.guidance:g}):")
    for name, acc in zip(names, record["class_accuracy_per_class"]):
        print(f"    {name:24s} {'-' if math.isnan(acc) else f'{acc:.3f}':>8}")
    return record


def check(cfg: EvalConfig) -> None:
    evaluation.check_eval_config(cfg)
    try:
        weights = [float(s) for s in cfg.sweep.split(",")] if cfg.sweep else []
    except ValueError:
        raise ValueError(f"--sweep must be comma-separated guidance weights, got {cfg.sweep!r}") from None
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision must be auto, fp32 or bf16, got {cfg.precision!r}")
    if min([cfg.guidance, cfg.steps, *weights]) < 0 or cfg.sweep_num < 10 or not 0 <= cfg.eta <= 1:
        raise ValueError("--guidance, --steps and --sweep weights must be >= 0, --sweep-num >= 10, --eta in [0, 1]")


if __name__ == "__main__":
    evaluation.cli_main(EvalConfig, main)
