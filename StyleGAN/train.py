"""Train StyleGAN2 on the embedded MNIST copy by default.  `python train.py --help` lists every flag.

    python train.py                                   # embedded MNIST, 32x32, a 10-minute run (--minutes 10)
    python train.py --dataset shapes                  # the embedded shapes dataset (RGB)
    python train.py --pl-weight 2                     # with path-length regularisation (lazy, every 4 G steps)
    python train.py --g-width 512 --d-width 512 --z-dim 512 --w-dim 512 --minutes 0 --steps 100000  # paper's size
    python train.py --resume auto                     # continue the run in --out
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)

One step = one D update on a real batch and G(z) (z mixed with a second latent with probability --mixing), the
lazy R1 update of D every --r1-every steps, one G update (non-saturating, through the just-updated D), the lazy
path-length update of G every --pl-every steps (if --pl-weight > 0), and the EMA of G, which samples.
"""
# Adapted from DCGAN/train.py: the same shared plumbing; StyleGAN2's lazy regularisers, style mixing and G's EMA.
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from model import (Config, Discriminator, Generator, discriminator_loss, ema_beta, ema_update, generator_loss,
                   mixing_cutoff, path_length_penalty, r1_penalty, sample)
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, load_dataset, to_float


@dataclass
class TrainConfig(cli.RunConfig):
    """Train StyleGAN2 (Karras et al. 2020). Core flags come from shared.cli; StyleGAN's own follow."""
    steps: int = 100_000_000  # steps (one D + one G update each); the default run is bound by --minutes instead
    minutes: float = 10.0  # wall-clock budget (the default run: 10 minutes, README; 0 = until --steps)
    out: str = "runs/stylegan"  # run folder
    batch_size: int = 32  # images per step per process (paper: 32 at 1024^2 on 8 GPUs)
    lr: float = 2e-3  # Adam learning rate of G and D (paper: 0.002)
    beta1: float = 0.0  # Adam beta1 (paper: 0)
    beta2: float = 0.99  # Adam beta2 (paper: 0.99)
    z_dim: int = Config.z_dim  # latent z dimension (paper: 512)
    w_dim: int = Config.w_dim  # intermediate latent w dimension (paper: 512)
    mapping_layers: int = 2  # mapping network depth (paper: 8; 8 collapsed to one digit in 4-minute CPU runs)
    mapping_lr_mul: float = Config.mapping_lr_mul  # mapping network learning-rate multiplier (paper: 0.01)
    g_width: int = 32  # G channels per resolution up to 64x64 (paper: 512; 32 trains 1.6x the images of 64 here)
    d_width: int = 32  # D channels per resolution up to 64x64 (paper: 512)
    mbstd_group: int = Config.mbstd_group  # minibatch-stddev group size (paper: 4; StyleGAN2-ADA CIFAR-10: 32)
    r1_gamma: float = 0.01  # R1 weight gamma (0 = off; StyleGAN2-ADA CIFAR-10: 0.01, FFHQ-1024: 10)
    r1_every: int = 16  # lazy R1: a D step on R1 * r1_every every N steps (paper: 16)
    pl_weight: float = 0.0  # path-length regularisation weight (0 = off; paper: 2)
    pl_every: int = 4  # lazy path-length: a G step on PL * pl_every every N steps (paper: 4)
    pl_batch_shrink: int = 2  # the PL step uses batch / this many samples (official code: 2)
    mixing: float = 0.9  # style-mixing probability (paper: 0.9; 0 = off)
    ema_kimg: float = 10.0  # half-life of G's EMA in thousands of images (official: 10)
    ema_rampup: float = 0.05  # EMA half-life <= this x images seen, for short runs (StyleGAN2-ADA: 0.05; 0 = off)
    sample_every: int = 100  # write a sample grid (EMA G, fixed z and noise) every N steps
    ckpt_every: int = 500  # write a checkpoint every N steps (and always at the end)


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py)."""
    return Config(image_size=cfg.image_size, channels=channels, z_dim=cfg.z_dim, w_dim=cfg.w_dim,
                  mapping_layers=cfg.mapping_layers, mapping_lr_mul=cfg.mapping_lr_mul,
                  g_width=cfg.g_width, d_width=cfg.d_width, mbstd_group=cfg.mbstd_group)


def check(cfg: TrainConfig) -> None:
    """StyleGAN-specific flag checks (ValueError -> one-line CLI error)."""
    model_config(cfg, channels=1)  # validates image_size
    if min(cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.g_width, cfg.d_width, cfg.mbstd_group) <= 0 or not cfg.mapping_lr_mul > 0:
        raise ValueError("--z-dim, --w-dim, --mapping-layers, --g-width, --d-width, --mbstd-group, --mapping-lr-mul must be "
                         "positive")
    if not (cfg.r1_gamma >= 0 and cfg.pl_weight >= 0) or min(cfg.r1_every, cfg.pl_every, cfg.pl_batch_shrink) < 1:
        raise ValueError("--r1-gamma and --pl-weight must be >= 0; --r1-every, --pl-every, --pl-batch-shrink >= 1")
    if not 0 <= cfg.mixing <= 1 or not cfg.ema_kimg > 0 or cfg.ema_rampup < 0:
        raise ValueError("--mixing must be in [0, 1], --ema-kimg > 0 and --ema-rampup >= 0")


def lazy_adam(params, cfg: TrainConfig, every: int, on: bool) -> torch.optim.Adam:
    """Adam for a network regularised every `every` steps in a step of its own: lr and betas scaled by
    c = every / (every + 1), so k + 1 updates per k minibatches behave like k (StyleGAN2 App. B)."""
    c = every / (every + 1) if on else 1.0
    return torch.optim.Adam(params, lr=cfg.lr * c, betas=(cfg.beta1 ** c, cfg.beta2 ** c))


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg = model_config(cfg, data.channels)
    torch.manual_seed(cfg.seed)
    G, D = Generator(mcfg).to(device), Discriminator(mcfg).to(device)
    G_ema = copy.deepcopy(G).requires_grad_(False).eval()  # what samples, sample.py and evaluate.py use
    r1_on, pl_on = cfg.r1_gamma > 0, cfg.pl_weight > 0
    opt_g, opt_d = lazy_adam(G.parameters(), cfg, cfg.pl_every, pl_on), lazy_adam(D.parameters(), cfg, cfg.r1_every, r1_on)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own z, mixing cutoffs and noise
    modules, optimizers = {"G": G, "D": D, "G_ema": G_ema}, {"opt_g": opt_g, "opt_d": opt_d}
    saved = {"pl_mean": torch.zeros((), device=device)}  # the running mean a of ||J^T y||, if resuming
    step = training.resume(cfg, env, "StyleGAN", modules, optimizers, batches, restore=saved)
    pl_mean = saved["pl_mean"].to(device).clone()
    fixed_z = torch.randn(64, mcfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"StyleGAN2 {len(data)} {cfg.dataset} images, {precision}, {device}, {env.world_size} process(es), "
                f"G {n_params(G):,} / D {n_params(D):,} parameters, {mcfg.num_ws} style inputs")
    saver = training.Saver(cfg, env, "StyleGAN", mcfg, modules, optimizers, batches, log,
                           extra=lambda: {"pl_mean": pl_mean})
    guard = training.NonFiniteGuard(env, log)
    r1 = pl = None  # the last lazy penalties computed (tensors), for the log
    G_ddp, D_ddp = distributed.wrap(G, env), distributed.wrap(D, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x = to_float(next(batches)[0].to(device))  # (B, C, H, W) in [-1, 1]
            z, z_mix = torch.randn(2, x.shape[0], mcfg.z_dim, device=device)
            cutoff = mixing_cutoff(mcfg.num_ws, cfg.mixing)  # style mixing: layers >= cutoff take f(z_mix)

            # D step: descend softplus(D(G(z))) + softplus(-D(x)); G(z) is kept for the G step, detached here.
            with distributed.autocast(device, precision):
                fake = G_ddp(z, z_mix, cutoff)
                real_logits, fake_logits = D_ddp(x), D_ddp(fake.detach())
            loss_d = discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            if guard.finite(step, loss_d=loss_d):
                opt_d.step()

            if r1_on and step % cfg.r1_every == 0:  # lazy R1: its own D step, on r1_every * R1
                x_r = x.detach().requires_grad_(True)
                with distributed.autocast(device, precision):
                    logits = D_ddp(x_r)
                r1 = r1_penalty(logits, x_r, cfg.r1_gamma)
                opt_d.zero_grad(set_to_none=True)
                (r1 * cfg.r1_every + 0 * logits.sum()).backward()  # 0 * logits: D's last bias joins (DDP)
                if guard.finite(step, r1=r1):
                    opt_d.step()

            # G step: non-saturating, descend softplus(-D(G(z))) through the just-updated (frozen) D.
            D.requires_grad_(False)
            with distributed.autocast(device, precision):
                gen_logits = D(fake)
            loss_g = generator_loss(gen_logits)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            if guard.finite(step, loss_g=loss_g):
                opt_g.step()
            D.requires_grad_(True)

            if pl_on and step % cfg.pl_every == 0:  # lazy path-length regularisation: its own G step
                n = max(1, x.shape[0] // cfg.pl_batch_shrink)
                z_pl, z_pl_mix = torch.randn(2, n, mcfg.z_dim, device=device)
                with distributed.autocast(device, precision):
                    images, ws = G_ddp(z_pl, z_pl_mix, mixing_cutoff(mcfg.num_ws, cfg.mixing), return_ws=True)
                pl, _ = path_length_penalty(images, ws, pl_mean)
                opt_g.zero_grad(set_to_none=True)
                (pl * cfg.pl_weight * cfg.pl_every + 0 * images.float().sum()).backward()
                if guard.finite(step, pl=pl):
                    opt_g.step()
            step += 1
            beta = ema_beta(x.shape[0] * env.world_size, step * x.shape[0] * env.world_size, cfg.ema_kimg,
                            cfg.ema_rampup)
            ema_update(G_ema, G, beta)

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "ema_beta": beta,
                       "d_real": torch.sigmoid(real_logits).mean().item(),
                       "d_fake": torch.sigmoid(fake_logits).mean().item()} if write else {}
            if write and r1 is not None:  # the penalty of the last step that applied it
                metrics["r1"] = r1.item()
            if write and pl is not None:
                metrics.update(pl=pl.item(), pl_mean=pl_mean.item())
            log.step(step, metrics, x.shape[0] * env.world_size, write)
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                log.images(step, sample(G_ema, 64, z=fixed_z, noise_mode="const"))
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del G_ddp, D_ddp  # DDP wrappers must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
