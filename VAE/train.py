"""Train a VAE on the embedded MNIST copy by default.  `python train.py --help` lists every flag.

    python train.py                                   # embedded MNIST, 32x32, Bernoulli decoder: about 10 minutes on 2 cores
    python train.py --image-size 28                   # MNIST at its native size
    python train.py --dataset shapes                  # RGB: the discretised logistic decoder (--likelihood auto)
    python train.py --likelihood gaussian --gaussian-variance fixed --gaussian-std 0.1
    python train.py --kl-warmup 2000                  # beta on the KL raised linearly 0 -> 1 over 2000 steps
    python train.py --resume auto                     # continue the run in --out
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from model import LIKELIHOODS, VAE, Config, negative_elbo, observe, reconstruct, sample
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, load_dataset, to_float


# Adam's rate by likelihood when --lr is not given: 2e-3 reached a given held-out MNIST NLL in about half the time
# of 1e-3; the logistic's per-pixel scales make its loss much sharper, and at 2e-3 the shapes run blew up (the
# reconstruction term jumped 5x at step ~1,700, the KL 50x) where 5e-4 trains smoothly (EXPERIMENTS.md).
DEFAULT_LR = {"bernoulli": 2e-3, "logistic": 5e-4, "gaussian": 5e-4}
GREY_DATASETS = ("mnist", "fashion-mnist")  # what --likelihood auto will see as 1-channel before any data is read


@dataclass
class TrainConfig(cli.RunConfig):
    """Train a VAE (Kingma & Welling 2013). Core flags come from shared.cli; the VAE's own follow."""
    steps: int = 7000  # optimizer steps (7000 x 128 images: about 10 minutes on 2 cores, see README)
    out: str = "runs/vae"  # run folder
    batch_size: int = 128  # images per step per process
    lr: float = DEFAULT_LR["bernoulli"]  # Adam learning rate; not given: 2e-3 for Bernoulli, 5e-4 for RGB (EXPERIMENTS.md)
    z_dim: int = Config.z_dim  # latent dimension
    width: int = Config.width  # channels of the first conv, doubled at each further stride-2 conv
    hidden: int = Config.hidden  # units of the fully connected layer next to the latent
    likelihood: str = "auto"  # auto (bernoulli for 1 channel, logistic for RGB) | bernoulli | gaussian | logistic
    gaussian_variance: str = Config.gaussian_variance  # learned (per pixel) | fixed (--gaussian-std)
    gaussian_std: float = Config.gaussian_std  # s of the fixed-variance Gaussian on the [-1, 1] scale
    logistic_scale: str = Config.logistic_scale  # channel (one learned log s per channel) | pixel (from the decoder)
    grad_clip: float = 0.0  # clip the gradient norm at this value (0 = off; the norm is logged either way)
    kl_warmup: int = 0  # steps over which beta on the KL rises linearly 0 -> 1 (0 = beta 1 throughout, the ELBO)
    channels_last: bool = True  # NHWC memory format for the convolutions (faster on CPU)


def resolve_likelihood(name: str, channels: int) -> str:
    """--likelihood auto: Bernoulli for 1-channel (grey / binary) data, the discretised logistic for RGB."""
    if name == "auto":
        return "bernoulli" if channels == 1 else "logistic"
    return name


