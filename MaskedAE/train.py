"""Train a masked autoencoder (MAE) on the embedded MNIST copy by default.  `python train.py --help` lists every flag.

    python train.py                                   # embedded MNIST, 28x28, patch 4, mask 0.75: 10 minutes on 2 cores
    python train.py --norm-pix-loss                   # per-patch normalised targets (the paper's default)
    python train.py --mask-ratio 0.5                  # another mask ratio
    python train.py --dataset shapes --image-size 32  # RGB shapes, 8x8 patches of 4x4
    python train.py --resume auto                     # continue the run in --out
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from model import Config, MaskedAutoencoder, mae_loss, random_masking, reconstruct
from sample import masked_view, panel
from shared import cli, dist as distributed, training
from shared.data import BatchIterator, load_dataset, to_float
from shared.run import RunLog

MONITOR_IMAGES = 8  # fixed held-out test images in the reconstruction panels


@dataclass
class TrainConfig(cli.RunConfig):
    """Train a masked autoencoder (He et al. 2022). Core flags come from shared.cli; MAE's own follow."""
    image_size: int = 28  # images are resized to image_size x image_size (MNIST's own 28)
    batch_size: int = 128  # images per step per process
    steps: int = 100_000_000  # optimizer steps; the default run is bound by --minutes instead
    minutes: float = 10.0  # wall-clock budget (the default run: 10 minutes, README; 0 = until --steps)
    out: str = "runs/mae"  # run folder
    precision: str = "fp32"  # fp32 | bf16 | auto; fp32 by default: bf16 autocast measured slower for these small matmuls (README)
    lr: float = 1.5e-3  # peak AdamW learning rate after warm-up (paper: 1.5e-4 * batch / 256 for ViT-B on ImageNet)
    min_lr: float = 1e-5  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps to lr (paper: 40 of 800 epochs)
    decay_steps: int = 1300  # length of warm-up + cosine decay; after it lr stays at --min-lr. The default is about
    #                          10 minutes of steps on one shared CPU thread; --steps below it shortens the schedule
    weight_decay: float = 0.05  # AdamW weight decay, not on biases, norms and tokens (paper: 0.05)
    beta1: float = 0.9  # AdamW beta1 (paper: 0.9)
    beta2: float = 0.95  # AdamW beta2 (paper: 0.95)
    patch_size: int = Config.patch_size  # p: patches of p x p pixels
    dim: int = Config.dim  # encoder width
    depth: int = Config.depth  # encoder blocks
    heads: int = Config.heads  # encoder attention heads
    decoder_dim: int = Config.decoder_dim  # decoder width
    decoder_depth: int = Config.decoder_depth  # decoder blocks
    decoder_heads: int = Config.decoder_heads  # decoder attention heads
    mask_ratio: float = Config.mask_ratio  # share of patches masked in training (paper: 0.75)
    norm_pix_loss: bool = False  # targets normalised by each patch's mean and std (paper's default; see README)
    sample_every: int = 200  # write a reconstruction panel of fixed held-out images every N steps


def model_config(cfg: TrainConfig, channels: int) -> Config:
    """The network hyper-parameters of this run (saved in checkpoints, used by sample.py / evaluate.py)."""
    return Config(image_size=cfg.image_size, channels=channels, patch_size=cfg.patch_size, dim=cfg.dim,
                  depth=cfg.depth, heads=cfg.heads, decoder_dim=cfg.decoder_dim, decoder_depth=cfg.decoder_depth,
                  decoder_heads=cfg.decoder_heads, mask_ratio=cfg.mask_ratio, norm_pix_loss=cfg.norm_pix_loss)


def build(mcfg: Config, seed: int) -> MaskedAutoencoder:
    """The MAE initialised from `seed` (evaluate.py rebuilds the untrained twin the same way as a baseline)."""
    torch.manual_seed(seed)
    return MaskedAutoencoder(mcfg)


