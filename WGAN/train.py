"""Train WGAN-GP (default) or the original weight-clipped WGAN.  `python train.py --help` lists every flag.

    python train.py                                 # WGAN-GP on the embedded MNIST (5,000 digits), 32x32
    python train.py --dataset shapes                # coloured squares, circles and triangles
    python train.py --variant clip                  # the original WGAN: clipping, RMSprop 5e-5, n_critic 5
    python train.py --lr 1e-4 --n-critic 5          # WGAN-GP as in the paper: Adam 1e-4 for both, n_critic 5
    torchrun --nproc_per_node=2 train.py            # data-parallel (one process per core / GPU)

One step = one generator update after --n-critic critic updates, each on a fresh real batch and fresh z
(Algorithm 1 of both papers); checkpoints fall on step boundaries and count the critic updates, so --resume
continues the interleaving exactly. Logging never changes training (see logged_gradient_norm). DCGAN's
CollapseWatch is not used: it watches D(G(z)) as a probability near 0, and a critic's scores are unbounded.
"""
# Adapted from DCGAN/train.py: the same shared plumbing around a loop of n_critic critic updates per G update.
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from model import (VARIANTS, Config, Critic, Generator, clip_weights, critic_gradient_norm, critic_loss,
                   generator_loss, gradient_penalty, random_interpolates, sample, wasserstein_estimate)
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, load_dataset, to_float

# Per-variant defaults of the flags the user did not give (apply_variant_defaults). clip: Arjovsky et al.'s RMSprop
# 5e-5 for both networks and n_critic 5. gp: G at 3e-4 (the paper's 1e-4 is still at grey blobs after a 10-minute
# CPU run), the critic at twice that (Heusel et al.'s two time-scale rule) and n_critic 1: in 10 CPU minutes that
# makes ~5x the generator updates of n_critic 5 (EXPERIMENTS.md). lr_d 0 means "the critic learns at --lr".
DEFAULT_LR = {"gp": 3e-4, "clip": 5e-5}
DEFAULT_LR_D = {"gp": 6e-4, "clip": 0.0}
DEFAULT_N_CRITIC = {"gp": 1, "clip": 5}
CRITIC_NORM = {"gp": "none", "clip": "batch"}  # --critic-norm auto: the authors' DCGAN critics


