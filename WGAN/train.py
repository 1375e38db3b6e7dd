"""Train WGAN-GP (default) or the original weight-clipped WGAN.  `python train.py --help` lists every flag.

    python train.py                                                # WGAN-GP on shapes, 32x32
    python train.py --variant clip                                 # original WGAN: clipping, RMSprop 5e-5
    python train.py --dataset mnist --data-root ../shared/datasets # MNIST digits
    torchrun --nproc_per_node=2 train.py                           # data-parallel (one process per core / GPU)

One step = one generator update, preceded by --n-critic critic updates, each on a fresh real batch and fresh z
(Algorithm 1 of both papers). Checkpoints fall on step boundaries, so a resumed run continues the interleaving
exactly: the next thing it does is the first critic update of the next step.
"""
# Adapted from DCGAN/train.py: same run plumbing (flags, checkpoint, resume, logging), WGAN's networks and objective.
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model import (VARIANTS, Config, Critic, Generator, clip_weights, critic_gradient_norm, critic_loss,
                   generator_loss, gradient_penalty, random_interpolates, sample, wasserstein_estimate)
from shared import checkpoint, cli, dist as distributed
from shared.data import BatchIterator, DataError, load_dataset, to_float
from shared.run import RunLog, save_config

# --lr when not given: clip uses Arjovsky et al.'s RMSprop 5e-5; gp uses 3e-4, not Gulrajani et al.'s 1e-4, because at
# 1e-4 a 10-minute CPU run is still at the grey-blob stage (README, Results).
DEFAULT_LR = {"gp": 3e-4, "clip": 5e-5}
# --n-critic when not given: clip keeps both papers' 5 (clipping needs a near-optimal critic); gp uses 1 with a critic
# learning twice as fast as G (--lr-d 6e-4, Heusel et al.'s two time-scale rule): a 10-minute CPU run then makes ~5x
# the generator updates of n_critic 5 and reaches MNIST FID 24-37 instead of 65 at n_critic 2 (README, Results).
DEFAULT_N_CRITIC = {"gp": 1, "clip": 5}
# --lr-d when not given (0 = --lr, as in both papers): gp 6e-4, clip 0.
DEFAULT_LR_D = {"gp": 6e-4, "clip": 0.0}
CRITIC_NORM = {"gp": "none", "clip": "batch"}  # --critic-norm auto: the authors' DCGAN critics


@dataclass
class TrainConfig(cli.RunConfig):
    """Train WGAN (Arjovsky et al. 2017) / WGAN-GP (Gulrajani et al. 2017). Core flags come from shared.cli."""
    steps: int = 1000  # generator updates (each after --n-critic critic updates)
    out: str = "runs/wgan"  # run folder
    variant: str = "gp"  # gp: gradient penalty, Adam | clip: weight clipping, RMSprop (the original WGAN)
    lr: float = DEFAULT_LR["gp"]  # learning rate of G and critic (if not given: gp 3e-4, clip 5e-5; papers: 1e-4, 5e-5)
    lr_d: float = DEFAULT_LR_D["gp"]  # the critic's own learning rate (if not given: gp 6e-4, clip 0); 0 = --lr (papers)
    beta1: float = 0.0  # Adam beta1, gp only (paper: 0)
    beta2: float = 0.9  # Adam beta2, gp only (paper: 0.9)
    n_critic: int = DEFAULT_N_CRITIC["gp"]  # critic updates per generator update (if not given: gp 1, clip 5; papers: 5)
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


