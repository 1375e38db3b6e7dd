"""Train a class-conditional DDPM with label dropout, for classifier-free guidance.  `python train.py --help`.

    python train.py                                   # embedded MNIST (10 digits), 32x32: about 10 minutes on 2 cores
    python train.py --dataset shapes                  # shapes: 3 classes (square, circle, triangle)
    python train.py --p-uncond 0.2                    # drop more labels to the null label (paper: 0.1 or 0.2)
    python train.py --schedule cosine --prediction v  # Nichol & Dhariwal's schedule, Salimans & Ho's v target
    python train.py --resume auto                     # continue the run in --out
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)
"""
# Adapted from DDPM/train.py: the labels (dropped to the null label with probability --p-uncond) reach the U-Net;
# the sample grids are class-by-row and guided.
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from model import PREDICTIONS, SCHEDULES, Config, UNet, drop_labels, ema_update, l_simple, sample, schedule_of
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, DataError, load_dataset, to_float


@dataclass
class TrainConfig(cli.RunConfig):
    """Train a class-conditional DDPM for classifier-free guidance (Ho & Salimans 2022). Core flags: shared.cli."""
    steps: int = 1500  # optimizer steps (a --minutes budget stops earlier; README: the 10-minute default run)
    out: str = "runs/conditionaldiffusion"  # run folder
    batch_size: int = 32  # images per step per process (DDPM's default)
    lr: float = 2e-3  # Adam learning rate (DDPM's default for this network size)
    p_uncond: float = 0.1  # label dropout: probability that a training label is replaced by the null label
    width: int = Config.width  # channels of the first U-Net level (DDPM paper: 128)
    mults: str = Config.mults  # channel multipliers per level, comma-separated
    blocks: int = Config.blocks  # residual blocks per level
    attn: str = Config.attn  # resolutions with self-attention, comma-separated, "" = none
    dropout: float = Config.dropout  # dropout in the residual blocks
    timesteps: int = Config.timesteps  # T
    schedule: str = Config.schedule  # linear (DDPM) | cosine (Nichol & Dhariwal)
    prediction: str = Config.prediction  # eps (DDPM) | v (Salimans & Ho)
    ema: float = 0.999  # EMA decay of the weights used for sampling, warmed up as min(ema, (1+step)/(10+step))
    grad_clip: float = 1.0  # clip the gradient norm (0 = off)
    sample_steps: int = 20  # DDIM steps (eta 0) of the progress grids
    sample_guidance: float = 3.0  # guidance weight w of the progress grids (sample.py recommends 2) (0 uncond, 1 cond, > 1 guided)
    grid_columns: int = 8  # samples per class (one row each, one fixed noise per column) in the progress grids
    sample_every: int = 500  # write a sample grid (fixed noise, EMA weights) every N steps


def model_config(cfg: TrainConfig, channels: int, num_classes: int) -> Config:
    """The network and diffusion hyper-parameters of this run (saved in checkpoints, used by sample.py)."""
    return Config(image_size=cfg.image_size, channels=channels, num_classes=num_classes, width=cfg.width,
                  mults=cfg.mults, blocks=cfg.blocks, attn=cfg.attn, dropout=cfg.dropout, timesteps=cfg.timesteps,
                  schedule=cfg.schedule, prediction=cfg.prediction)


def check(cfg: TrainConfig) -> None:
    """Flag checks of this model (ValueError -> one-line CLI error)."""
    if cfg.schedule not in SCHEDULES or cfg.prediction not in PREDICTIONS:
        raise ValueError(f"--schedule must be one of {SCHEDULES}, --prediction one of {PREDICTIONS}")
    try:
        model_config(cfg, channels=1, num_classes=2)
    except (TypeError, ValueError) as err:  # also a non-integer in --mults / --attn
        raise ValueError(str(err) if isinstance(err, ValueError) and "--" in str(err) else
                         f"--mults / --attn must be comma-separated integers: {err}") from None
    if not 0 <= cfg.p_uncond < 1:
        raise ValueError(f"--p-uncond must be in [0, 1) (0 = no unconditional model to guide with), got {cfg.p_uncond}")
    if not 0 <= cfg.ema < 1 or cfg.grad_clip < 0 or cfg.sample_steps < 1 or cfg.grid_columns < 1:
        raise ValueError("--ema must be in [0, 1), --grad-clip >= 0, --sample-steps and --grid-columns >= 1")


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    if data.num_classes < 2:
        raise DataError(f"{cfg.dataset} has no class labels; a conditional model needs a labelled dataset "
                        f"(for folder:PATH, one subfolder per class)")
    mcfg = model_config(cfg, data.channels, data.num_classes)
    sch = schedule_of(mcfg)
    torch.manual_seed(cfg.seed)
    net = UNet(mcfg).to(device)
    ema = copy.deepcopy(net).requires_grad_(False).eval()  # what samples, sample.py and evaluate.py use
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own t, noise and label dropout
    modules, optimizers = {"unet": net, "ema": ema}, {"opt": opt}
    step = training.resume(cfg, env, "ConditionalDiffusion", modules, optimizers, batches)
    K, cols = data.num_classes, cfg.grid_columns
    fixed_noise = torch.randn(cols, mcfg.channels, cfg.image_size, cfg.image_size,
                              generator=torch.Generator().manual_seed(cfg.seed)).repeat(K, 1, 1, 1)  # a column: one x_T
    grid_labels = torch.arange(K).repeat_interleave(cols)  # row k: class k

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"ConditionalDiffusion {len(data)} {cfg.dataset} images, {K} classes + null, p_uncond "
                f"{cfg.p_uncond}, {mcfg.schedule} schedule, {mcfg.prediction}-prediction, T {mcfg.timesteps}, "
                f"{precision}, {device}, {env.world_size} process(es), {n_params(net):,} parameters")
    saver = training.Saver(cfg, env, "ConditionalDiffusion", mcfg, modules, optimizers, batches, log,
                           extra=lambda: {"classes": list(data.classes)})  # for sample.py's class names
    guard = training.NonFiniteGuard(env, log)
    net_ddp, beta = distributed.wrap(net, env), 0.0
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x_uint8, y = next(batches)
            x0, y = to_float(x_uint8.to(device)), y.to(device)  # (B, C, H, W) in [-1, 1], (B,) in 0..K-1

            # Ho & Salimans Algorithm 1: c <- null with prob. p_uncond; t ~ U{1..T}, eps ~ N(0, I);
            # descend ||eps - eps_theta(x_t, t, c)||^2: one network learns the conditional and unconditional model
            c = drop_labels(y, cfg.p_uncond, mcfg.null_label)
            t = torch.randint(1, mcfg.timesteps + 1, (x0.shape[0],), device=device)
            noise = torch.randn_like(x0)
            with distributed.autocast(device, precision):
                loss = l_simple(net_ddp, sch, x0, t, noise, c, mcfg.prediction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip or float("inf"))
            if guard.finite(step, loss=loss):
                opt.step()
                beta = ema_update(ema, net, cfg.ema, step)
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss": loss.item(), "grad_norm": grad_norm.item(), "ema_decay": beta,
                       "null_fraction": (c == mcfg.null_label).float().mean().item()} if write else {}
            log.step(step, metrics, x0.shape[0] * env.world_size, write)
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if env.is_main and (step % cfg.sample_every == 0 or step == cfg.steps or stopping):
                images, _ = sample(ema, grid_labels, cfg.sample_guidance, cfg.sample_steps, x_T=fixed_noise)
                log.images(step, images, nrow=cols)  # DDIM, eta 0: no RNG drawn; rows = classes
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del net_ddp  # the DDP wrapper must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