def apply_likelihood_defaults(cfg: TrainConfig, given: frozenset[str]) -> TrainConfig:
    """cli.parse's `defaults`: --lr by likelihood when not given (auto: Bernoulli for MNIST / Fashion-MNIST, the
    logistic's rate for the RGB sets and folders)."""
    if "lr" in given or cfg.likelihood not in ("auto", *LIKELIHOODS):
        return cfg
    name = cfg.likelihood if cfg.likelihood != "auto" else \
        "bernoulli" if cfg.dataset in GREY_DATASETS else "logistic"
    return dataclasses.replace(cfg, lr=DEFAULT_LR[name])


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py and evaluate.py)."""
    return Config(image_size=cfg.image_size, channels=channels, z_dim=cfg.z_dim, width=cfg.width,
                  hidden=cfg.hidden, likelihood=resolve_likelihood(cfg.likelihood, channels),
                  gaussian_variance=cfg.gaussian_variance, gaussian_std=cfg.gaussian_std,
                  logistic_scale=cfg.logistic_scale)


def check(cfg: TrainConfig) -> None:
    """VAE-specific flag checks (ValueError -> one-line CLI error)."""
    if cfg.likelihood not in ("auto", *LIKELIHOODS):
        raise ValueError(f"--likelihood must be one of auto, {', '.join(LIKELIHOODS)}, got {cfg.likelihood!r}")
    model_config(cfg, channels=1)  # validates image size, likelihood options
    if min(cfg.z_dim, cfg.width, cfg.hidden) <= 0 or cfg.kl_warmup < 0 or cfg.grad_clip < 0:
        raise ValueError("--z-dim, --width and --hidden must be positive, --kl-warmup and --grad-clip >= 0")


def kl_metrics(kl: torch.Tensor, mu: torch.Tensor) -> dict[str, float]:
    """The batch's mean KL of each latent dimension (kl_dim/00 ...) and the active dimensions: those whose posterior
    mean varies across the batch, Var_x(E_q[z_u]) > 0.01 (Burda et al.'s criterion on one batch)."""
    per_dim = kl.detach().float().mean(0)
    active = (mu.detach().float().var(0) > 0.01).sum() if mu.shape[0] > 1 else torch.tensor(0)
    return {"active_dims": float(active), **{f"kl_dim/{j:02d}": v for j, v in enumerate(per_dim.tolist())}}


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg = model_config(cfg, data.channels)
    torch.manual_seed(cfg.seed)
    model = VAE(mcfg).to(device, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own binarisation / dequantisation and eps
    step = training.resume(cfg, env, "VAE", {"vae": model}, {"opt": opt}, batches)
    fixed_z = torch.randn(64, mcfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    spread = torch.linspace(0, len(data) - 1, 32).long()  # spread over the set (the embedded MNIST is sorted by class)
    shown = to_float(data.images[spread]).to(device)  # the same 32 training images in every reconstruction grid

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"VAE {len(data)} {cfg.dataset} images, {mcfg.likelihood} likelihood, z_dim {mcfg.z_dim}, "
                f"{precision}, {device}, {env.world_size} process(es), {n_params(model):,} parameters")
    saver = training.Saver(cfg, env, "VAE", mcfg, {"vae": model}, {"opt": opt}, batches, log)
    guard = training.NonFiniteGuard(env, log)
    model_ddp = distributed.wrap(model, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x_in, x = observe(next(batches)[0].to(device), mcfg.likelihood)  # a fresh binarisation each time
            x_in = x_in.contiguous(memory_format=fmt)
            beta = min(1.0, (step + 1) / cfg.kl_warmup) if cfg.kl_warmup else 1.0

            # -ELBO (Eq. 10, one z per image): -log p(x|z) with z = mu + sigma * eps, plus the analytic KL.
            with distributed.autocast(device, precision):
                rec, kl, mu = model_ddp(x_in, x)  # (B,), (B, D_z), (B, D_z), all fp32
            loss = negative_elbo(rec, kl, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            if guard.finite(step, loss=loss):
                opt.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {}
            if write:
                kl_image = kl.detach().sum(1).mean().item()
                metrics = {"loss": loss.item(), "grad_norm": grad_norm.item(), "rec": -rec.detach().mean().item(), "kl": kl_image,
                           "nelbo": -rec.detach().mean().item() + kl_image,
                           **({"beta": beta} if cfg.kl_warmup else {}), **kl_metrics(kl, mu)}
            log.step(step, metrics, x.shape[0] * env.world_size, write)
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                model.eval()  # no dropout / BatchNorm here, and neither call draws from the RNG
                log.images(step, sample(model, 64, z=fixed_z))
                recon = reconstruct(model, shown.contiguous(memory_format=fmt))
                pairs = torch.stack([shown.view(4, 8, *shown.shape[1:]), recon.view(4, 8, *shown.shape[1:])], 1)
                log.images(step, pairs.flatten(0, 2), tag="reconstructions", nrow=8)  # rows: data, reconstruction
                model.train()
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del model_ddp  # the DDP wrapper must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check, defaults=apply_likelihood_defaults))
