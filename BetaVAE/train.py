"""Train a beta-VAE on the embedded shapes dataset by default.  `python train.py --help` lists every flag.

    python train.py                                   # shapes, 32x32, the default setting, about 10 minutes on 2 cores
    python train.py --objective beta --beta 1         # the plain VAE (beta = 1), the sweep's baseline
    python train.py --objective capacity --gamma 1000 --capacity-max 25 --capacity-steps 100000  # Burgess
    python train.py --dataset mnist                   # embedded MNIST (also fashion-mnist, cifar10, folder:PATH)
    python train.py --image-size 64 --steps 100000    # the paper's 64x64 network (4 conv layers)
    python train.py --resume auto                     # continue the run in --out
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)
The run folder ends with traversal.png / traversal.gif (each latent varied over [-3, 3], rows by KL).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from model import BetaVAE, Config, beta_vae_loss, bernoulli_nll, capacity_loss, capacity_schedule, kl_per_dim
from model import reconstruct, sample, traverse
from sample import save_traversals, traversal_grid
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, load_dataset, to_float


@dataclass
class TrainConfig(cli.RunConfig):
    """Train a beta-VAE (Higgins et al. 2017) or its capacity form (Burgess et al. 2018). Core flags come from
    shared.cli; BetaVAE's own follow."""
    dataset: str = "shapes"  # mnist (embedded copy unless --data-root) | shapes | fashion-mnist | cifar10 | folder:PATH
    steps: int = 5000  # optimizer steps: about 10 minutes at 1 thread (8.9 steps/s measured on an idle core, README)
    out: str = "runs/betavae"  # run folder
    lr: float = 5e-4  # Adam learning rate (Burgess et al.: 5e-4)
    objective: str = "beta"  # beta: recon + beta KL (Higgins et al.) | capacity: recon + gamma |KL - C| (Burgess)
    beta: float = 4.0  # weight of the KL in --objective beta (1 = the plain VAE)
    gamma: float = 100.0  # weight of |KL - C| in --objective capacity (Burgess et al.: 1000; see EXPERIMENTS.md)
    capacity_max: float = 15.0  # C_max in nats, reached after --capacity-steps (Burgess et al.: 25 on dSprites)
    capacity_steps: int = 2500  # steps over which C rises linearly from 0 to C_max
    z_dim: int = Config.z_dim  # latent dimension
    width: int = Config.width  # channels of every conv layer
    hidden: int = Config.hidden  # units of the fully connected layers


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py)."""
    return Config(image_size=cfg.image_size, channels=channels, z_dim=cfg.z_dim, width=cfg.width,
                  hidden=cfg.hidden)


def check(cfg: TrainConfig) -> None:
    """BetaVAE-specific flag checks (ValueError -> one-line CLI error)."""
    model_config(cfg, channels=3)  # validates image_size
    if cfg.objective not in ("beta", "capacity"):
        raise ValueError(f"--objective must be beta or capacity, got {cfg.objective!r}")
    if min(cfg.z_dim, cfg.width, cfg.hidden) <= 0 or cfg.z_dim < 2:
        raise ValueError("--z-dim must be >= 2, --width and --hidden positive")
    if cfg.beta < 0 or cfg.gamma < 0 or cfg.capacity_max < 0 or cfg.capacity_steps < 0:
        raise ValueError("--beta, --gamma, --capacity-max and --capacity-steps must be >= 0")


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    held_out = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "test", cfg.download, cfg.seed)
    fixed_x = to_float(held_out.images[:256]).to(device)  # traversal bases and their KL order (fixed)
    mcfg = model_config(cfg, data.channels)
    torch.manual_seed(cfg.seed)
    vae = BetaVAE(mcfg).to(device)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own eps
    modules, optimizers = {"vae": vae}, {"opt": opt}
    step = training.resume(cfg, env, "BetaVAE", modules, optimizers, batches)
    fixed_z = torch.randn(64, mcfg.z_dim, generator=torch.Generator().manual_seed(cfg.seed))

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"BetaVAE {len(data)} {cfg.dataset} images, {precision}, {device}, {env.world_size} process(es), "
                f"{sum(p.numel() for p in vae.parameters()):,} parameters, {describe(cfg)}")
    saver = training.Saver(cfg, env, "BetaVAE", mcfg, modules, optimizers, batches, log)
    guard = training.NonFiniteGuard(env, log)
    vae_ddp = distributed.wrap(vae, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x = to_float(next(batches)[0].to(device))  # (B, C, H, W) in [-1, 1]
            with distributed.autocast(device, precision):
                logits, mu, logvar = vae_ddp(x)
            recon, kl_dims = bernoulli_nll(logits, x), kl_per_dim(mu, logvar)  # (B,), (B, z_dim), fp32
            kl = kl_dims.sum(1)
            capacity = capacity_schedule(step, cfg.capacity_max, cfg.capacity_steps)
            loss = (beta_vae_loss(recon, kl, cfg.beta) if cfg.objective == "beta" else
                    capacity_loss(recon, kl, cfg.gamma, capacity))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if guard.finite(step, loss=loss):
                opt.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss": loss.item(), "recon": recon.mean().item(), "kl": kl.mean().item(),
                       **({"capacity": capacity} if cfg.objective == "capacity" else {}),
                       **{f"kl_{j}": v for j, v in enumerate(kl_dims.mean(0).tolist())}} if write else {}
            log.step(step, metrics, x.shape[0] * env.world_size, write)
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                vae.eval()
                log.images(step, sample(vae, 64, z=fixed_z))
                log.images(step, torch.cat([fixed_x[:32], reconstruct(vae, fixed_x[:32])]), tag="reconstructions")
                images, order, kl_order = traverse(vae, fixed_x[:8], kl_images=fixed_x)
                log.images(step, traversal_grid(images[0]), tag="traversals", nrow=images.shape[2])
                if env.is_main and (step == cfg.steps or stopping):
                    save_traversals(images, order, kl_order, Path(cfg.out))  # traversal.png / .gif / .json
                vae.train()
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del vae_ddp  # DDP wrappers must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


def describe(cfg: TrainConfig) -> str:
    """The objective in one phrase, for the log."""
    if cfg.objective == "beta":
        return f"loss = recon + {cfg.beta:g} KL"
    return f"loss = recon + {cfg.gamma:g} |KL - C|, C: 0 -> {cfg.capacity_max:g} nats over {cfg.capacity_steps} steps"


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