@dataclass
class TrainConfig(cli.RunConfig):
    """Train WGAN (Arjovsky et al. 2017) / WGAN-GP (Gulrajani et al. 2017). Core flags come from shared.cli."""
    steps: int = 1000  # generator updates (each after --n-critic critic updates)
    out: str = "runs/wgan"  # run folder
    variant: str = "gp"  # gp: gradient penalty, Adam | clip: weight clipping, RMSprop (the original WGAN)
    lr: float = DEFAULT_LR["gp"]  # G's rate, and the critic's unless --lr-d is given (not given: gp 3e-4, clip 5e-5)
    lr_d: float = DEFAULT_LR_D["gp"]  # critic's rate, 0 = --lr (papers); if neither --lr nor --lr-d: gp 6e-4, clip 0
    beta1: float = 0.0  # Adam beta1, gp only (paper: 0)
    beta2: float = 0.9  # Adam beta2, gp only (paper: 0.9)
    n_critic: int = DEFAULT_N_CRITIC["gp"]  # critic updates per generator update (not given: gp 1, clip 5; papers: 5)
    gp_weight: float = 10.0  # lambda, the gradient penalty's weight (gp; paper: 10)
    clip: float = 0.01  # c: critic weights are clipped to [-c, c] after each critic update (clip; paper: 0.01)
    critic_norm: str = "auto"  # auto (gp: none, clip: batch) | batch (clip only) | layer | none
    z_dim: int = Config.z_dim  # latent dimension
    g_width: int = 32  # G channels before the output layer (DCGAN's ngf: 64; 32 trains ~3x faster on CPU)
    d_width: int = 32  # critic channels after the input layer (DCGAN's ndf: 64)
    channels_last: bool = True  # NHWC memory format for the convolutions (faster on CPU)


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py)."""
    norm = CRITIC_NORM[cfg.variant] if cfg.critic_norm == "auto" else cfg.critic_norm
    return Config(image_size=cfg.image_size, channels=channels, z_dim=cfg.z_dim,
                  g_width=cfg.g_width, d_width=cfg.d_width, critic_norm=norm)


def apply_variant_defaults(cfg: TrainConfig, given: frozenset[str]) -> TrainConfig:
    """cli.parse's `defaults`: the variant's --lr, --lr-d and --n-critic for the flags not given. --lr given alone
    sets both networks' rate (lr_d 0 = --lr), as its help says; the gp critic's 6e-4 is the default of neither."""
    if cfg.variant not in VARIANTS:
        return cfg  # check() reports it
    changes = {name: table[cfg.variant] for name, table in [("lr", DEFAULT_LR), ("n_critic", DEFAULT_N_CRITIC)]
               if name not in given}
    if "lr_d" not in given:
        changes["lr_d"] = 0.0 if "lr" in given else DEFAULT_LR_D[cfg.variant]
    return dataclasses.replace(cfg, **changes)


def check(cfg: TrainConfig) -> None:
    """WGAN-specific flag checks (ValueError -> one-line CLI error)."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"--variant must be one of {', '.join(VARIANTS)}, got {cfg.variant!r}")
    norm = model_config(cfg, channels=3).critic_norm  # validates --image-size and --critic-norm
    if cfg.variant == "gp" and norm == "batch":
        raise ValueError("--variant gp penalises per-sample gradients: use --critic-norm layer or none, not batch")
    if min(cfg.z_dim, cfg.g_width, cfg.d_width, cfg.n_critic) <= 0:
        raise ValueError("--z-dim, --g-width, --d-width and --n-critic must be positive")
    if cfg.gp_weight < 0 or cfg.lr_d < 0 or cfg.clip <= 0:  # --lr > 0 is a core check
        raise ValueError("--gp-weight and --lr-d must be >= 0 (--lr-d 0 = --lr) and --clip positive")


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg, gp = model_config(cfg, data.channels), cfg.variant == "gp"
    torch.manual_seed(cfg.seed)
    G, D = Generator(mcfg).to(device, memory_format=fmt), Critic(mcfg).to(device, memory_format=fmt)
    # Gulrajani et al.: Adam, betas (0, 0.9); Arjovsky et al.: RMSprop (Adam's momentum made WGAN unstable at times)
    Optimizer = functools.partial(torch.optim.Adam, betas=(cfg.beta1, cfg.beta2)) if gp else torch.optim.RMSprop
    opt_g, opt_d = Optimizer(G.parameters(), lr=cfg.lr), Optimizer(D.parameters(), lr=cfg.lr_d or cfg.lr)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own z and alpha
    modules, optimizers = {"G": G, "D": D}, {"opt_g": opt_g, "opt_d": opt_d}
    saved = {"critic_updates": 0}  # the checkpoint's count, if resuming
    step = training.resume(cfg, env, "WGAN", modules, optimizers, batches, restore=saved)
    critic_updates = int(saved["critic_updates"])
    fixed_z = torch.randn(64, mcfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"WGAN-{cfg.variant} {len(data)} {cfg.dataset} images, {precision}, {device}, {env.world_size} "
                f"process(es), critic norm {mcfg.critic_norm}, G {n_params(G):,} / critic {n_params(D):,} parameters")
    saver = training.Saver(cfg, env, "WGAN", mcfg, modules, optimizers, batches, log,
                           extra=lambda: {"critic_updates": critic_updates})
    guard = training.NonFiniteGuard(env, log)
    G_ddp, D_ddp = distributed.wrap(G, env), distributed.wrap(D, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            write = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
            logged: list[torch.Tensor] = []  # per critic update: [loss, W estimate, penalty]
            norms: list[torch.Tensor] = []  # the critic's input-gradient norms at random interpolates, (B,) each
            for _ in range(cfg.n_critic):  # critic updates: ascend E[f(x)] - E[f(G(z))] (- lambda GP)
                x = to_float(next(batches)[0].to(device)).contiguous(memory_format=fmt)  # (B, C, H, W) in [-1, 1]
                with torch.no_grad(), distributed.autocast(device, precision):
                    fake = G_ddp(torch.randn(x.shape[0], mcfg.z_dim, device=device)).float()
                with distributed.autocast(device, precision):
                    real_scores, fake_scores = D_ddp(x), D_ddp(fake)
                loss_d, penalty = critic_loss(real_scores, fake_scores), torch.zeros((), device=device)
                if gp:
                    with distributed.autocast(device, precision):
                        penalty, grad_norm = gradient_penalty(D_ddp, random_interpolates(x, fake)[0])
                    loss_d = loss_d + cfg.gp_weight * penalty
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                if guard.finite(step, loss_d=loss_d, grads_d=squared_norm(D)):  # else skipped, agreed by all ranks
                    opt_d.step()
                    if not gp:
                        clip_weights(D, cfg.clip)  # Algorithm 1 line 7, after every critic update
                    critic_updates += 1
                if write:
                    logged.append(torch.stack([loss_d.detach(), wasserstein_estimate(real_scores, fake_scores).detach(),
                                               penalty.detach()]))
                    if gp:
                        norms.append(grad_norm.detach())
            if write and not gp:  # clip: measured for the log only, without touching training's state
                norms.append(logged_gradient_norm(D, x, fake, seed=cfg.seed * 1_000_003 + step))

            # Generator update: descend -E[f(G(z))] through the critic, whose weights are frozen for it.
            D.requires_grad_(False)
            with distributed.autocast(device, precision):
                gen_scores = D(G_ddp(torch.randn(cfg.batch_size, mcfg.z_dim, device=device)))
            loss_g = generator_loss(gen_scores)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            if guard.finite(step, loss_g=loss_g, grads_g=squared_norm(G)):
                opt_g.step()
            D.requires_grad_(True)
            step += 1

            log.step(step, step_metrics(logged, norms, loss_g, D, gp) if write else {},
                     x.shape[0] * cfg.n_critic * env.world_size, write)
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                G.eval()
                log.images(step, sample(G, 64, z=fixed_z))
                G.train()
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del G_ddp, D_ddp  # DDP wrappers must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


def squared_norm(module: torch.nn.Module) -> torch.Tensor:
    """Sum of the squared gradients, inf when one overflows: a finite loss can have such gradients (--lr 1e8), and
    they would put inf into Adam's or RMSprop's second moments for good (no checkpoint could be written again)."""
    return sum((p.grad.float().square().sum() for p in module.parameters() if p.grad is not None), torch.zeros(()))


def logged_gradient_norm(critic: torch.nn.Module, x: torch.Tensor, fake: torch.Tensor, seed: int) -> torch.Tensor:
    """||grad f|| at random interpolates of the step's last critic batch (B,), for the clip variant's log: the
    critic in eval mode (BatchNorm's running statistics, which this forward leaves as they are) and alpha from a
    generator of its own, so that logging draws nothing from the streams training uses and changes no weights."""
    was_training = critic.training
    critic.eval()
    try:
        x_hat, _ = random_interpolates(x, fake, generator=torch.Generator().manual_seed(seed))
        return critic_gradient_norm(critic, x_hat)
    finally:
        critic.train(was_training)


def step_metrics(logged: list[torch.Tensor], norms: list[torch.Tensor], loss_g: torch.Tensor,
                 critic: torch.nn.Module, gp: bool) -> dict[str, float]:
    """Scalars of one step, averaged over its critic updates: the critic's loss, the Wasserstein estimate, the
    penalty (gp) and the critic's gradient norms at random interpolates (mean / std over samples)."""
    loss_d, w, penalty = torch.stack(logged).mean(0).tolist()
    norm = torch.cat(norms)
    metrics = {"loss_d": loss_d, "wasserstein": w, "loss_g": loss_g.item(), "grad_norm_mean": norm.mean().item(),
               "grad_norm_std": norm.std().item()}
    if gp:
        metrics["gradient_penalty"] = penalty
    else:
        metrics["critic_weight_max"] = max(p.abs().max().item() for p in critic.parameters())
    return metrics


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check, defaults=apply_variant_defaults))