def check(cfg: TrainConfig) -> None:
    """WGAN-specific flag checks (ValueError -> one-line CLI error)."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"--variant must be one of {', '.join(VARIANTS)}, got {cfg.variant!r}")
    if cfg.critic_norm != "auto":
        model_config(cfg, channels=3)  # validates image_size and the critic_norm name
    if cfg.variant == "gp" and model_config(cfg, channels=3).critic_norm == "batch":
        raise ValueError("--variant gp penalises per-sample gradients: use --critic-norm layer or none, not batch")
    if min(cfg.z_dim, cfg.g_width, cfg.d_width, cfg.n_critic) <= 0:
        raise ValueError("--z-dim, --g-width, --d-width and --n-critic must be positive")
    if cfg.gp_weight < 0 or cfg.clip <= 0:
        raise ValueError("--gp-weight must be >= 0 and --clip positive")
    if cfg.lr <= 0 or cfg.lr_d < 0:
        raise ValueError("--lr must be > 0 and --lr-d >= 0 (0 = --lr)")


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg, gp = model_config(cfg, data.channels), cfg.variant == "gp"
    torch.manual_seed(cfg.seed)
    G, D = Generator(mcfg).to(device, memory_format=fmt), Critic(mcfg).to(device, memory_format=fmt)
    if gp:
        opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d or cfg.lr, betas=(cfg.beta1, cfg.beta2))
    else:
        opt_g = torch.optim.RMSprop(G.parameters(), lr=cfg.lr)
        opt_d = torch.optim.RMSprop(D.parameters(), lr=cfg.lr_d or cfg.lr)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own z and alpha
    step, critic_updates = resume(cfg, env, G, D, opt_g, opt_d, batches)
    fixed_z = torch.randn(64, mcfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))

    def state() -> dict:
        rngs = distributed.gather_objects(checkpoint.rng_state(), env)
        return {"model": "WGAN", "step": step, "critic_updates": critic_updates, "config": dataclasses.asdict(cfg),
                "model_config": dataclasses.asdict(mcfg), "G": G.state_dict(), "D": D.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "data": batches.state_dict(),
                "rng": rngs, "world_size": env.world_size, "versions": checkpoint.versions()}

    if env.is_main:
        save_config(cfg.out, {**dataclasses.asdict(cfg), "model_config": dataclasses.asdict(mcfg),
                              "precision_resolved": precision, "world_size": env.world_size})
    log = RunLog(cfg.out, cfg.steps, start_step=step, enabled=env.is_main)
    log.message(f"WGAN-{cfg.variant} {data.images.shape[0]} {cfg.dataset} images, {precision}, {device}, "
                f"{env.world_size} process(es), critic norm {mcfg.critic_norm}, "
                f"G {n_params(G):,} / critic {n_params(D):,} parameters")
    G_ddp, D_ddp = distributed.wrap(G, env), distributed.wrap(D, env)
    start, stopped_early = time.perf_counter(), False
    with checkpoint.StopSignal() as stop:
        while step < cfg.steps:
            write = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
            logged: list[torch.Tensor] = []  # per critic update: [W estimate, penalty]; grad norms separately
            norms: list[torch.Tensor] = []
            for _ in range(cfg.n_critic):  # critic updates: ascend E[f(x)] - E[f(G(z))] (- lambda GP)
                x = to_float(next(batches)[0].to(device)).contiguous(memory_format=fmt)  # (B, C, H, W) in [-1, 1]
                with torch.no_grad(), distributed.autocast(device, precision):
                    fake = G_ddp(torch.randn(x.shape[0], mcfg.z_dim, device=device)).float()
                with distributed.autocast(device, precision):
                    real_scores, fake_scores = D_ddp(x), D_ddp(fake)
                loss_d = critic_loss(real_scores, fake_scores)
                penalty = torch.zeros((), device=device)
                if gp:
                    with distributed.autocast(device, precision):
                        penalty, grad_norm = gradient_penalty(D_ddp, random_interpolates(x, fake)[0])
                    loss_d = loss_d + cfg.gp_weight * penalty
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                opt_d.step()
                if not gp:
                    clip_weights(D, cfg.clip)  # Algorithm 1 line 7, after every critic update
                    if write:  # measured only for the log: how far clipping is from a unit gradient norm
                        grad_norm = critic_gradient_norm(D_ddp, random_interpolates(x, fake)[0])
                critic_updates += 1
                if write:
                    logged.append(torch.stack([wasserstein_estimate(real_scores, fake_scores).detach(),
                                               penalty.detach()]))
                    norms.append(grad_norm.detach())

            # Generator update: descend -E[f(G(z))] through the critic, whose weights are frozen for it.
            D.requires_grad_(False)
            with distributed.autocast(device, precision):
                gen_scores = D(G_ddp(torch.randn(cfg.batch_size, mcfg.z_dim, device=device)))
            loss_g = generator_loss(gen_scores)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            step += 1

            metrics = step_metrics(logged, norms, loss_g, D, gp) if write else {}
            log.step(step, metrics, x.shape[0] * cfg.n_critic * env.world_size, write)
            out_of_time = cfg.minutes > 0 and time.perf_counter() - start > cfg.minutes * 60
            if step % cfg.sample_every == 0 or step == cfg.steps or stop.requested or out_of_time:
                G.eval()
                log.images(step, sample(G, 64, z=fixed_z))
                G.train()
            if step % cfg.ckpt_every == 0 or stop.requested or out_of_time:
                save_checkpoint(cfg.out, state(), env, periodic=step % cfg.ckpt_every == 0)
            if stop.requested or out_of_time:
                stopped_early = True
                log.message(f"stopping at step {step} ({'signal' if stop.requested else 'time budget'}); "
                            f"checkpoint saved, continue with --resume auto")
                break
    if not stopped_early and (step == 0 or step % cfg.ckpt_every):
        save_checkpoint(cfg.out, state(), env, periodic=False)
    log.close()
    del G_ddp, D_ddp  # DDP wrappers must be gone before the process group is destroyed
    distributed.teardown(env)
    return Path(cfg.out)


def step_metrics(logged: list[torch.Tensor], norms: list[torch.Tensor], loss_g: torch.Tensor,
                 critic: torch.nn.Module, gp: bool) -> dict[str, float]:
    """Scalars of one step, averaged over its critic updates: the Wasserstein estimate, the penalty and the
    critic's gradient norms at random interpolates (mean/std over samples)."""
    w, penalty = torch.stack(logged).mean(0).tolist()
    norm = torch.cat(norms)
    metrics = {"wasserstein": w, "loss_g": loss_g.item(), "grad_norm_mean": norm.mean().item(),
               "grad_norm_std": norm.std().item()}
    if gp:
        metrics["gradient_penalty"] = penalty
    else:
        metrics["critic_weight_max"] = max(p.abs().max().item() for p in critic.parameters())
    return metrics


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_checkpoint(out: str, state: dict, env: distributed.Dist, periodic: bool) -> None:
    """Rank 0 writes; everyone waits so no process races ahead of a half-written checkpoint."""
    if env.is_main:
        checkpoint.save_run_checkpoint(out, state, periodic=periodic)
    distributed.barrier(env)


