"""Train CycleGAN on the embedded shapes pair (filled <-> outline) by default.  `python train.py --help` lists every flag.

    python train.py                                   # shapes filled <-> outline, 32x32, 10 minutes on 2 cores
    python train.py --dataset mnist                   # MNIST <-> its colour-inverted twin (--pair rotate: 90 deg)
    python train.py --dataset folder:datasets/horse2zebra --image-size 128 --g-width 64 --n-blocks 6 \\
        --d-width 64 --batch-size 1 --minutes 0 --steps 266800   # the paper's 128x128 setting (200 epochs of 1,334)
    python train.py --resume auto                     # continue the run in --out
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from domains import Domains, load_domains, resolve_pair
from model import (Config, Generator, ImagePool, PatchDiscriminator, cycle_loss, d_layers_for, identity_loss,
                   lr_factor, lsgan_d_loss, lsgan_g_loss, receptive_field)
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, ImageData, to_float


@dataclass
class TrainConfig(cli.RunConfig):
    """Train CycleGAN (Zhu et al. 2017). Core flags come from shared.cli; CycleGAN's own follow."""
    dataset: str = "shapes"  # shapes (filled <-> outline) | mnist (see --pair) | folder:PATH (trainA/ trainB/ ...)
    pair: str = "auto"  # mnist: invert | rotate (auto = invert); shapes: outline; folder: from PATH/trainB
    steps: int = 100_000_000  # steps (one G update + one D update each); the default run is bound by --minutes
    minutes: float = 10.0  # wall-clock budget (the default run: 10 minutes; 0 = until --steps)
    batch_size: int = 8  # image pairs (one A, one B) per step per process (paper: 1)
    out: str = "runs/cyclegan"  # run folder
    lr: float = 1e-3  # Adam lr of G and D, held for the first half, then linear to 0 (paper: 2e-4 at batch 1)
    beta1: float = 0.5  # Adam beta1 (paper: 0.5)
    beta2: float = 0.999  # Adam beta2 (paper: 0.999)
    decay_start: float = 0.5  # fraction of training (of --steps, or of --minutes if that ends first) where lr decay starts
    lambda_cyc: float = 10.0  # cycle-consistency weight lambda (paper: 10)
    lambda_idt: float = 0.5  # identity loss weight, as a fraction of lambda_cyc (paper's code: 0.5; 0 = off)
    pool_size: int = 50  # generated images each D's history pool holds (paper: 50; 0 = no pool)
    g_width: int = 16  # filters of G's first layer (paper: 64)
    n_blocks: int = 3  # residual blocks in G (paper: 6 at 128x128, 9 at 256x256)
    d_width: int = 32  # filters of D's first layer (paper: 64)
    d_layers: int = 0  # PatchGAN stride-2 layers (0 = by image size: 1 at 32x32, 2 at 64, 3 = 70x70 from 128)
    sample_every: int = 250  # write a translation panel (fixed images) every N steps


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py and evaluate.py)."""
    return Config(image_size=cfg.image_size, channels=channels, g_width=cfg.g_width, n_blocks=cfg.n_blocks,
                  d_width=cfg.d_width, d_layers=cfg.d_layers or d_layers_for(cfg.image_size))


def check(cfg: TrainConfig) -> None:
    """CycleGAN-specific flag checks (ValueError -> one-line CLI error)."""
    model_config(cfg, channels=3)  # validates the sizes
    resolve_pair(cfg.dataset, cfg.pair)
    if cfg.lambda_cyc < 0 or cfg.lambda_idt < 0 or cfg.pool_size < 0:
        raise ValueError("--lambda-cyc, --lambda-idt and --pool-size must be >= 0")
    if not 0 <= cfg.decay_start < 1:
        raise ValueError(f"--decay-start must be in [0, 1), got {cfg.decay_start}")


class PairedBatches:
    """A and B batches from two independently shuffled orders (seeds seed and seed + 1): the pairing of the
    built-in domains is never seen. state_dict() holds both positions, for exact resume."""

    def __init__(self, domains: Domains, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.a = BatchIterator(domains.a, batch_size, seed=seed, rank=rank, world_size=world_size)
        self.b = BatchIterator(domains.b, batch_size, seed=seed + 1, rank=rank, world_size=world_size)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self.a)[0], next(self.b)[0]  # (B, C, H, W) uint8 each

    def state_dict(self) -> dict:
        return {"a": self.a.state_dict(), "b": self.b.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.a.load_state_dict(d["a"])
        self.b.load_state_dict(d["b"])


def requires_grad(modules: list[nn.Module], flag: bool) -> None:
    """Freeze (False) or unfreeze D while G's loss flows through it (the official code's set_requires_grad)."""
    for module in modules:
        module.requires_grad_(flag)


@torch.no_grad()
def panel(G_AB: Generator, G_BA: Generator, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows of [a | G_AB(a) | G_BA(G_AB(a)) | b | G_BA(b) | G_AB(G_BA(b))]: (6n, C, H, W), for a 6-column grid."""
    fake_b, fake_a = G_AB(a), G_BA(b)
    columns = [a, fake_b, G_BA(fake_b), b, fake_a, G_AB(fake_a)]
    return torch.stack(columns, dim=1).flatten(0, 1)  # (n, 6, C, H, W) -> (6n, C, H, W)


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    domains = load_domains(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.seed, cfg.pair)
    mcfg = model_config(cfg, domains.channels)
    torch.manual_seed(cfg.seed)
    G_AB, G_BA = Generator(mcfg).to(device), Generator(mcfg).to(device)  # the paper's G: A -> B and F: B -> A
    D_A, D_B = PatchDiscriminator(mcfg).to(device), PatchDiscriminator(mcfg).to(device)  # D_X, D_Y
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam([*G_AB.parameters(), *G_BA.parameters()], lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam([*D_A.parameters(), *D_B.parameters()], lr=cfg.lr, betas=betas)
    batches = PairedBatches(domains, cfg.batch_size, cfg.seed, env.rank, env.world_size)
    pool_a, pool_b = (ImagePool(cfg.pool_size, seed=cfg.seed + 1000 * env.rank + i) for i in (1, 2))
    modules, optimizers = {"G_AB": G_AB, "G_BA": G_BA, "D_A": D_A, "D_B": D_B}, {"opt_g": opt_g, "opt_d": opt_d}
    saved = {"pools": None, "train_seconds": 0.0}  # restored from the checkpoint on resume
    step = training.resume(cfg, env, "CycleGAN", modules, optimizers, batches, restore=saved)
    if saved["pools"] is not None and len(saved["pools"]) == env.world_size:
        pool_a.load_state_dict(saved["pools"][env.rank][0], device)
        pool_b.load_state_dict(saved["pools"][env.rank][1], device)
    fixed_a, fixed_b = (to_float(d.images[:8]).to(device) for d in (domains.a, domains.b))

    data = ImageData(domains.a.images, domains.a.labels, domains.a.classes, source=domains.source)  # for config.json
    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"CycleGAN {len(domains.a)} + {len(domains.b)} {cfg.dataset} images ({' <-> '.join(domains.names)}), "
                f"{precision}, {device}, {env.world_size} process(es), G {n_params(G_AB):,} x 2 / "
                f"D {n_params(D_A):,} x 2 parameters, PatchGAN receptive field {receptive_field(mcfg.d_layers)} px")
    saver = training.Saver(cfg, env, "CycleGAN", mcfg, modules, optimizers, batches, log, extra=lambda: {
        "pools": distributed.gather_objects([pool_a.state_dict(), pool_b.state_dict()], env),
        "train_seconds": saved["train_seconds"] + stop.elapsed})
    guard = training.NonFiniteGuard(env, log)
    G_AB_ddp, G_BA_ddp = distributed.wrap(G_AB, env), distributed.wrap(G_BA, env)
    D_A_ddp, D_B_ddp = distributed.wrap(D_A, env), distributed.wrap(D_B, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            a, b = (to_float(x.to(device)) for x in next(batches))  # (B, C, H, W) in [-1, 1] each, unpaired
            progress = step / cfg.steps  # lr: constant, then linear to 0 by the end of --steps or --minutes
            if cfg.minutes > 0:
                seconds = distributed.all_max([saved["train_seconds"] + stop.elapsed], env)[0]  # ranks agree
                progress = max(progress, seconds / (60 * cfg.minutes))
            lr = cfg.lr * lr_factor(progress, cfg.decay_start)
            for group in (*opt_g.param_groups, *opt_d.param_groups):
                group["lr"] = lr

            # G step (Eq. 3): L_GAN(G_AB, D_B) + L_GAN(G_BA, D_A) + lambda L_cyc + 0.5 lambda L_idt, D frozen.
            requires_grad([D_A, D_B], False)
            with distributed.autocast(device, precision):
                fake_b, fake_a = G_AB_ddp(a), G_BA_ddp(b)
                rec_a, rec_b = G_BA_ddp(fake_b), G_AB_ddp(fake_a)  # a -> b -> a and b -> a -> b
                idt_a, idt_b = (G_BA_ddp(a), G_AB_ddp(b)) if cfg.lambda_idt > 0 else (a, b)
                scores_fake_b, scores_fake_a = D_B(fake_b), D_A(fake_a)  # (B, 1, h, w) patch scores
            loss_gan = lsgan_g_loss(scores_fake_b) + lsgan_g_loss(scores_fake_a)
            loss_cyc = cycle_loss(a, rec_a, b, rec_b)
            loss_idt = identity_loss(a, idt_a, b, idt_b)
            loss_g = loss_gan + cfg.lambda_cyc * loss_cyc + cfg.lambda_idt * cfg.lambda_cyc * loss_idt
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            g_ok = guard.finite(step, loss_g=loss_g)
            if g_ok:
                opt_g.step()
            requires_grad([D_A, D_B], True)

            # D step: least squares on real images and on fakes drawn from the history pools (never a nan fake).
            pooled_b, pooled_a = (pool_b.query(fake_b), pool_a.query(fake_a)) if g_ok else (fake_b.detach(),
                                                                                            fake_a.detach())
            with distributed.autocast(device, precision):
                real_b, old_b = D_B_ddp(b), D_B_ddp(pooled_b)
                real_a, old_a = D_A_ddp(a), D_A_ddp(pooled_a)
            loss_d_b, loss_d_a = lsgan_d_loss(real_b, old_b), lsgan_d_loss(real_a, old_a)
            opt_d.zero_grad(set_to_none=True)
            (loss_d_a + loss_d_b).backward()
            if guard.finite(step, loss_d=loss_d_a + loss_d_b):
                opt_d.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss_g": loss_g.item(), "loss_gan": loss_gan.item(), "loss_cyc": loss_cyc.item(),
                       "loss_idt": loss_idt.item(), "loss_d_a": loss_d_a.item(), "loss_d_b": loss_d_b.item(),
                       "d_b_real": real_b.float().mean().item(), "d_b_fake": scores_fake_b.float().mean().item(),
                       "lr": lr} if write else {}
            log.step(step, metrics, 2 * a.shape[0] * env.world_size, write)  # images: one A and one B per pair
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                log.images(step, panel(G_AB, G_BA, fixed_a, fixed_b), nrow=6)
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del G_AB_ddp, G_BA_ddp, D_A_ddp, D_B_ddp  # DDP wrappers must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