def check(cfg: TrainConfig) -> None:
    """MAE-specific flag checks (ValueError -> one-line CLI error)."""
    if min(cfg.patch_size, cfg.dim, cfg.depth, cfg.heads, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads) <= 0:
        raise ValueError("--patch-size, --dim, --depth, --heads and the --decoder-* sizes must be positive")
    model_config(cfg, channels=3)  # validates patch size, head counts, mask ratio
    if cfg.warmup_steps < 0 or cfg.decay_steps <= 0 or not 0 <= cfg.min_lr <= cfg.lr:
        raise ValueError("--warmup-steps must be >= 0, --decay-steps > 0 and 0 <= --min-lr <= --lr")
    if not (cfg.weight_decay >= 0 and 0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1):
        raise ValueError("--weight-decay must be >= 0 and --beta1, --beta2 in [0, 1)")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """lr of update `step` (0-based): linear warm-up, then half-cycle cosine from lr to min_lr over the schedule
    (min(decay_steps, steps) updates), then min_lr (the official code's lr_sched, per step instead of per epoch)."""
    total = min(cfg.decay_steps, cfg.steps)
    warmup = min(cfg.warmup_steps, total)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on the weight matrices only: not on biases, LayerNorms, the cls and mask tokens (as the paper's
    code, timm's param_groups_weight_decay)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith("token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def main(cfg: TrainConfig) -> Path:
    """Train, checkpointing to cfg.out; returns the run folder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg = model_config(cfg, data.channels)
    model = build(mcfg, cfg.seed).to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own masks
    modules, optimizers = {"mae": model}, {"opt": opt}
    step = training.resume(cfg, env, "MaskedAE", modules, optimizers, batches)
    monitor_x, monitor_mask = monitor_set(cfg, mcfg, device)

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"MaskedAE {len(data)} {cfg.dataset} images, {mcfg.num_patches} patches of {mcfg.patch_size}x"
                f"{mcfg.patch_size}, mask ratio {mcfg.mask_ratio}, {precision}, {device}, {env.world_size} "
                f"process(es), encoder {n_params(model.encoder):,} / decoder {n_params(model.decoder):,} parameters")
    saver = training.Saver(cfg, env, "MaskedAE", mcfg, modules, optimizers, batches, log)
    guard = training.NonFiniteGuard(env, log)
    model_ddp = distributed.wrap(model, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x = to_float(next(batches)[0].to(device))  # (B, C, H, W) in [-1, 1]
            lr = learning_rate(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr

            # encode the visible 1 - r of the patches, decode all, MSE on the masked ones (mask from the global RNG)
            with distributed.autocast(device, precision):
                loss, _, _ = mae_loss(model_ddp, mcfg, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if guard.finite(step, loss=loss):
                opt.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            log.step(step, {"loss": loss.item(), "lr": lr} if write else {}, x.shape[0] * env.world_size, write)
            stopping = stop.poll()  # agreed by every rank: a signal on any of them, or the --minutes budget
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                monitor(log, step, model, monitor_x, monitor_mask)
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del model_ddp  # the DDP wrapper must be gone before the process group is destroyed
    return training.finish(step, cfg, env, saver, stop, log)


def monitor_set(cfg: TrainConfig, mcfg: Config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed held-out test images and their fixed masks (own generators: the training RNG is not touched)."""
    test = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "test", seed=0)
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(cfg.seed))[:MONITOR_IMAGES]
    _, mask = random_masking(len(idx), mcfg.num_patches, mcfg.mask_ratio,
                             generator=torch.Generator().manual_seed(cfg.seed + 1))
    return to_float(test.images[idx]).to(device), mask.to(device)


def monitor(log: RunLog, step: int, model: MaskedAutoencoder, x: torch.Tensor, mask: torch.Tensor) -> None:
    """Reconstruction panel (rows: original, masked, reconstruction, pasted) of the fixed held-out images under
    their fixed masks (no RNG drawn)."""
    model.eval()
    rec, pasted = reconstruct(model, x, mask)
    log.images(step, panel(x, masked_view(x, mask, model.cfg.patch_size), rec, pasted), nrow=len(x))
    model.train()


# Copied from DCGAN/train.py: n_params
def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
