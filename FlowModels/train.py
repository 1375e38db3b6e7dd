"""Train RealNVP or Glow by maximum likelihood on the embedded MNIST copy by default.  `python train.py --help`
lists every flag.

    python train.py                                    # Glow, embedded MNIST 32x32: a 10-minute run (--minutes 10)
    python train.py --flow realnvp --depth 3 --lr 2e-3 # RealNVP (checkerboard + channel masks), README's run
    python train.py --preprocess "" --scale-fn ""      # Glow's own input scaling (x - 1/2) and sigmoid scales
    python train.py --coupling additive                # Glow with additive (NICE) couplings
    python train.py --dataset shapes                   # the embedded shapes dataset (RGB)
    python train.py --levels 3 --depth 32 --width 512 --lr 1e-3 --preprocess "" --scale-fn "" --minutes 0 \
        --steps 100000                                 # Glow's MNIST size
    python train.py --resume auto                      # continue the run in --out
    torchrun --nproc_per_node=2 train.py               # data-parallel (one process per core / GPU)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from model import Config, Flow, bits_per_dim, initialize, log_prob, sample
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, load_dataset
from shared.metrics import uniform_dequantize


@dataclass
class TrainConfig(cli.RunConfig):
    """Train a normalizing flow (RealNVP, Dinh et al. 2017; Glow, Kingma & Dhariwal 2018)."""
    steps: int = 100_000_000  # optimizer steps (the default run is bound by --minutes)
    minutes: float = 10.0  # wall-clock budget (0 = no limit): the default run is a 10-minute run
    out: str = "runs/flow"  # run folder
    batch_size: int = 64  # images per step per process
    lr: float = 3e-3  # Adam learning rate (Glow: 1e-3; 3e-3 was best in 2-minute probes: EXPERIMENTS.md)
    warmup: int = 50  # linear learning-rate warm-up over this many steps (Glow's code warms up too)
    grad_clip: float = 50.0  # clip the gradient norm to this (0 = off)
    flow: str = Config.flow  # glow | realnvp
    levels: int = Config.levels  # scales L
    depth: int = 4  # K per level: Glow steps / RealNVP couplings per mask type (Glow's MNIST model: 32)
    width: int = 64  # hidden channels of the coupling networks (Glow: 512)
    coupling: str = Config.coupling  # affine | additive
    scale_fn: str = "tanh"  # sigmoid | tanh ("" = the flow's paper choice: Glow sigmoid, RealNVP tanh)
    learned_prior: str = ""  # yes | no: learned prior of the factored-out z (default: Glow yes, RealNVP no)
    preprocess: str = "logit"  # center | logit ("" = the flow's paper choice: Glow center, RealNVP logit)
    init_batch: int = 256  # images of act-norm's data-dependent init (a fixed, seeded subset)
    temperature: float = 0.7  # temperature of the sample grids written during training
    sample_every: int = 250  # write a sample grid (fixed noise) every N steps


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py)."""
    return Config(flow=cfg.flow, image_size=cfg.image_size, channels=channels, levels=cfg.levels, depth=cfg.depth,
                  width=cfg.width, coupling=cfg.coupling, scale_fn=cfg.scale_fn, learned_prior=cfg.learned_prior,
                  preprocess=cfg.preprocess)


def check(cfg: TrainConfig) -> None:
    """Flow-specific flag checks (ValueError -> one-line CLI error)."""
    model_config(cfg, channels=1)  # validates flow, sizes and choices
    if cfg.warmup < 0 or not cfg.grad_clip >= 0 or cfg.init_batch < 1 or not cfg.temperature >= 0:
        raise ValueError("--warmup and --grad-clip must be >= 0, --init-batch >= 1, --temperature >= 0")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to --lr over --warmup steps, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


def init_images(data, n: int, seed: int) -> torch.Tensor:
    """A fixed, seeded dequantised batch for act-norm's init (its own generators: the training RNG is untouched)."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    return uniform_dequantize(data.images[idx], 0.0, 1.0, generator=torch.Generator().manual_seed(seed + 1))


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg = model_config(cfg, data.channels)
    torch.manual_seed(cfg.seed)
    flow = Flow(mcfg).to(device)
    opt = torch.optim.Adam(flow.parameters(), lr=cfg.lr)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own dequantisation noise
    step = training.resume(cfg, env, "FlowModels", {"flow": flow}, {"opt": opt}, batches)
    if step == 0:  # rank 0's init reaches every rank: DDP broadcasts the parameters when it wraps the flow
        initialize(flow, init_images(data, cfg.init_batch, cfg.seed).to(device))
    D = mcfg.num_dims

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"{mcfg.flow} {len(data)} {cfg.dataset} images, {precision}, {device}, {env.world_size} "
                f"process(es), {sum(p.numel() for p in flow.parameters()):,} parameters")
    saver = training.Saver(cfg, env, "FlowModels", mcfg, {"flow": flow}, {"opt": opt}, batches, log)
    guard = training.NonFiniteGuard(env, log)
    flow_ddp = distributed.wrap(flow, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x = uniform_dequantize(next(batches)[0].to(device), 0.0, 1.0)  # (B, C, H, W), (k + u) / 256
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)

            # Maximum likelihood: minimise bits/dim = -log p(x) / (D ln 2) + 8 (Glow Eq. 2 with a = 1/256).
            with distributed.autocast(device, precision):
                loss = bits_per_dim(-log_prob(flow_ddp, x), D).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), cfg.grad_clip or float("inf"))
            if guard.finite(step, loss=loss):
                opt.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"bits_per_dim": loss.item(), "grad_norm": grad_norm.item(),
                       "lr": opt.param_groups[0]["lr"]} if write else {}
            log.step(step, metrics, x.shape[0] * env.world_size, write)
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                gen = torch.Generator().manual_seed(cfg.seed)  # the same z every time; the global RNG untouched
                log.images(step, sample(flow, 64, cfg.temperature, generator=gen))
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del flow_ddp  # the DDP wrapper must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
