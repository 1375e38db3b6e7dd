"""Train a latent diffusion model (autoencoder, then diffusion on its latents) on the embedded MNIST by default.

    python train.py                                     # both stages, about 10 minutes on one CPU thread
    python train.py --minutes 10 --steps 100000000      # both stages in 10 minutes: 30% autoencoder, 70% diffusion
    python train.py --stage autoencoder --out runs/a    # stage 1 only -> runs/a/autoencoder
    python train.py --stage diffusion --out runs/a      # stage 2 only, on the latents of runs/a/autoencoder
    python train.py --stage diffusion --autoencoder runs/a --out runs/b   # another diffusion on the same autoencoder
    python train.py --class-cond --guidance 3           # class-conditional with classifier-free guidance
    python train.py --factor 8 --latent-channels 8      # f = 8: 4x4 latents at 32x32
    python train.py --resume auto                       # continue whichever stage is unfinished in --out
    torchrun --nproc_per_node=2 train.py                # data-parallel (one process per core / GPU)

Each stage is its own run folder under --out (autoencoder/ and diffusion/: config.json, metrics.jsonl,
checkpoints, samples/, progress.gif). Stage 1's samples/ grids show fixed training images (odd rows) above
their reconstructions (even rows). Stage 2 encodes the training set once with the frozen autoencoder (mean and
log-variance of q(z|x); each step draws z from them), sets the latent scale s = 1 / std of a batch of latents,
and trains the U-Net on s z; its samples/ are decoded DDIM samples of the EMA U-Net from fixed noise.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from model import (PREDICTIONS, RECONSTRUCTIONS, SCHEDULES, Config, drop_labels, ema_update, kl_divergence, l_simple,
                   latent_scale, reconstruct, reconstruction_loss, sample, schedule_of)
from networks import Autoencoder, UNet
from shared import checkpoint, cli, dist as distributed, training
from shared.data import BatchIterator, ImageData, load_dataset, to_float

MODEL = "LatentDiffusion"
AE_NETWORK = ("factor", "latent_channels", "ae_width", "ae_blocks")  # must match between the stages
AE_TRAINING = ("kl_weight", "reconstruction")  # stage 2 records the autoencoder's values


@dataclass
class TrainConfig(cli.RunConfig):
    """Train a latent diffusion model (Rombach et al. 2022): a KL autoencoder, then DDPM on its latents."""
    stage: str = "both"  # autoencoder | diffusion | both (stage 1, then stage 2 on its latents)
    autoencoder: str = ""  # stage diffusion: a --out folder, its autoencoder/ run or a checkpoint; default OUT/autoencoder
    diffusion_share: float = 0.7  # --stage both with --minutes: stage 2's share of the budget (stage 1 gets the rest)
    steps: int = 300  # autoencoder steps (stage 1; the 10-minute dev run made 280 in its 3 minutes)
    diffusion_steps: int = 0  # diffusion steps (stage 2; 0 = 4 x --steps: the dev run made 1,280 in 7 minutes)
    out: str = "runs/ldm"  # run folder: OUT/autoencoder and OUT/diffusion
    batch_size: int = 32  # images per autoencoder step per process
    diffusion_batch_size: int = 64  # latents per diffusion step per process
    lr: float = 1e-3  # Adam learning rate of the autoencoder (paper: 4.5e-6 x batch)
    lr_diffusion: float = 1e-3  # Adam learning rate of the U-Net (paper LDM-4: 1e-4 to 2e-4 for larger nets)
    factor: int = Config.factor  # f, downsampling factor (power of 2; paper: 4, 8, 16, ...)
    latent_channels: int = Config.latent_channels  # c, latent channels (paper KL-f4: 3)
    ae_width: int = Config.ae_width  # autoencoder channels at full resolution (paper: 128)
    ae_blocks: int = Config.ae_blocks  # residual blocks per autoencoder level (paper: 2)
    kl_weight: float = Config.kl_weight  # w_KL (paper: 1e-6)
    reconstruction: str = Config.reconstruction  # l1 | l2 reconstruction loss (no perceptual/adversarial term)
    width: int = Config.width  # U-Net channels of the first level (paper LDM-4: 224)
    mults: str = Config.mults  # U-Net channel multipliers per level, comma-separated
    blocks: int = Config.blocks  # U-Net residual blocks per level (paper: 2)
    attn: str = Config.attn  # latent resolutions with self-attention, comma-separated, "" = none
    dropout: float = Config.dropout  # dropout in the U-Net's residual blocks
    timesteps: int = Config.timesteps  # T
    schedule: str = Config.schedule  # linear | cosine
    prediction: str = Config.prediction  # eps | v
    class_cond: bool = False  # condition the U-Net on the dataset's labels (classifier-free guidance)
    p_uncond: float = 0.1  # --class-cond: probability of training with the null label
    guidance: float = 3.0  # --class-cond: guidance scale s_g of the progress grids (1 = no guidance)
    scale_images: int = 512  # training images encoded to compute the latent scale s = 1 / std(z)
    ema: float = 0.999  # EMA decay of the U-Net weights used for sampling, warmed up as in DDPM
    grad_clip: float = 1.0  # clip the U-Net's gradient norm (0 = off)
    sample_steps: int = 20  # DDIM steps (eta 0) of the progress grids
    sample_every: int = 250  # write a sample / reconstruction grid every N steps


def model_config(cfg: TrainConfig, channels: int, num_classes: int = 0) -> Config:
    names = {f.name for f in dataclasses.fields(Config)} - {"image_size", "channels", "num_classes"}
    return Config(image_size=cfg.image_size, channels=channels, num_classes=num_classes if cfg.class_cond else 0,
                  **{n: getattr(cfg, n) for n in names})


def check(cfg: TrainConfig) -> None:
    """LatentDiffusion's flag checks (ValueError -> one-line CLI error)."""
    if cfg.stage not in ("autoencoder", "diffusion", "both"):
        raise ValueError(f"--stage must be autoencoder, diffusion or both, got {cfg.stage!r}")
    if cfg.schedule not in SCHEDULES or cfg.prediction not in PREDICTIONS or cfg.reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"--schedule must be one of {SCHEDULES}, --prediction one of {PREDICTIONS}, "
                         f"--reconstruction one of {RECONSTRUCTIONS}")
    try:
        model_config(cfg, channels=1)
    except (TypeError, ValueError) as err:  # also a non-integer in --mults / --attn
        raise ValueError(str(err) if isinstance(err, ValueError) and "--" in str(err) else
                         f"--mults / --attn must be comma-separated integers: {err}") from None
    if not 0 < cfg.diffusion_share < 1 or not 0 <= cfg.p_uncond < 1 or not 0 <= cfg.ema < 1:
        raise ValueError("--diffusion-share must lie in (0, 1), --p-uncond and --ema in [0, 1)")
    if cfg.diffusion_steps < 0 or min(cfg.diffusion_batch_size, cfg.sample_steps, cfg.scale_images) < 1 \
            or cfg.grad_clip < 0 or not cfg.lr_diffusion > 0 or cfg.guidance < 0:
        raise ValueError("--diffusion-batch-size, --sample-steps, --scale-images must be positive; "
                         "--diffusion-steps, --grad-clip, --guidance >= 0; --lr-diffusion > 0")
    if cfg.stage == "both" and cfg.resume not in ("", "auto"):
        raise ValueError("--stage both resumes with --resume auto only (a checkpoint path needs "
                         "--stage autoencoder|diffusion)")


