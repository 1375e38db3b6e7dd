"""Train BiGAN / ALI.  `python train.py --help` lists every flag.

    python train.py                                   # MNIST (embedded copy), 32x32, 4,000 steps, ~10 minutes on 2 CPU cores
    python train.py --dataset shapes                  # the synthetic shapes dataset (known factors)
    python train.py --encoder gaussian                # ALI's reparameterised Gaussian encoder
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from model import (Config, Discriminator, Encoder, Generator, discriminator_loss, encoder_generator_loss,
                   judge_pairs, sample)
from sample import reconstruction_grid
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, load_dataset, to_float
from shared.run import RunLog

MONITOR_IMAGES = 32  # fixed training images in the reconstruction grids (fewer if the dataset is smaller)


@dataclass
class TrainConfig(cli.RunConfig):
    """Train BiGAN (Donahue et al. 2017) / ALI (Dumoulin et al. 2017). Core flags come from shared.cli."""
    steps: int = 4000  # steps; one step = one D update + one joint E/G update
    out: str = "runs/bigan"  # run folder
    lr: float = 2e-4  # Adam learning rate of E and G (and of D if --lr-d is 0) (BiGAN: 2e-4)
    lr_d: float = 4e-4  # Adam learning rate of D, twice E/G's (TTUR, Heusel et al. 2017; see README); 0 = --lr
    beta1: float = 0.5  # Adam beta1 (BiGAN and ALI: 0.5)
    beta2: float = 0.999  # Adam beta2 (BiGAN: 0.999; ALI: 1e-3)
    z_dim: int = Config.z_dim  # latent dimension
    g_width: int = Config.g_width  # G channels before the output layer
    e_width: int = Config.e_width  # E channels after the input layer
    d_width: int = Config.d_width  # channels of D's first conv layer
    d_joint: int = Config.d_joint  # width of D's z embedding and joint head
    dropout: float = Config.dropout  # dropout in D's hidden layers (ALI: 0.2)
    d_norm: str = Config.d_norm  # D's normalisation: spectral | batch | none
    encoder: str = Config.encoder  # deterministic (BiGAN) | gaussian (ALI)
    channels_last: bool = True  # NHWC memory format for the convolutions (faster on CPU)


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py / evaluate.py)."""
    return Config(image_size=cfg.image_size, channels=channels, z_dim=cfg.z_dim, g_width=cfg.g_width,
                  e_width=cfg.e_width, d_width=cfg.d_width, d_joint=cfg.d_joint, dropout=cfg.dropout,
                  encoder=cfg.encoder, d_norm=cfg.d_norm)


def build(mcfg: Config, seed: int) -> tuple[Generator, Encoder, Discriminator]:
    """G, E, D initialised from `seed` (evaluate.py rebuilds the untrained E the same way as a baseline)."""
    torch.manual_seed(seed)
    return Generator(mcfg), Encoder(mcfg), Discriminator(mcfg)


def check(cfg: TrainConfig) -> None:
    """BiGAN-specific flag checks (ValueError -> one-line CLI error)."""
    model_config(cfg, channels=3)  # validates image_size, encoder, d_norm, dropout
    if min(cfg.z_dim, cfg.g_width, cfg.e_width, cfg.d_width, cfg.d_joint) <= 0:
        raise ValueError("--z-dim, --g-width, --e-width, --d-width and --d-joint must be positive")
    if cfg.lr <= 0 or cfg.lr_d < 0:
        raise ValueError("--lr must be > 0 and --lr-d >= 0 (0 = --lr)")


