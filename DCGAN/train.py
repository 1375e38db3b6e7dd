"""Train DCGAN on the embedded MNIST copy by default.  `python train.py --help` lists every flag.

    python train.py                                   # embedded MNIST, 32x32, 3000 steps: a few minutes on 2 cores
    python train.py --dataset shapes                  # the embedded shapes dataset
    python train.py --r1 1 --r1-every 4               # with the lazy R1 penalty on D
    python train.py --image-size 64 --g-width 64 --d-width 64 --steps 20000   # the paper's 64x64 network
    python train.py --resume auto                     # continue the run in --out
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from model import Config, Discriminator, Generator, discriminator_loss, generator_loss, r1_penalty, sample
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, load_dataset, to_float


@dataclass
class TrainConfig(cli.RunConfig):
    """Train DCGAN (Radford et al. 2016). Core flags come from shared.cli; DCGAN's own follow."""
    steps: int = 3000  # steps; one step = one D update + one G update
    out: str = "runs/dcgan"  # run folder
    lr: float = 2e-4  # Adam learning rate of G and D (paper: 2e-4)
    beta1: float = 0.5  # Adam beta1 (paper: 0.5; 0.9 oscillates)
    beta2: float = 0.999  # Adam beta2
    z_dim: int = Config.z_dim  # latent dimension
    g_width: int = 32  # G channels before the output layer (paper's ngf: 64; 32 trains ~3x faster on CPU)
    d_width: int = 32  # D channels after the input layer (paper's ndf: 64)
    channels_last: bool = True  # NHWC memory format for the convolutions (faster on CPU, see README)
    r1: float = 0.0  # R1 penalty weight gamma: gamma/2 E||grad_x D(x)||^2 on real images added to D's loss (0 = off)
    r1_every: int = 1  # lazy R1: add the penalty, times K, on every K-th D step only (1 = every step, as in the paper)


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py)."""
    return Config(image_size=cfg.image_size, channels=channels, z_dim=cfg.z_dim,
                  g_width=cfg.g_width, d_width=cfg.d_width)


def check(cfg: TrainConfig) -> None:
    """DCGAN-specific flag checks (ValueError -> one-line CLI error)."""
    model_config(cfg, channels=3)  # validates image_size
    if min(cfg.z_dim, cfg.g_width, cfg.d_width) <= 0:
        raise ValueError("--z-dim, --g-width and --d-width must be positive")
    if cfg.r1 < 0 or cfg.r1_every < 1:
        raise ValueError(f"--r1 must be >= 0 and --r1-every >= 1, got {cfg.r1} and {cfg.r1_every}")


class CollapseWatch:
    """Warns when D has won outright, a failure that ends long GAN runs (the folder's README, Known limits).

    update() returns a warning, once per episode, when every D(G(z)) logged over the last `span` steps is below
    `threshold`. The defaults come from DCGAN's measured shapes and MNIST runs (DCGAN/EXPERIMENTS.md): in its
    10-minute runs and the first 10,000 steps of its 45-minute shapes run, every 500-step stretch logged a D(G(z))
    of 0.06 or more; that 45-minute run logged none above 0.01 after step 10,450 and G drew one image for every z
    by step 12,500. Replayed through this class, its metrics.jsonl warns at step 10,950.
    """

    def __init__(self, start_step: int, threshold: float = 0.01, span: int = 500) -> None:
        self.threshold, self.span = threshold, span
        self.last_high = start_step  # last step with D(G(z)) >= threshold (or the first step of this process)
        self.warned = False

    def update(self, step: int, d_fake: float) -> str | None:
        if d_fake >= self.threshold:
            self.last_high, self.warned = step, False
            return None
        if self.warned or step - self.last_high < self.span:
            return None
        self.warned = True
        return (f"warning: D(G(z)) has stayed below {self.threshold} since step {self.last_high}: D is winning "
                f"outright and G usually collapses to one image soon after; the periodic checkpoints "
                f"(checkpoints/step_*.pt) from before step {self.last_high} hold G before it (README, Known limits)")


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg = model_config(cfg, data.channels)
    torch.manual_seed(cfg.seed)
    G, D = Generator(mcfg).to(device, memory_format=fmt), Discriminator(mcfg).to(device, memory_format=fmt)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own z
    modules, optimizers = {"G": G, "D": D}, {"opt_g": opt_g, "opt_d": opt_d}
    step = training.resume(cfg, env, "DCGAN", modules, optimizers, batches)
    fixed_z = torch.randn(64, mcfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"DCGAN {len(data)} {cfg.dataset} images, {precision}, {device}, {env.world_size} process(es), "
                f"G {n_params(G):,} / D {n_params(D):,} parameters")
    saver = training.Saver(cfg, env, "DCGAN", mcfg, modules, optimizers, batches, log)
    guard, watch = training.NonFiniteGuard(env, log), CollapseWatch(step)
    r1 = None  # the last R1 penalty computed (a tensor), for the log
    G_ddp, D_ddp = distributed.wrap(G, env), distributed.wrap(D, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x = to_float(next(batches)[0].to(device)).contiguous(memory_format=fmt)  # (B, C, H, W) in [-1, 1]
            z = torch.randn(x.shape[0], mcfg.z_dim, device=device)

            # D step: ascend log sigma(D(x)) + log(1 - sigma(D(G(z)))); G(z) is detached (G is not updated).
            # With --r1, every r1_every-th step also adds r1_every * gamma/2 E||grad_x D(x)||^2 (lazy R1).
            with_r1 = cfg.r1 > 0 and step % cfg.r1_every == 0
            x.requires_grad_(with_r1)
            with distributed.autocast(device, precision):
                fake = G_ddp(z)
                real_logits, fake_logits = D_ddp(x), D_ddp(fake.detach())
            loss_d = discriminator_loss(real_logits, fake_logits)
            losses = {"loss_d": loss_d}
            if with_r1:
                losses["r1"] = r1 = r1_penalty(real_logits, x, cfg.r1)
            opt_d.zero_grad(set_to_none=True)
            (loss_d + cfg.r1_every * r1 if with_r1 else loss_d).backward()
            if guard.finite(step, **losses):
                opt_d.step()

            # G step: non-saturating, descend -log sigma(D(G(z))) through the just-updated D.
            with distributed.autocast(device, precision):
                gen_logits = D_ddp(fake)
            loss_g = generator_loss(gen_logits)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            if guard.finite(step, loss_g=loss_g):
                opt_g.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss_d": loss_d.item(), "loss_g": loss_g.item(),
                       "d_real": torch.sigmoid(real_logits.float()).mean().item(),
                       "d_fake": torch.sigmoid(fake_logits.float()).mean().item()} if write else {}
            if write and r1 is not None:  # L_R1 of the last step that applied it (lazy R1 adds r1_every times it)
                metrics["r1"] = r1.item()
            log.step(step, metrics, x.shape[0] * env.world_size, write)
            if write and (warning := watch.update(step, metrics["d_fake"])):
                log.message(warning)
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                G.eval()
                log.images(step, sample(G, 64, z=fixed_z))
                G.train()
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
