"""Train a score-based model (score SDE) on the embedded MNIST copy by default.  `python train.py --help` lists
every flag.

    python train.py                                   # embedded MNIST, 32x32, VP SDE: about 10 minutes on 2 cores
    python train.py --sde ve                          # the VE SDE (NCSN / SMLD in continuous time)
    python train.py --sde subvp                       # the sub-VP SDE
    python train.py --dataset shapes                  # the embedded shapes dataset
    python train.py --width 128 --mults 1,2,2,2 --blocks 4 --attn 16 --dropout 0.1 --lr 2e-4 --batch-size 128 \\
        --ema 0.9999 --steps 1300000 --dataset cifar10 --data-root DIR   # the paper's VP DDPM++ size (needs a GPU)
    python train.py --resume auto                     # continue the run in --out
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from model import SDES, Config, dsm_loss, ema_update, sample, sde_of
from unet import UNet
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, load_dataset, to_float


@dataclass
class TrainConfig(cli.RunConfig):
    """Train a score SDE (Song et al. 2021). Core flags come from shared.cli; the model's own follow."""
    steps: int = 2600  # optimizer steps (the 10-minute default run made 2,590 on 1 thread beside other jobs: README)
    out: str = "runs/scorebased"  # run folder
    batch_size: int = 32  # images per step per process (DDPM's dev runs: 32 beat 64 at equal minutes)
    lr: float = 2e-3  # Adam learning rate (paper: 2e-4 for its 60M-parameter network)
    width: int = 16  # channels of the first U-Net level (paper: 128)
    mults: str = Config.mults  # channel multipliers per level, comma-separated (paper CIFAR: 1,2,2,2)
    blocks: int = Config.blocks  # residual blocks per level (paper DDPM++: 4)
    attn: str = Config.attn  # resolutions with self-attention, comma-separated, "" = none (paper: 16)
    dropout: float = Config.dropout  # dropout in the residual blocks (paper CIFAR: 0.1)
    sde: str = Config.sde  # vp (default: see README) | ve | subvp
    beta_min: float = Config.beta_min  # VP / sub-VP beta(0)
    beta_max: float = Config.beta_max  # VP / sub-VP beta(1)
    sigma_min: float = Config.sigma_min  # VE sigma(0)
    sigma_max: float = Config.sigma_max  # VE sigma(1)
    train_eps: float = 1e-5  # t ~ U(train_eps, 1) (the authors' code: 1e-5)
    ema: float = 0.999  # EMA decay of the weights used for sampling, warmed up as min(ema, (1+step)/(10+step))
    grad_clip: float = 1.0  # clip the gradient norm (the authors' code: 1.0; 0 = off)
    sample_steps: int = 20  # predictor steps of the progress grids (PC sampler, one Langevin step each)
    snr: float = 0.16  # Langevin corrector signal-to-noise ratio of the progress grids (paper: 0.16)
    sample_every: int = 500  # write a sample grid (fixed noise, EMA weights) every N steps


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network and SDE of this run (saved in checkpoints, used by sample.py)."""
    return Config(image_size=cfg.image_size, channels=channels, width=cfg.width, mults=cfg.mults, blocks=cfg.blocks,
                  attn=cfg.attn, dropout=cfg.dropout, sde=cfg.sde, beta_min=cfg.beta_min, beta_max=cfg.beta_max,
                  sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)


def check(cfg: TrainConfig) -> None:
    """Flag checks of this model (ValueError -> one-line CLI error)."""
    if cfg.sde not in SDES:
        raise ValueError(f"--sde must be one of {SDES}, got {cfg.sde!r}")
    try:
        model_config(cfg, channels=1)
    except (TypeError, ValueError) as err:  # also a non-integer in --mults / --attn
        raise ValueError(str(err) if isinstance(err, ValueError) and "--" in str(err) else
                         f"--mults / --attn must be comma-separated integers: {err}") from None
    if not 0 <= cfg.ema < 1 or cfg.grad_clip < 0 or cfg.sample_steps < 1 or cfg.snr <= 0:
        raise ValueError("--ema must be in [0, 1), --grad-clip >= 0, --sample-steps >= 1 and --snr > 0")
    if not 0 < cfg.train_eps < 1:
        raise ValueError("--train-eps must be in (0, 1)")


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg = model_config(cfg, data.channels)
    sde = sde_of(mcfg)
    torch.manual_seed(cfg.seed)
    net = UNet(mcfg).to(device)
    ema = copy.deepcopy(net).requires_grad_(False).eval()  # what samples, sample.py and evaluate.py use
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own t and noise
    modules, optimizers = {"unet": net, "ema": ema}, {"opt": opt}
    step = training.resume(cfg, env, "ScoreBased", modules, optimizers, batches)
    fixed = torch.Generator().manual_seed(cfg.seed)
    fixed_noise = torch.randn(64, mcfg.channels, cfg.image_size, cfg.image_size, generator=fixed) * sde.prior_std()

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"ScoreBased {len(data)} {cfg.dataset} images, {mcfg.sde.upper()} SDE, {precision}, {device}, "
                f"{env.world_size} process(es), {sum(p.numel() for p in net.parameters()):,} parameters")
    saver = training.Saver(cfg, env, "ScoreBased", mcfg, modules, optimizers, batches, log)
    guard = training.NonFiniteGuard(env, log)
    net_ddp, beta = distributed.wrap(net, env), 0.0
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x0 = to_float(next(batches)[0].to(device))  # (B, C, H, W) in [-1, 1]

            # Eq. 7: t ~ U(eps, 1), x(t) = m(t) x(0) + s(t) z, descend lambda(t) ||s_theta - grad log p_0t||^2
            t = cfg.train_eps + (1 - cfg.train_eps) * torch.rand(x0.shape[0], device=device)
            z = torch.randn_like(x0)
            with distributed.autocast(device, precision):
                loss = dsm_loss(net_ddp, sde, x0, t, z)
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
                gen = torch.Generator().manual_seed(cfg.seed + 1)  # its own stream: the training RNG is untouched
                log.images(step, sample(ema, 64, "pc", cfg.sample_steps, cfg.snr, generator=gen,
                                        x_T=fixed_noise.to(device))[0])
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del net_ddp  # the DDP wrapper must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
