"""Train a VQ-VAE and its autoregressive prior on the embedded MNIST copy by default.  `python train.py --help`.

    python train.py                                   # both stages: 800 VQ-VAE steps, then 1200 prior steps on its codes
    python train.py --minutes 10 --steps 100000000    # both stages in 10 minutes (--prior-share 0.6 of it to the prior)
    python train.py --stage vqvae --out runs/a        # stage 1 only -> runs/a/vqvae
    python train.py --stage prior --out runs/a        # stage 2 only, on the codes of runs/a/vqvae -> runs/a/prior
    python train.py --stage prior --vqvae runs/a --out runs/b   # a prior for another run's VQ-VAE
    python train.py --codebook loss                   # the codebook term of Eq. 3 instead of the EMA updates
    python train.py --hidden 256 --res-hidden 256 --codes 512 --code-dim 64   # the paper's network
    python train.py --resume auto                     # continue whichever stage is unfinished in --out
    torchrun --nproc_per_node=2 train.py              # data-parallel (one process per core / GPU)

Each stage is its own run folder under --out (vqvae/ and prior/: config.json, metrics.jsonl, checkpoints,
samples/, progress.gif). Stage 1 has no sampler: its samples/ grids and progress.gif show fixed training images
(odd rows) above their reconstructions (even rows). Stage 2 computes the codes of the training set once with
the frozen VQ-VAE, trains the prior on them, and its samples/ are decoded prior samples (fixed seed, T = 1).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist

from model import (VQVAE, Config, Prior, codebook_loss, commitment_loss, ema_update, perplexity, prior_nll,
                   reconstruct, reconstruction_loss, restart_dead_codes, sample, track_counts)
from sample import interleave
from shared import checkpoint, cli, dist as distributed, training
from shared.data import BatchIterator, ImageData, load_dataset, to_float

MODEL = "VQ-VAE"
VQ_FIELDS = ("hidden", "res_hidden", "res_blocks", "codes", "code_dim", "codebook", "beta", "decay",
             "dead_threshold")  # the flags that define stage 1's network and update (stage 2 copies them)


@dataclass
class TrainConfig(cli.RunConfig):
    """Train a VQ-VAE (van den Oord et al. 2017) and a causal-transformer prior over its codes."""
    stage: str = "both"  # vqvae | prior | both (stage 1, then stage 2 on its codes)
    vqvae: str = ""  # stage prior: the VQ-VAE (a --out folder, its vqvae/ run, or a checkpoint); default OUT/vqvae
    prior_share: float = 0.6  # --stage both with --minutes: the prior's share of the budget (stage 1 converges fast)
    steps: int = 800  # VQ-VAE steps (one optimizer update + one EMA update each)
    prior_steps: int = 0  # prior steps (0 = 1.5 x --steps, the 60/40 split of --prior-share at equal step rates)
    out: str = "runs/vqvae"  # run folder: OUT/vqvae and OUT/prior
    lr: float = 1e-3  # Adam learning rate of the VQ-VAE (paper: 2e-4; higher for the short CPU budget)
    lr_prior: float = 1e-3  # AdamW learning rate of the prior (cosine-free, constant)
    hidden: int = Config.hidden  # encoder/decoder channels (paper: 256)
    res_hidden: int = Config.res_hidden  # channels inside the residual blocks (paper: 256)
    res_blocks: int = Config.res_blocks  # residual blocks per network (paper: 2)
    codes: int = Config.codes  # K, codebook size (paper: 512)
    code_dim: int = Config.code_dim  # D, code dimension (paper: 64)
    codebook: str = Config.codebook  # ema (Appendix A.1) | loss (Eq. 3's codebook term)
    beta: float = Config.beta  # commitment weight (paper: 0.25)
    decay: float = Config.decay  # EMA decay (paper: 0.99)
    dead_threshold: float = Config.dead_threshold  # restart codes whose EMA count falls below this (0 = never)
    prior_width: int = Config.prior_width  # prior embedding width
    prior_layers: int = Config.prior_layers  # prior transformer blocks
    prior_heads: int = Config.prior_heads  # prior attention heads
    prior_dropout: float = Config.prior_dropout  # prior dropout


def model_config(cfg: TrainConfig, channels: int) -> Config:
    names = {f.name for f in dataclasses.fields(Config)} - {"image_size", "channels", "eps"}
    return Config(image_size=cfg.image_size, channels=channels, **{n: getattr(cfg, n) for n in names})


def check(cfg: TrainConfig) -> None:
    """VQ-VAE-specific flag checks (ValueError -> one-line CLI error)."""
    model_config(cfg, channels=3)  # image size, codebook mode, heads
    if cfg.stage not in ("vqvae", "prior", "both"):
        raise ValueError(f"--stage must be vqvae, prior or both, got {cfg.stage!r}")
    if min(cfg.hidden, cfg.res_hidden, cfg.codes, cfg.code_dim, cfg.prior_width, cfg.prior_layers,
           cfg.prior_heads) <= 0 or cfg.res_blocks < 0 or cfg.prior_steps < 0:
        raise ValueError("network sizes must be positive and --prior-steps >= 0")
    if not 0 < cfg.prior_share < 1 or not 0 < cfg.decay < 1 or not 0 <= cfg.prior_dropout < 1:
        raise ValueError("--prior-share and --decay must lie in (0, 1), --prior-dropout in [0, 1)")
    if cfg.beta < 0 or cfg.dead_threshold < 0 or not cfg.lr_prior > 0:
        raise ValueError("--beta and --dead-threshold must be >= 0, --lr-prior > 0")
    if cfg.stage == "both" and cfg.resume not in ("", "auto"):
        raise ValueError("--stage both resumes with --resume auto only (a checkpoint path needs --stage vqvae|prior)")


def stage_config(cfg: TrainConfig, stage: str) -> TrainConfig:
    """The flags of one stage's run: its folder OUT/<stage>, its steps and its share of --minutes. The split
    flags --prior-steps and --prior-share are recorded as None (`steps` and `minutes` hold this stage's values),
    so that changing them on resume is taken like a changed --steps or --minutes."""
    share = 1.0 if cfg.stage != "both" else cfg.prior_share if stage == "prior" else 1 - cfg.prior_share
    vqvae = "" if stage == "vqvae" else cfg.vqvae or str(Path(cfg.out) / "vqvae")
    return dataclasses.replace(cfg, stage=stage, out=str(Path(cfg.out) / stage), minutes=cfg.minutes * share,
                               vqvae=vqvae, steps=cfg.steps if stage == "vqvae" else prior_steps(cfg),
                               prior_steps=None, prior_share=None)


def prior_steps(cfg: TrainConfig) -> int:
    return cfg.prior_steps or int(1.5 * cfg.steps)


def main(cfg: TrainConfig) -> Path:
    """Stage 1, stage 2 or both (with --resume auto, a finished stage 1 is not trained again); returns --out."""
    if cfg.stage in ("vqvae", "both") and not (cfg.stage == "both" and vqvae_finished(cfg)):
        train_vqvae(stage_config(cfg, "vqvae"), keep_group=cfg.stage == "both")
    if cfg.stage in ("prior", "both"):
        train_prior(stage_config(cfg, "prior"))
    return Path(cfg.out)


def vqvae_finished(cfg: TrainConfig) -> bool:
    """--resume auto: has OUT/vqvae reached its --steps or its time budget?"""
    path = checkpoint.latest(Path(cfg.out) / "vqvae") if cfg.resume == "auto" else None
    if path is None:
        return False
    state = checkpoint.load(path, MODEL)
    return state["step"] >= cfg.steps or bool(state.get("budget_reached"))


def train_vqvae(cfg: TrainConfig, keep_group: bool = False) -> Path:
    """Stage 1: the VQ-VAE (Eq. 3, EMA codebook by default), checkpointing to cfg.out. keep_group: stage 2
    follows in this process, so a torchrun process group stays open for it (joining a second one is flaky)."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    mcfg = model_config(cfg, data.channels)
    torch.manual_seed(cfg.seed)
    vq = VQVAE(mcfg).to(device)
    opt = torch.optim.Adam([p for p in vq.parameters() if p.requires_grad], lr=cfg.lr)
    batches = BatchIterator(data, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own dead-code restarts (rank 0's are kept)
    modules, optimizers = {"vqvae": vq}, {"opt_vqvae": opt}
    step = training.resume(cfg, env, MODEL, modules, optimizers, batches)
    fixed, row = reconstruction_images(data, device)

    log = training.start_run(cfg, env, step, mcfg, precision, data)
    log.message(f"VQ-VAE stage 1: {len(data)} {cfg.dataset} images, {precision}, {device}, {env.world_size} "
                f"process(es), {n_params(vq):,} parameters, K={mcfg.codes} codes of D={mcfg.code_dim}, "
                f"{mcfg.codebook} codebook, {mcfg.grid}x{mcfg.grid} code grid")
    stop = None
    saver = training.Saver(cfg, env, MODEL, mcfg, modules, optimizers, batches, log, extra=lambda: {
        "stage": "vqvae", "budget_reached": stop is not None and stop.reason == "time budget"})
    guard = training.NonFiniteGuard(env, log)
    reduce = all_reduce_sum if env.enabled else None
    vq_ddp = distributed.wrap(vq, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            x = to_float(next(batches)[0].to(device))  # (B, C, H, W) in [-1, 1]
            with distributed.autocast(device, precision):
                x_hat, z_e, z_q, codes = vq_ddp(x)
            # Eq. 3: reconstruction + commitment (+ the codebook term with --codebook loss; EMA otherwise)
            losses = {"recon": reconstruction_loss(x_hat, x), "commitment": commitment_loss(z_e, z_q, mcfg.beta)}
            if mcfg.codebook == "loss":
                losses["codebook"] = codebook_loss(z_e, z_q)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            restarted = torch.zeros(0)
            if guard.finite(step, loss=loss):
                opt.step()
                z = z_e.detach().float().permute(0, 2, 3, 1).reshape(-1, mcfg.code_dim)  # (B h w, D)
                if mcfg.codebook == "ema":
                    ema_update(vq.codebook, z, codes.flatten(), mcfg.decay, mcfg.eps, reduce)
                else:
                    track_counts(vq.codebook, codes.flatten(), mcfg.decay, reduce)
                if mcfg.dead_threshold > 0:
                    restarted = restart_dead_codes(vq.codebook, z, mcfg.dead_threshold)
                    if env.enabled and len(restarted):
                        broadcast_codebook(vq)  # rank 0's restarts, so every replica holds the same codebook
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss": loss.item(), **{k: v.item() for k, v in losses.items()},
                       "perplexity": perplexity(codes, mcfg.codes),
                       "usage": codes.unique().numel() / mcfg.codes,  # share of the codebook used in this batch
                       "alive": (vq.codebook.cluster_size >= mcfg.dead_threshold).float().mean().item(),
                       "restarted": len(restarted)} if write else {}
            log.step(step, metrics, x.shape[0] * env.world_size, write)
            stopping = stop.poll()
            if step % cfg.sample_every == 0 or step == cfg.steps or stopping:
                log.images(step, interleave(fixed, reconstruct(vq, fixed), row), nrow=row)
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del vq_ddp
    end_env = distributed.Dist(env.rank, 1, env.device) if keep_group and not stop.signum else env  # no teardown
    return training.finish(step, cfg, end_env, saver, stop, log)


def train_prior(cfg: TrainConfig) -> Path:
    """Stage 2: the transformer prior on the codes of the training set under the frozen VQ-VAE."""
    env = distributed.setup(cfg.device, cfg.threads)
    device, precision = env.device, distributed.resolve_precision(cfg.precision, env.device)
    vq, vq_state = load_vqvae(cfg, device)
    data = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "train", cfg.download, cfg.seed)
    test = load_dataset(cfg.dataset, cfg.data_root or None, cfg.image_size, "test", cfg.download, cfg.seed)
    cfg = dataclasses.replace(cfg, **{n: vq_state["config"][n] for n in VQ_FIELDS})  # stage 1's network
    mcfg = model_config(cfg, data.channels)
    torch.manual_seed(cfg.seed)
    prior = Prior(mcfg).to(device)
    opt = torch.optim.AdamW(prior.parameters(), lr=cfg.lr_prior, betas=(0.9, 0.95), weight_decay=0.01)
    indexed = ImageData(data.images, torch.arange(len(data)), [], source=data.source)  # labels = image index
    batches = BatchIterator(indexed, cfg.batch_size, seed=cfg.seed, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(cfg.seed + env.rank)  # each process draws its own dropout masks
    modules, optimizers = {"prior": prior, "vqvae": vq}, {"opt_prior": opt}
    restored = {"vqvae_step": vq_state["step"]}
    step = training.resume(cfg, env, MODEL, modules, optimizers, batches, restore=restored)
    if step and restored["vqvae_step"] != vq_state["step"]:
        raise checkpoint.CheckpointError(
            f"{cfg.out} holds a prior for the VQ-VAE at step {restored['vqvae_step']}, but {cfg.vqvae} is now at "
            f"step {vq_state['step']}: train a new prior (--resume '' or another --out)")
    vq.requires_grad_(False)
    codes, val_codes = encode_all(vq, data.images, device), encode_all(vq, test.images[:500], device)  # (N, g, g)
    fixed, row = reconstruction_images(data, device)

    log = training.start_run(cfg, env, step, mcfg, precision, indexed)
    log.message(f"VQ-VAE stage 2: transformer prior ({n_params(prior):,} parameters) on the {mcfg.grid}x{mcfg.grid} "
                f"codes of {len(data)} {cfg.dataset} images (VQ-VAE {cfg.vqvae}, step {vq_state['step']}; "
                f"perplexity {perplexity(codes, mcfg.codes):.1f} of K={mcfg.codes}), {precision}, {device}")
    saver = training.Saver(cfg, env, MODEL, mcfg, modules, optimizers, batches, log,
                           extra=lambda: {"stage": "prior", "vqvae_step": vq_state["step"]})
    guard = training.NonFiniteGuard(env, log)
    sample_rng = lambda: torch.Generator().manual_seed(cfg.seed)  # the same 64 samples at every log
    log.images(step, interleave(fixed, reconstruct(vq, fixed), row), tag="reconstructions", nrow=row)
    prior_ddp = distributed.wrap(prior, env)
    with training.Stopper(cfg.minutes, env) as stop:
        while step < cfg.steps:
            k = codes[next(batches)[1]].to(device)  # (B, g, g) codes of this batch's images
            with distributed.autocast(device, precision):
                loss = prior_nll(prior_ddp, k).mean()  # nats per code
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if guard.finite(step, loss=loss):
                opt.step()
            step += 1

            write = step % cfg.log_every == 0 or step == cfg.steps
            metrics = {"loss": loss.item(), "bits_per_code": loss.item() / 0.6931471805599453} if write else {}
            stopping = stop.poll()
            due = step % cfg.sample_every == 0 or step == cfg.steps or stopping
            if due:  # dropout off; no global RNG is drawn (the samples use their own generator)
                prior.eval()
                metrics["val_bits_per_code"] = held_out_bits(prior, val_codes, device)
            log.step(step, metrics, k.shape[0] * env.world_size, write or due)
            if due:
                log.images(step, sample(vq, prior, 64, rng=sample_rng()))
                prior.train()
            if step % cfg.ckpt_every == 0 or stopping:
                saver.save(step, periodic=step % cfg.ckpt_every == 0)
            if stopping:
                break
    del prior_ddp
    return training.finish(step, cfg, env, saver, stop, log)


def load_vqvae(cfg: TrainConfig, device: torch.device) -> tuple[VQVAE, dict]:
    """The frozen stage-1 network named by --vqvae, or CheckpointError (one line, exit 2) if it cannot be used."""
    path = Path(cfg.vqvae)
    path = path / "vqvae" if (path / "vqvae").is_dir() else path
    state = checkpoint.load(path, MODEL, map_location=device)
    if state.get("stage") != "vqvae":
        raise checkpoint.CheckpointError(f"{path} is not a stage-1 VQ-VAE checkpoint (stage "
                                         f"{state.get('stage')!r}): pass --vqvae OUT or OUT/vqvae")
    saved = state["config"]
    if (saved["dataset"], saved["image_size"]) != (cfg.dataset, cfg.image_size):
        raise checkpoint.CheckpointError(
            f"the VQ-VAE {path} was trained on {saved['dataset']} at {saved['image_size']}x{saved['image_size']}, "
            f"not --dataset {cfg.dataset} --image-size {cfg.image_size}: pass the same data flags")
    vq = VQVAE(Config(**state["model_config"])).to(device)
    checkpoint.load_weights(vq, state, "vqvae", path)
    return vq.eval(), state


def reconstruction_images(data: ImageData, device: torch.device) -> tuple[torch.Tensor, int]:
    """32 training images spread evenly over the set (the embedded MNIST is sorted by class; fewer on tiny
    datasets, a whole number of rows) and the row length."""
    row = min(8, len(data))
    n = min(32, len(data)) // row * row
    return to_float(data.images[torch.arange(n) * (len(data) // n)].to(device)), row


@torch.no_grad()
def encode_all(vq: VQVAE, images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Codes (N, g, g) of a uint8 image set, on the CPU."""
    return torch.cat([vq.quantize(vq.encoder(to_float(x.to(device))))[1].cpu() for x in images_uint8.split(500)])


@torch.no_grad()
def held_out_bits(prior: Prior, codes: torch.Tensor, device: torch.device) -> float:
    """Mean -log2 p(k_t | k_<t) of held-out codes (bits per code)."""
    return torch.cat([prior_nll(prior, k.to(device)) for k in codes.split(250)]).mean().item() / 0.6931471805599453


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    torch_dist.all_reduce(t)
    return t


def broadcast_codebook(vq: VQVAE) -> None:
    for t in (vq.codebook.embedding.data, vq.codebook.embed_sum, vq.codebook.cluster_size):
        torch_dist.broadcast(t, src=0)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    training.run_main(main, cli.parse(TrainConfig, check=check))
