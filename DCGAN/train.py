"""Train DCGAN.  `python train.py --help` lists every flag.

    python train.py                                                # shapes, 32x32, 3000 steps, ~5-7 minutes on 2 CPU cores
    python train.py --dataset mnist --data-root ../shared/datasets # MNIST digits
    python train.py --image-size 64 --steps 20000                  # the paper's 64x64 network
    torchrun --nproc_per_node=2 train.py                           # data-parallel (one process per core / GPU)
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model import Config, Discriminator, Generator, discriminator_loss, generator_loss, sample
from shared import checkpoint, cli, dist as distributed
from shared.data import BatchIterator, DataError, load_dataset, to_float
from shared.run import RunLog, save_config


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


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py)."""
    return Config(image_size=cfg.image_size, channels=channels, z_dim=cfg.z_dim,
                  g_width=cfg.g_width, d_width=cfg.d_width)


def check(cfg: TrainConfig) -> None:
    """DCGAN-specific flag checks (ValueError -> one-line CLI error)."""
    model_config(cfg, channels=3)  # validates image_size
    if min(cfg.z_dim, cfg.g_width, cfg.d_width) <= 0:
        raise ValueError("--z-dim, --g-width and --d-width must be positive")


class CollapseWatch:
    """Warns when D has won outright, the failure that ends long runs on shapes (README, "Known limits").

    update() returns a warning, once per episode, when every D(G(z)) logged over the last `span` steps is below
    `threshold`. The defaults come from measured shapes and MNIST runs: in the 10-minute runs and the first 10,000
    steps of the 45-minute shapes run, every 500-step stretch logged a D(G(z)) of 0.06 or more; that 45-minute run
    logged none above 0.01 after step 10,450 and G drew one image for every z by step 12,500. Replayed through
    this class, its metrics.jsonl warns at step 10,950.
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
    step = resume(cfg, env, G, D, opt_g, opt_d, batches)
    fixed_z = torch.randn(64, mcfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))

    def state() -> dict:
        rngs = distributed.gather_objects(checkpoint.rng_state(), env)
        return {"model": "DCGAN", "step": step, "config": dataclasses.asdict(cfg),
                "model_config": dataclasses.asdict(mcfg), "G": G.state_dict(), "D": D.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "data": batches.state_dict(),
                "rng": rngs, "world_size": env.world_size, "versions": checkpoint.versions()}

    if env.is_main:
        save_config(cfg.out, {**dataclasses.asdict(cfg), "model_config": dataclasses.asdict(mcfg),
                              "precision_resolved": precision, "world_size": env.world_size})
    log = RunLog(cfg.out, cfg.steps, start_step=step, enabled=env.is_main)
    log.message(f"DCGAN {data.images.shape[0]} {cfg.dataset} images, {precision}, {device}, "
                f"{env.world_size} process(es), G {n_params(G):,} / D {n_params(D):,} parameters")
    G_ddp, D_ddp = distributed.wrap(G, env), distributed.wrap(D, env)
    watch = CollapseWatch(step)
    start, stopped_early = time.perf_counter(), False
    with checkpoint.StopSignal() as stop:
        while step < cfg.steps:
            x = to_float(next(batches)[0].to(device)).contiguous(memory_format=fmt)  # (B, C, H, W) in [-1, 1]
            z = torch.randn(x.shape[0], mcfg.z_dim, device=device)

            # D step: ascend log sigma(D(x)) + log(1 - sigma(D(G(z)))); G(z) is detached (G is not updated).
            with distributed.autocast(device, precision):
                fake = G_ddp(z)
                real_logits, fake_logits = D_ddp(x), D_ddp(fake.detach())
            loss_d = discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

            # G step: non-saturating, descend -log sigma(D(G(z))) through the just-updated D.
            with distributed.autocast(device, precision):
                gen_logits = D_ddp(fake)
            loss_g = generator_loss(gen_logits)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss_d": loss_d.item(), "loss_g": loss_g.item(),
                       "d_real": torch.sigmoid(real_logits.float()).mean().item(),
                       "d_fake": torch.sigmoid(fake_logits.float()).mean().item()} if write else {}
            log.step(step, metrics, x.shape[0] * env.world_size, write)
            if write and (warning := watch.update(step, metrics["d_fake"])):
                log.message(warning)
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


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def save_checkpoint(out: str, state: dict, env: distributed.Dist, periodic: bool) -> None:
    """Rank 0 writes; everyone waits so no process races ahead of a half-written checkpoint."""
    if env.is_main:
        checkpoint.save_run_checkpoint(out, state, periodic=periodic)
    distributed.barrier(env)


def resume(cfg: TrainConfig, env: distributed.Dist, G, D, opt_g, opt_d, batches: BatchIterator) -> int:
    """Restore the full training state if asked (--resume auto|PATH); returns the step to continue from."""
    if not cfg.resume:
        return 0
    path = checkpoint.latest(cfg.out) if cfg.resume == "auto" else cfg.resume
    if path is None:
        return 0  # --resume auto with nothing to resume: a fresh run
    state = checkpoint.load(path, model="DCGAN", map_location=env.device)
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
    return state["step"]


if __name__ == "__main__":
    config = cli.parse(TrainConfig, check=check)
    try:
        main(config)
    except (DataError, checkpoint.CheckpointError) as err:
        cli.fail(str(err).splitlines()[0] if str(err) else type(err).__name__)