def stage_config(cfg: TrainConfig, stage: str) -> TrainConfig:
    """One stage's flags: its folder OUT/<stage>, its steps and its share of --minutes. The split flags
    --diffusion-steps and --diffusion-share are recorded as None (`steps` and `minutes` hold this stage's)."""
    # Adapted from VQ-VAE/train.py (stage_config): the autoencoder and diffusion stages
    share = 1.0 if cfg.stage != "both" else cfg.diffusion_share if stage == "diffusion" else 1 - cfg.diffusion_share
    ae = "" if stage == "autoencoder" else cfg.autoencoder or str(Path(cfg.out) / "autoencoder")
    return dataclasses.replace(cfg, stage=stage, out=str(Path(cfg.out) / stage), minutes=cfg.minutes * share,
                               autoencoder=ae, steps=cfg.steps if stage == "autoencoder" else diffusion_steps(cfg),
                               diffusion_steps=None, diffusion_share=None)


def diffusion_steps(cfg: TrainConfig) -> int:
    return cfg.diffusion_steps or 4 * cfg.steps


def main(cfg: TrainConfig) -> Path:
    """Stage 1, stage 2 or both (with --resume auto, a finished stage 1 is not trained again); returns --out."""
    if cfg.stage in ("autoencoder", "both") and not (cfg.stage == "both" and autoencoder_finished(cfg)):
        train_autoencoder(stage_config(cfg, "autoencoder"), keep_group=cfg.stage == "both")
    if cfg.stage in ("diffusion", "both"):
        train_diffusion(stage_config(cfg, "diffusion"))
    return Path(cfg.out)