def resume(cfg: TrainConfig, env: distributed.Dist, G, D, opt_g, opt_d, batches: BatchIterator) -> tuple[int, int]:
    """Restore the full training state if asked (--resume auto|PATH); returns (step, critic updates so far)."""
    if not cfg.resume:
        return 0, 0
    path = checkpoint.latest(cfg.out) if cfg.resume == "auto" else cfg.resume
    if path is None:
        return 0, 0  # --resume auto with nothing to resume: a fresh run
    state = checkpoint.load(path, model="WGAN", map_location=env.device)
    if state["config"]["variant"] != cfg.variant:
        raise checkpoint.CheckpointError(f"{path} was trained with --variant {state['config']['variant']}, "
                                         f"not {cfg.variant}")
    try:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
    except RuntimeError as e:
        raise checkpoint.CheckpointError(f"{path} was trained with other network sizes than these flags "
                                         f"({str(e).splitlines()[0][:120]})") from None
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    batches.load_state_dict(state["data"])
    if state.get("world_size", 1) == env.world_size:
        checkpoint.set_rng_state(state["rng"][env.rank])
    else:  # a different process count cannot replay the same noise; continue with fresh, seeded streams
        torch.manual_seed(cfg.seed + env.rank + 1_000_003 * state["step"])
    return state["step"], state["critic_updates"]


def apply_variant_defaults(cfg: TrainConfig, argv: list[str]) -> TrainConfig:
    """--lr / --lr-d / --n-critic not given on the command line -> the chosen variant's default (DEFAULT_LR, ...)."""
    def given(flag: str) -> bool:
        return any(a == flag or a.startswith(flag + "=") for a in argv)
    defaults = {"lr": DEFAULT_LR, "lr_d": DEFAULT_LR_D, "n_critic": DEFAULT_N_CRITIC}
    return dataclasses.replace(cfg, **{field: table[cfg.variant] for field, table in defaults.items()
                                       if not given("--" + field.replace("_", "-"))})


if __name__ == "__main__":
    config = apply_variant_defaults(cli.parse(TrainConfig, check=check), sys.argv[1:])
    try:
        main(config)
    except (DataError, checkpoint.CheckpointError) as err:
        cli.fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
