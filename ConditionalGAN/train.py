"""Train a class-conditional GAN.  `python train.py --help` lists every flag.

    python train.py                                     # MNIST (embedded copy, 10 classes), 32x32, projection D
    python train.py --dataset shapes                    # shapes (3 classes: square, circle, triangle)
    python train.py --conditioning acgan --loss bce     # AC-GAN (Odena et al. 2017)
    torchrun --nproc_per_node=2 train.py                # data-parallel (one process per core / GPU)

DCGAN's CollapseWatch is not used: it reads D(G(z)) as a probability under the BCE loss, while the default hinge
loss and projection D give raw, unbounded logits (`logit_fake`), for which its threshold means nothing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from model import (LOSSES, Config, Discriminator, Generator, class_grid, discriminator_loss, ema_update,
                   generator_loss)
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, DataError, load_dataset, to_float


@dataclass
class TrainConfig(cli.RunConfig):
    """Train a conditional GAN (projection discriminator or AC-GAN). Core flags come from shared.cli."""
    steps: int = 5000  # steps; one step = --d-steps D updates + one G update
    out: str = "runs/conditionalgan"  # run folder
    lr: float = 2e-4  # Adam learning rate of G (and of D if --lr-d is 0)
    lr_d: float = 4e-4  # Adam learning rate of D, twice G's (TTUR, Heusel et al. 2017; see README); 0 = --lr
    d_steps: int = 1  # D updates per G update, each on a fresh real batch and z (n_dis; Miyato & Koyama: 5)
    ema: float = 0.0  # decay (e.g. 0.999) of a moving average of G's weights for samples and evaluation; 0 = off
    beta1: float = 0.5  # Adam beta1
    beta2: float = 0.999  # Adam beta2
    conditioning: str = "projection"  # how D uses the label: projection | acgan
    loss: str = "hinge"  # adversarial loss: hinge | bce (log-likelihood, non-saturating for G)
    class_weight: float = 1.0  # acgan only: weight of the class log-likelihood term L_C (paper: 1)
    spectral_norm: bool = True  # spectral normalisation of every D weight
    z_dim: int = Config.z_dim  # latent dimension
    g_width: int = Config.g_width  # G channels before the output layer
    d_width: int = Config.d_width  # D channels after the input layer
    grid_columns: int = 10  # samples per class (one row each) in the sample grids written during training
    channels_last: bool = True  # NHWC memory format for the convolutions (faster on CPU)


def model_config(cfg: TrainConfig, channels: int, num_classes: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py)."""
    return Config(image_size=cfg.image_size, channels=channels, num_classes=num_classes, z_dim=cfg.z_dim,
                  g_width=cfg.g_width, d_width=cfg.d_width, conditioning=cfg.conditioning,
                  spectral_norm=cfg.spectral_norm)


def check(cfg: TrainConfig) -> None:
    """Model-specific flag checks (ValueError -> one-line CLI error)."""
    model_config(cfg, channels=3, num_classes=2)  # validates image_size and conditioning
    if cfg.loss not in LOSSES:
        raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    if min(cfg.z_dim, cfg.g_width, cfg.d_width, cfg.grid_columns, cfg.d_steps) <= 0:
        raise ValueError("--z-dim, --g-width, --d-width, --grid-columns and --d-steps must be positive")
    if cfg.class_weight < 0 or not (0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise ValueError("--class-weight must be >= 0 and --beta1/--beta2 in [0, 1)")
    if cfg.lr <= 0 or cfg.lr_d < 0 or not 0 <= cfg.ema < 1:
        raise ValueError("--lr must be > 0, --lr-d >= 0 (0 = --lr) and --ema in [0, 1) (0 = off)")


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    if data.num_classes < 2:
        raise DataError(f"{cfg.dataset} has no class labels; a conditional GAN needs a labelled dataset "
                        f"(for folder:PATH, one subfolder per class)")
    mcfg = model_config(cfg, data.channels, data.num_classes)
    torch.manual_seed(cfg.seed)
    G, D = Generator(mcfg).to(device, memory_format=fmt), Discriminator(mcfg).to(device, memory_format=fmt)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d or cfg.lr, betas=(cfg.beta1, cfg.beta2))
    G_ema = copy.deepcopy(G).requires_grad_(False).eval() if cfg.ema else None  # what samples and evaluate use
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own z
    modules, optimizers = {"G": G, "D": D, "G_ema": G_ema}, {"opt_g": opt_g, "opt_d": opt_d}
    step = training.resume(cfg, env, "ConditionalGAN", modules, optimizers, batches, optional=("G_ema",))
    fixed_z = torch.randn(cfg.grid_columns, mcfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    losses = dict(loss=cfg.loss, class_weight=cfg.class_weight)

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"ConditionalGAN ({cfg.conditioning}, {cfg.loss}) {len(data)} {cfg.dataset} images, "
                f"{data.num_classes} classes, {precision}, {device}, {env.world_size} process(es), "
                f"G {n_params(G):,} / D {n_params(D):,} parameters")
    saver = training.Saver(cfg, env, "ConditionalGAN", mcfg, modules, optimizers, batches, log,
                           extra=lambda: {"classes": list(data.classes)})  # for sample.py's class names
    guard = training.NonFiniteGuard(env, log)
    G_ddp, D_ddp = distributed.wrap(G, env), distributed.wrap(D, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            for _ in range(cfg.d_steps):
                x_uint8, y = next(batches)
                x, y = to_float(x_uint8.to(device)).contiguous(memory_format=fmt), y.to(device)  # (B, C, H, W), (B,)
                z = torch.randn(x.shape[0], mcfg.z_dim, device=device)

                # D step on real (x, y) and fake (G(z, y), y) in one forward; fakes carry the real batch's labels,
                # so p(y) is the data's. G(z, y) is detached: G is not updated here.
                with distributed.autocast(device, precision):
                    fake = G_ddp(z, y)
                    logits, class_logits = D_ddp(torch.cat([x, fake.detach()]), torch.cat([y, y]))
                real_out = (logits[:len(x)], None if class_logits is None else class_logits[:len(x)])
                fake_out = (logits[len(x):], None if class_logits is None else class_logits[len(x):])
                loss_d, terms_d = discriminator_loss(real_out, fake_out, y, **losses)
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                if guard.finite(step, loss_d=loss_d):  # a nan / inf loss skips the update (agreed by all ranks)
                    opt_d.step()

            # G step through the just-updated D, on the last D step's fakes.
            with distributed.autocast(device, precision):
                gen_out = D_ddp(fake, y)
            loss_g, terms_g = generator_loss(gen_out, y, **losses)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            if guard.finite(step, loss_g=loss_g):
                opt_g.step()
                if G_ema is not None:
                    ema_update(G_ema, G, cfg.ema, step)
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss_d": loss_d.item(), "loss_g": loss_g.item(), **terms_d, **terms_g,  # raw D logits:
                       "logit_real": real_out[0].float().mean().item(),  # not DCGAN's probabilities d_real/d_fake
                       "logit_fake": fake_out[0].float().mean().item()} if write else {}
            log.step(step, metrics, cfg.d_steps * x.shape[0] * env.world_size, write)  # real images read
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                shown = G_ema if G_ema is not None else G.eval()  # rows = classes, columns = fixed z
                log.images(step, class_grid(shown, list(range(data.num_classes)), cfg.grid_columns, z=fixed_z),
                           nrow=cfg.grid_columns)  # tag "samples": the frames of progress.gif
                G.train()
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del G_ddp, D_ddp  # DDP wrappers must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