def autoencoder_finished(cfg: TrainConfig) -> bool:
    """--resume auto: has OUT/autoencoder reached its --steps or its time budget?"""
    path = checkpoint.latest(Path(cfg.out) / "autoencoder") if cfg.resume == "auto" else None
    if path is None:
        return False
    state = checkpoint.load(path, MODEL)
    return state["step"] >= cfg.steps or bool(state.get("budget_reached"))


def train_autoencoder(cfg: TrainConfig, keep_group: bool = False) -> Path:
    """Stage 1: the KL-regularised autoencoder, L_rec + w_KL KL (Sec. 3.1), checkpointing to cfg.out."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg = model_config(cfg, data.channels)
    torch.manual_seed(cfg.seed)
    ae = Autoencoder(mcfg).to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own z ~ q(z|x)
    modules, optimizers = {"autoencoder": ae}, {"opt_autoencoder": opt}
    step = training.resume(cfg, env, MODEL, modules, optimizers, batches)
    fixed, row = reconstruction_images(data, device)

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"LatentDiffusion stage 1: {len(data)} {cfg.dataset} images, {precision}, {device}, "
                f"{env.world_size} process(es), autoencoder of {n_params(ae):,} parameters, f={mcfg.factor}: latents "
                f"{mcfg.latent_channels}x{mcfg.latent_size}x{mcfg.latent_size}, {mcfg.reconstruction} + "
                f"{mcfg.kl_weight:g} KL")
    stop = None
    saver = training.Saver(cfg, env, MODEL, mcfg, modules, optimizers, batches, log, extra=lambda: {
        "stage": "autoencoder", "budget_reached": stop is not None and stop.reason == "time budget"})
    guard = training.NonFiniteGuard(env, log)
    ae_ddp, pixels = distributed.wrap(ae, env), fixed[0].numel()
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x = to_float(next(batches)[0].to(device))  # (B, C, H, W) in [-1, 1]
            with distributed.autocast(device, precision):
                x_hat, mean, logvar = ae_ddp(x)  # z = mean + sigma eps inside
            # L_AE = L_rec(x, D(z)) + w_KL KL(q(z|x) || N(0, I)), sums per image, mean over the batch
            rec = reconstruction_loss(x_hat, x, mcfg.reconstruction).mean()
            kl = kl_divergence(mean, logvar).mean()
            loss = rec + mcfg.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if guard.finite(step, loss=loss):
                opt.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss": loss.item(), "rec_per_pixel": rec.item() / pixels, "kl": kl.item(),
                       "latent_std": mean.detach().float().std().item(),
                       "posterior_std": logvar.detach().float().mul(0.5).exp().mean().item()} if write else {}
            log.step(step, metrics, x.shape[0] * env.world_size, write)
            stopping = stop.poll()
            if env.is_main and (step % cfg.sample_every == 0 or step == cfg.steps or stopping):
                log.images(step, interleave(fixed, reconstruct(ae, fixed), row), nrow=row)  # draws no RNG
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del ae_ddp
    end_env = distributed.Dist(env.rank, 1, env.device) if keep_group and not stop.signum else env  # no teardown
    return training.finish(step, cfg, end_env, saver, stop, log)


def train_diffusion(cfg: TrainConfig) -> Path:
    """Stage 2: DDPM (L_simple, Eq. 2) on the scaled latents of the frozen autoencoder."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    ae, ae_state = load_autoencoder(cfg, device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    cfg = dataclasses.replace(cfg, **{n: ae_state["config"][n] for n in AE_TRAINING})  # stage 1's values
    if cfg.class_cond and data.num_classes < 2:
        raise checkpoint.CheckpointError(f"--class-cond needs a labelled dataset; {cfg.dataset} has "
                                         f"{data.num_classes} classes")
    mcfg = model_config(cfg, data.channels, data.num_classes)
    sch = schedule_of(mcfg)
    torch.manual_seed(cfg.seed)
    net = UNet(mcfg).to(device)
    mean, logvar = encode_all(ae, data.images, device)  # (N, c, h, w) each: q(z|x) of every training image
    spread = torch.linspace(0, len(data) - 1, min(cfg.scale_images, len(data))).long()  # (MNIST is class-sorted)
    z = mean[spread] + (0.5 * logvar[spread]).exp() * torch.randn(mean[spread].shape,
                                                                  generator=torch.Generator().manual_seed(cfg.seed))
    net.scale_factor.fill_(latent_scale(z))  # s = 1 / std(z) (Sec. 4.3.2); resume restores the saved one
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr_diffusion)
    indexed = ImageData(data.images, torch.arange(len(data)), [], source=data.source)  # labels = image index
    batches = BatchIterator(indexed, cfg.diffusion_batch_size, seed=cfg.seed, rank=env.rank,
                            world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own z, t, noise, dropped labels
    modules, optimizers = {"unet": net, "ema": ema, "autoencoder": ae}, {"opt_unet": opt}
    restored = {"autoencoder_step": ae_state["step"]}
    step = training.resume(cfg, env, MODEL, modules, optimizers, batches, restore=restored)
    if step and restored["autoencoder_step"] != ae_state["step"]:
        raise checkpoint.CheckpointError(
            f"{cfg.out} holds a diffusion model for the autoencoder at step {restored['autoencoder_step']}, but "
            f"{cfg.autoencoder} is now at step {ae_state['step']}: train a new one (--resume '' or another --out)")
    ae.requires_grad_(False)
    scale = net.scale_factor.item()
    fixed_noise = torch.randn(64, mcfg.latent_channels, mcfg.latent_size, mcfg.latent_size,
                              generator=torch.Generator().manual_seed(cfg.seed))
    fixed_y = torch.arange(64) % data.num_classes if mcfg.num_classes else None  # a row per class (8 per row)

    log = training.start_run(cfg, env, step, mcfg, precision, indexed)
    log.message(f"LatentDiffusion stage 2: U-Net ({n_params(net):,} parameters) on the {mcfg.latent_channels}x"
                f"{mcfg.latent_size}x{mcfg.latent_size} latents of {len(data)} {cfg.dataset} images (autoencoder "
                f"{cfg.autoencoder}, step {ae_state['step']}), scale factor {scale:.4f} (std of the latents "
                f"{1 / scale:.4f}), {'class-conditional' if mcfg.num_classes else 'unconditional'}, {precision}")
    saver = training.Saver(cfg, env, MODEL, mcfg, modules, optimizers, batches, log,
                           extra=lambda: {"stage": "diffusion", "autoencoder_step": ae_state["step"]})
    guard = training.NonFiniteGuard(env, log)
    net_ddp, beta = distributed.wrap(net, env), 0.0
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            idx = next(batches)[1]
            m, lv = mean[idx].to(device), logvar[idx].to(device)
            z0 = (m + (0.5 * lv).exp() * torch.randn_like(m)) * scale  # s z, z ~ q(z|x), (B, c, h, w)
            y = drop_labels(data.labels[idx].to(device), cfg.p_uncond, mcfg.num_classes) if mcfg.num_classes else None
            t = torch.randint(1, mcfg.timesteps + 1, (z0.shape[0],), device=device)
            noise = torch.randn_like(z0)
            with distributed.autocast(device, precision):
                loss = l_simple(net_ddp, sch, z0, t, noise, mcfg.prediction, y)  # Eq. 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip or float("inf"))
            if guard.finite(step, loss=loss):
                opt.step()
                beta = ema_update(ema, net, cfg.ema, step)
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss": loss.item(), "grad_norm": grad_norm.item(), "ema_decay": beta} if write else {}
            log.step(step, metrics, z0.shape[0] * env.world_size, write)
            stopping = stop.poll()
            if env.is_main and (step % cfg.sample_every == 0 or step == cfg.steps or stopping):
                log.images(step, sample(ae, ema, 64, cfg.sample_steps, y=fixed_y, guidance=cfg.guidance,
                                        x_T=fixed_noise))  # DDIM, no RNG drawn
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del net_ddp
    return training.finish(step, cfg, env, saver, stop, log)


def load_autoencoder(cfg: TrainConfig, device: torch.device) -> tuple[Autoencoder, dict]:
    """The frozen stage-1 network named by --autoencoder, or CheckpointError (one line, exit 2) if this run
    cannot use it: not a stage-1 checkpoint, other data, or another autoencoder configuration."""
    path = Path(cfg.autoencoder)
    path = path / "autoencoder" if (path / "autoencoder").is_dir() else path
    state = checkpoint.load(path, MODEL, map_location=device)
    if state.get("stage") != "autoencoder":
        raise checkpoint.CheckpointError(f"{path} is not a stage-1 autoencoder checkpoint (stage "
                                         f"{state.get('stage')!r}): pass --autoencoder OUT or OUT/autoencoder")
    saved = state["config"]
    if (saved["dataset"], saved["image_size"]) != (cfg.dataset, cfg.image_size):
        raise checkpoint.CheckpointError(
            f"the autoencoder {path} was trained on {saved['dataset']} at {saved['image_size']}x"
            f"{saved['image_size']}, not --dataset {cfg.dataset} --image-size {cfg.image_size}: pass the same data flags")
    differ = [f"--{n.replace('_', '-')} {saved[n]} (this run: {getattr(cfg, n)})" for n in AE_NETWORK
              if saved[n] != getattr(cfg, n)]
    if differ:
        raise checkpoint.CheckpointError(
            f"the autoencoder {path} has another configuration: {'; '.join(differ)}: pass its flags, or train "
            f"a matching autoencoder (--stage autoencoder)")
    ae = Autoencoder(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(ae, state, "autoencoder", path)
    return ae.eval(), state


@torch.no_grad()
def encode_all(ae: Autoencoder, images_uint8: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of q(z|x) (N, c, h, w) of a uint8 image set, float32 on the CPU."""
    out = [ae.encoder(to_float(x.to(device))) for x in images_uint8.split(500)]
    return torch.cat([m.float().cpu() for m, _ in out]), torch.cat([lv.float().cpu() for _, lv in out])


# Copied from VQ-VAE/train.py: reconstruction_images
def reconstruction_images(data: ImageData, device: torch.device) -> tuple[torch.Tensor, int]:
    """32 training images spread evenly over the set (the embedded MNIST is sorted by class; fewer on tiny
    datasets, a whole number of rows) and the row length."""
    row = min(8, len(data))
    n = min(32, len(data)) // row * row
    return to_float(data.images[torch.arange(n) * (len(data) // n)].to(device)), row


# Copied from VQ-VAE/sample.py: interleave
def interleave(x: torch.Tensor, x_hat: torch.Tensor, row: int = 8) -> torch.Tensor:
    """Rows of `row` originals, each followed by the row of their reconstructions (len(x) % row == 0)."""
    return torch.stack([x.view(-1, row, *x.shape[1:]), x_hat.view(-1, row, *x.shape[1:])], 1).flatten(0, 2)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
