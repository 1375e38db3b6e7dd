"""Train a DDPM on the embedded MNIST copy by default.  `python train.py --help` lists every flag.

    python train.py                                   # embedded MNIST, 32x32, width 16: about 10 minutes on 2 cores
    python train.py --dataset shapes                  # the embedded shapes dataset
    python train.py --schedule cosine --prediction v  # Nichol & Dhariwal's schedule, Salimans & Ho's v target
    python train.py --width 128 --mults 1,2,2,2 --blocks 2 --attn 16 --dropout 0.1 --lr 2e-4 --batch-size 128 \\
        --ema 0.9999 --steps 800000 --dataset cifar10 --data-root DIR   # the paper's CIFAR-10 model (needs a GPU)
    python train.py --resume auto                     # continue the run in --out
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from model import PREDICTIONS, SCHEDULES, Config, UNet, ema_update, l_simple, predict, q_sample, sample, schedule_of
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, load_dataset, to_float


@dataclass
class TrainConfig(cli.RunConfig):
    """Train a DDPM (Ho et al. 2020). Core flags come from shared.cli; DDPM's own follow."""
    steps: int = 100_000_000  # optimizer steps; the default run is bound by --minutes instead
    minutes: float = 10.0  # wall-clock budget (the default run: 10 minutes, README; 0 = until --steps)
    out: str = "runs/ddpm"  # run folder
    batch_size: int = 32  # images per step per process (32 beat 64 at equal minutes in dev runs, EXPERIMENTS.md)
    lr: float = 1e-3  # Adam learning rate (paper: 2e-4 for its 35.7M-parameter network; EXPERIMENTS.md)
    width: int = 32  # channels of the first U-Net level (paper: 128; the default run's, EXPERIMENTS.md)
    mults: str = Config.mults  # channel multipliers per level, comma-separated (paper CIFAR: 1,2,2,2)
    blocks: int = Config.blocks  # residual blocks per level (paper: 2)
    attn: str = Config.attn  # resolutions with self-attention, comma-separated, "" = none (paper: 16)
    dropout: float = Config.dropout  # dropout in the residual blocks (paper CIFAR: 0.1)
    timesteps: int = Config.timesteps  # T (paper: 1000)
    schedule: str = "cosine"  # cosine (Nichol & Dhariwal; the default here) | linear (paper)
    prediction: str = "v"  # v (Salimans & Ho; the default here) | eps (paper, L_simple)
    ema: float = 0.999  # EMA decay of the weights used for sampling, warmed up as min(ema, (1+step)/(10+step))
    grad_clip: float = 1.0  # clip the gradient norm (Ho et al.'s code: 1.0; 0 = off)
    sample_steps: int = 20  # DDIM steps (eta 0) of the progress grids
    sample_every: int = 400  # write a sample grid (fixed noise, EMA weights) every N steps (each costs a few seconds here)


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network and diffusion hyper-parameters of this run (saved in checkpoints, used by sample.py)."""
    return Config(image_size=cfg.image_size, channels=channels, width=cfg.width, mults=cfg.mults,
                  blocks=cfg.blocks, attn=cfg.attn, dropout=cfg.dropout, timesteps=cfg.timesteps,
                  schedule=cfg.schedule, prediction=cfg.prediction)


def check(cfg: TrainConfig) -> None:
    """DDPM-specific flag checks (ValueError -> one-line CLI error)."""
    if cfg.schedule not in SCHEDULES or cfg.prediction not in PREDICTIONS:
        raise ValueError(f"--schedule must be one of {SCHEDULES}, --prediction one of {PREDICTIONS}")
    try:
        model_config(cfg, channels=1)
    except (TypeError, ValueError) as err:  # also a non-integer in --mults / --attn
        raise ValueError(str(err) if isinstance(err, ValueError) and "--" in str(err) else
                         f"--mults / --attn must be comma-separated integers: {err}") from None
    if not 0 <= cfg.ema < 1 or cfg.grad_clip < 0 or cfg.sample_steps < 1:
        raise ValueError("--ema must be in [0, 1), --grad-clip >= 0 and --sample-steps >= 1")


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg = model_config(cfg, data.channels)
    sch = schedule_of(mcfg)
    torch.manual_seed(cfg.seed)
    net = UNet(mcfg).to(device)
    ema = copy.deepcopy(net).requires_grad_(False).eval()  # what samples, sample.py and evaluate.py use
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own t and noise
    modules, optimizers = {"unet": net, "ema": ema}, {"opt": opt}
    step = training.resume(cfg, env, "DDPM", modules, optimizers, batches)
    fixed = torch.Generator().manual_seed(cfg.seed)
    fixed_noise = torch.randn(64, mcfg.channels, cfg.image_size, cfg.image_size, generator=fixed)
    spread = torch.linspace(0, len(data) - 1, 8).long()  # spread over the set (the embedded MNIST is sorted by class)
    shown = to_float(data.images[spread]).to(device)  # 8 training images, noised at 4 levels in the denoising grid
    shown_noise = torch.randn(shown.shape, generator=fixed).to(device)

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"DDPM {len(data)} {cfg.dataset} images, {mcfg.schedule} schedule, {mcfg.prediction}-prediction, "
                f"T {mcfg.timesteps}, {precision}, {device}, {env.world_size} process(es), {n_params(net):,} parameters")
    saver = training.Saver(cfg, env, "DDPM", mcfg, modules, optimizers, batches, log)
    guard = training.NonFiniteGuard(env, log)
    net_ddp, beta = distributed.wrap(net, env), 0.0
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x0 = to_float(next(batches)[0].to(device))  # (B, C, H, W) in [-1, 1]

            # Algorithm 1: t ~ U{1..T}, eps ~ N(0, I), descend ||eps - eps_theta(x_t, t)||^2 (Eq. 14)
            t = torch.randint(1, mcfg.timesteps + 1, (x0.shape[0],), device=device)
            noise = torch.randn_like(x0)
            with distributed.autocast(device, precision):
                loss = l_simple(net_ddp, sch, x0, t, noise, mcfg.prediction)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip or float("inf"))
            if guard.finite(step, loss=loss):
                opt.step()
                beta = ema_update(ema, net, cfg.ema, step)  # --ema 0: beta 0, the EMA is a copy of the weights
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss": loss.item(), "grad_norm": grad_norm.item(), "ema_decay": beta} if write else {}
            log.step(step, metrics, x0.shape[0] * env.world_size, write)
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if env.is_main and (step % cfg.sample_every == 0 or step == cfg.steps or stopping):
                with distributed.autocast(device, precision):  # as the training forward passes
                    log.images(step, sample(ema, 64, cfg.sample_steps, x_T=fixed_noise)[0])  # DDIM, no RNG drawn
                    log.images(step, denoising_grid(ema, sch, shown, shown_noise), tag="denoising", nrow=8)
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del net_ddp  # the DDP wrapper must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


@torch.no_grad()
def denoising_grid(net: UNet, sch, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Rows: the images x_0; then for t = 100, 300, 500, 700 the noised x_t and the one-step x0_hat below it."""
    rows = [x0]
    for s in (100, 300, 500, 700):
        t = torch.full((x0.shape[0],), round(s * net.cfg.timesteps / 1000), dtype=torch.long, device=x0.device)
        x_t = q_sample(sch, x0, t, noise)
        rows += [x_t.clamp(-1, 1), predict(net, sch, x_t, t, net.cfg.prediction)[0]]
    return torch.cat(rows)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
