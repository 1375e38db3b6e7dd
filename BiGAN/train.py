"""Train BiGAN / ALI.  `python train.py --help` lists every flag.

    python train.py                                                # shapes, 32x32, ~6-10 minutes on 2 CPU cores
    python train.py --dataset mnist --data-root ../shared/datasets # MNIST digits
    python train.py --encoder gaussian                             # ALI's reparameterised Gaussian encoder
    torchrun --nproc_per_node=2 train.py                           # data-parallel (one process per core / GPU)
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model import (Config, Discriminator, Encoder, Generator, discriminator_loss, encoder_generator_loss,
                   judge_pairs, reconstruct, sample)
from shared import checkpoint, cli, dist as distributed
from shared.data import BatchIterator, DataError, load_dataset, to_float
from shared.run import RunLog, save_config


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
    step = resume(cfg, env, G, E, D, opt_eg, opt_d, batches)
    fixed_z = torch.randn(64, mcfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))
    monitor_idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))[:32]
    fixed_x = to_float(data.images[monitor_idx]).to(device)  # 32 fixed training images for the reconstruction monitor

    def state() -> dict:
        rngs = distributed.gather_objects(checkpoint.rng_state(), env)
        return {"model": "BiGAN", "step": step, "config": dataclasses.asdict(cfg),
                "model_config": dataclasses.asdict(mcfg), "G": G.state_dict(), "E": E.state_dict(),
                "D": D.state_dict(), "opt_eg": opt_eg.state_dict(), "opt_d": opt_d.state_dict(),
                "data": batches.state_dict(), "rng": rngs, "world_size": env.world_size,
                "versions": checkpoint.versions()}

    if env.is_main:
        save_config(cfg.out, {**dataclasses.asdict(cfg), "model_config": dataclasses.asdict(mcfg),
                              "precision_resolved": precision, "world_size": env.world_size})
    log = RunLog(cfg.out, cfg.steps, start_step=step, enabled=env.is_main)
    log.message(f"BiGAN {data.images.shape[0]} {cfg.dataset} images, {precision}, {device}, {env.world_size} "
                f"process(es), G {n_params(G):,} / E {n_params(E):,} / D {n_params(D):,} parameters")
    G_ddp, E_ddp, D_ddp = (distributed.wrap(net, env) for net in (G, E, D))
    start, stopped_early = time.perf_counter(), False
    with checkpoint.StopSignal() as stop:
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
            opt_d.step()

            # E/G step through the just-updated D, labels swapped (non-saturating): E moves the real pair's z,
            # G the fake pair's x.
            with distributed.autocast(device, precision):
                eg_real_logits, eg_fake_logits = judge_pairs(D_ddp, x, z_real, x_fake, z)
            loss_eg = encoder_generator_loss(eg_real_logits, eg_fake_logits)
            opt_eg.zero_grad(set_to_none=True)
            loss_eg.backward()
            opt_eg.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss_d": loss_d.item(), "loss_eg": loss_eg.item(),
                       "d_real": torch.sigmoid(real_logits.float()).mean().item(),
                       "d_fake": torch.sigmoid(fake_logits.float()).mean().item(),
                       "code_std": z_real.float().std().item()} if write else {}
            log.step(step, metrics, x.shape[0] * env.world_size, write)
            out_of_time = cfg.minutes > 0 and time.perf_counter() - start > cfg.minutes * 60
            if step % cfg.sample_every == 0 or step == cfg.steps or stop.requested or out_of_time:
                monitor(log, step, G, E, fixed_z, fixed_x)
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
    del G_ddp, E_ddp, D_ddp  # DDP wrappers must be gone before the process group is destroyed
    distributed.teardown(env)
    return Path(cfg.out)


def monitor(log: RunLog, step: int, G: Generator, E: Encoder, fixed_z: torch.Tensor, fixed_x: torch.Tensor) -> None:
    """Sample grid from fixed noise; reconstruction grid (rows of x, then G(E(x))) of fixed training images."""
    G.eval(), E.eval()
    log.images(step, sample(G, len(fixed_z), z=fixed_z))
    x_rec = reconstruct(G, E, fixed_x)
    rows = torch.stack([fixed_x.view(4, 8, *fixed_x.shape[1:]), x_rec.view(4, 8, *fixed_x.shape[1:])], dim=1)
    log.images(step, rows.flatten(0, 2), tag="reconstructions", nrow=8)  # (4, 2, 8, C, H, W) -> (64, C, H, W)
    log.message(f"step {step}: reconstruction MSE of 32 fixed training images "
                f"{(x_rec - fixed_x).square().mean().item():.4f}")
    G.train(), E.train()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_checkpoint(out: str, state: dict, env: distributed.Dist, periodic: bool) -> None:
    """Rank 0 writes; everyone waits so no process races ahead of a half-written checkpoint."""
    if env.is_main:
        checkpoint.save_run_checkpoint(out, state, periodic=periodic)
    distributed.barrier(env)


# Adapted from DCGAN/train.py (resume): three networks and the joint E/G optimiser.
def resume(cfg: TrainConfig, env: distributed.Dist, G, E, D, opt_eg, opt_d, batches: BatchIterator) -> int:
    """Restore the full training state if asked (--resume auto|PATH); returns the step to continue from."""
    if not cfg.resume:
        return 0
    path = checkpoint.latest(cfg.out) if cfg.resume == "auto" else cfg.resume
    if path is None:
        return 0  # --resume auto with nothing to resume: a fresh run
    state = checkpoint.load(path, model="BiGAN", map_location=env.device)
    try:
        for name, net in (("G", G), ("E", E), ("D", D)):
            net.load_state_dict(state[name])
    except RuntimeError as e:
        raise checkpoint.CheckpointError(f"{path} was trained with other network sizes than these flags "
                                         f"({str(e).splitlines()[0][:120]})") from None
    opt_eg.load_state_dict(state["opt_eg"])
    opt_d.load_state_dict(state["opt_d"])
    batches.load_state_dict(state["data"])
    if state.get("world_size", 1) == env.world_size:
        checkpoint.set_rng_state(state["rng"][env.rank])
    else:  # a different process count cannot replay the same noise; continue with fresh, seeded streams
        torch.manual_seed(cfg.seed + env.rank + 1_000_003 * state["step"])
    return state["step"]


if __name__ == "__main__":
    config = cli.parse(TrainConfig, check=check)
    try:
        main(config)
    except (DataError, checkpoint.CheckpointError) as err:
        cli.fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
