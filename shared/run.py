"""The run folder and what a training run writes into it.

    <out>/config.json         the resolved configuration (plain json)
    <out>/metrics.jsonl       one json object per logged step: {"step": .., "loss_d": .., "images_per_s": ..}
    <out>/events.out.tfevents.*   TensorBoard scalars and image grids (`tensorboard --logdir <out>`)
    <out>/samples/step_XXXXXXX.png   sample grids from fixed noise
    <out>/progress.gif        those grids in order (at most GIF_FRAMES of them), rewritten at every sample step
    <out>/wandb/              with --wandb: the Weights & Biases run (offline with WANDB_MODE=offline)
    <out>/checkpoints/        see shared.checkpoint

Only the main process writes (`enabled=False` on other ranks makes every method a no-op). metrics.jsonl is
strict JSON: a non-finite value is written as null (json's NaN is not JSON).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

GIF_FRAMES = 30  # progress.gif keeps at most this many grids, evenly spread over the run, always the last
GIF_MAX_SIDE = 300  # grids larger than this are downscaled in the GIF (the PNGs keep full size)
GIF_FRAME_MS = 250


def json_value(v: float) -> float | None:
    """A float for metrics.jsonl: None (null) when it is nan or +-inf."""
    v = float(v)
    return v if math.isfinite(v) else None


def wandb_run_id(out: Path) -> str:
    """A stable W&B run id per run folder, so --resume auto continues the same W&B run."""
    import hashlib

    return f"{out.resolve().name}-{hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:8]}"


def write_progress_gif(samples_dir: Path, path: Path, max_frames: int = GIF_FRAMES) -> Path | None:
    """progress.gif from samples_dir/step_*.png in step order, subsampled to max_frames (first and last kept)."""
    from PIL import Image

    frames = sorted(samples_dir.glob("step_*.png"))
    if not frames:
        return None
    if len(frames) > max_frames:
        idx = sorted({round(i * (len(frames) - 1) / (max_frames - 1)) for i in range(max_frames)})
        frames = [frames[i] for i in idx]
    images = []
    for f in frames:
        with Image.open(f) as img:
            img = img.convert("RGB")
            if max(img.size) > GIF_MAX_SIDE:
                scale = GIF_MAX_SIDE / max(img.size)
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
            images.append(img.quantize(colors=64, method=Image.Quantize.MEDIANCUT))
    tmp = path.with_suffix(".gif.tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0,
                   optimize=True)
    tmp.replace(path)
    return path


def save_config(out: str | Path, config: dict[str, Any]) -> None:
    """Write config.json (plain values only)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> one (C, H', W') grid in [0, 1]."""
    nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
    return make_grid(images.detach().float().cpu().clamp(-1, 1), nrow=nrow, normalize=True,
                     value_range=(-1, 1), padding=2, pad_value=1.0)


class RunLog:
    """Progress bar, metrics.jsonl, TensorBoard and PNG grids for one run."""

    def __init__(self, out: str | Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 wandb_project: str | None = None, config: dict[str, Any] | None = None) -> None:
        self.out, self.enabled = Path(out), enabled
        self._last_time, self._last_step = time.perf_counter(), start_step
        self.images_per_s = 0.0
        self.last_images: dict[str, Path] = {}  # tag -> newest grid written
        self.gif: Path | None = None
        self.wandb = None
        self.closed = False
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.out), purge_step=start_step if start_step else None)
        self.jsonl = open(self.out / "metrics.jsonl", "a")
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, smoothing=0.05)
        if wandb_project:
            import wandb  # optional; shared.cli refuses --wandb when it is not installed

            self.wandb = wandb.init(project=wandb_project, name=self.out.resolve().name, dir=str(self.out),
                                    config=config or {}, resume="allow",
                                    id=wandb_run_id(self.out))

    def step(self, step: int, metrics: dict[str, float], images_per_step: int, write: bool) -> None:
        """Advance the bar to `step`; when `write`, also record `metrics` + images/s to jsonl and TensorBoard."""
        if not self.enabled:
            return
        self.bar.update(step - self.bar.n)
        if not write:
            return
        now = time.perf_counter()
        if step > self._last_step:
            self.images_per_s = (step - self._last_step) * images_per_step / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        record = {"step": step, **{k: json_value(v) for k, v in metrics.items()},
                  "images_per_s": round(self.images_per_s, 1)}
        self.jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self.jsonl.flush()
        for k, v in record.items():
            if k != "step":
                self.writer.add_scalar(k, float("nan") if v is None else v, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=step, commit=True)
        self.bar.set_postfix({k: "nan" if v is None else f"{v:.3g}" for k, v in record.items()
                                 if k != "step" and "/" not in k},  # per-dimension keys (kl_dim/03) only in the files
                             refresh=False)

    def images(self, step: int, images: torch.Tensor, tag: str = "samples", nrow: int | None = None) -> Path | None:
        """Save a grid of images in [-1, 1] as <out>/<tag>/step_XXXXXXX.png and to TensorBoard."""
        if not self.enabled:
            return None
        g = grid(images, nrow)
        path = self.out / tag / f"step_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(g, path)
        self.writer.add_image(tag, g, step)
        self.last_images[tag] = path
        if tag == "samples":
            self.gif = write_progress_gif(path.parent, self.out / "progress.gif")
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(g.permute(1, 2, 0).numpy())}, step=step)
        return path

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        if self.enabled and not self.closed:
            self.closed = True
            self.bar.close()
            self.jsonl.close()
            self.writer.close()
            if self.wandb is not None:
                self.wandb.finish()
                self.wandb = None