# Copied from DCGAN/train.py: CollapseWatch
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
    G, E, D = (net.to(device, memory_format=fmt) for net in build(mcfg, cfg.seed))
    opt_eg = torch.optim.Adam([*E.parameters(), *G.parameters()], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d or cfg.lr, betas=(cfg.beta1, cfg.beta2))
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own z (and dropout masks)
    modules, optimizers = {"G": G, "E": E, "D": D}, {"opt_eg": opt_eg, "opt_d": opt_d}
    step = training.resume(cfg, env, "BiGAN", modules, optimizers, batches)
    fixed_z = torch.randn(64, mcfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    monitor_idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))[:MONITOR_IMAGES]
    fixed_x = to_float(data.images[monitor_idx]).to(device)  # fixed training images for the reconstruction grids

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"BiGAN {len(data)} {cfg.dataset} images, {precision}, {device}, {env.world_size} process(es), "
                f"G {n_params(G):,} / E {n_params(E):,} / D {n_params(D):,} parameters")
    saver = training.Saver(cfg, env, "BiGAN", mcfg, modules, optimizers, batches, log)
    # one guard per player: a finite E/G loss must not reset the count of D's non-finite losses in a row
    guard_d, guard_eg = training.NonFiniteGuard(env, log), training.NonFiniteGuard(env, log)
    watch = CollapseWatch(step)
    G_ddp, E_ddp, D_ddp = (distributed.wrap(net, env) for net in (G, E, D))
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x = to_float(next(batches)[0].to(device)).contiguous(memory_format=fmt)  # (B, C, H, W) in [-1, 1]
            z = torch.randn(x.shape[0], mcfg.z_dim, device=device)

            # D step: ascend V = log sigma(D(x, E(x))) + log(1 - sigma(D(G(z), z))) with E(x), G(z) detached.
            with distributed.autocast(device, precision):
                x_fake, z_real = G_ddp(z), E_ddp(x)
                real_logits, fake_logits = judge_pairs(D_ddp, x, z_real.detach(), x_fake.detach(), z)
            loss_d = discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            if guard_d.finite(step, loss_d=loss_d):
                opt_d.step()

            # E/G step through the just-updated D, labels swapped (non-saturating): E moves the real pair's z,
            # G the fake pair's x.
            with distributed.autocast(device, precision):
                eg_real_logits, eg_fake_logits = judge_pairs(D_ddp, x, z_real, x_fake, z)
            loss_eg = encoder_generator_loss(eg_real_logits, eg_fake_logits)
            opt_eg.zero_grad(set_to_none=True)
            loss_eg.backward()
            if guard_eg.finite(step, loss_eg=loss_eg):
                opt_eg.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss_d": loss_d.item(), "loss_eg": loss_eg.item(),
                       "d_real": torch.sigmoid(real_logits.float()).mean().item(),  # D(x, E(x)) as a probability
                       "d_fake": torch.sigmoid(fake_logits.float()).mean().item(),  # D(G(z), z) as a probability
                       "code_std": z_real.float().std().item()} if write else {}
            log.step(step, metrics, x.shape[0] * env.world_size, write)
            if write and (warning := watch.update(step, metrics["d_fake"])):
                log.message(warning)
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                monitor(log, step, G, E, fixed_z, fixed_x)
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del G_ddp, E_ddp, D_ddp  # DDP wrappers must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


def monitor(log: RunLog, step: int, G: Generator, E: Encoder, fixed_z: torch.Tensor, fixed_x: torch.Tensor) -> None:
    """Sample grid from fixed noise; reconstruction grid (rows of x, then G(E(x))) of fixed training images.
    Eval mode, fixed inputs and E's mean code: no RNG drawn, no BatchNorm statistics updated."""
    G.eval(), E.eval()
    log.images(step, sample(G, len(fixed_z), z=fixed_z))
    per_row = min(8, len(fixed_x))
    rows = reconstruction_grid(G, E, fixed_x, per_row)  # whole rows of per_row images, each followed by G(E(x))
    x, x_rec = rows.view(-1, 2, per_row, *rows.shape[1:]).unbind(1)  # (rows, per_row, C, H, W) each
    log.images(step, rows, tag="reconstructions", nrow=per_row)
    log.message(f"step {step}: reconstruction MSE of {x.shape[0] * per_row} fixed training images "
                f"{(x_rec - x).square().mean().item():.4f}")
    G.train(), E.train()


# Copied from DCGAN/train.py: n_params
def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
