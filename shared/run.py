"""The run folder and what a training run writes into it.

    <out>/config.json         the resolved configuration (plain json)
    <out>/metrics.jsonl       one json object per logged step: {"step": .., "loss_d": .., "images_per_s": ..}
    <out>/events.out.tfevents.*   TensorBoard scalars and image grids (`tensorboard --logdir <out>`)
    <out>/samples/step_XXXXXXX.png   sample grids from fixed noise
    <out>/checkpoints/        see shared.checkpoint

Only the main process writes (`enabled=False` on other ranks makes every method a no-op).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image


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

    def __init__(self, out: str | Path, total_steps: int, start_step: int = 0, enabled: bool = True) -> None:
        self.out, self.enabled = Path(out), enabled
        self._last_time, self._last_step = time.perf_counter(), start_step
        self.images_per_s = 0.0
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.out), purge_step=start_step if start_step else None)
        self.jsonl = open(self.out / "metrics.jsonl", "a")
        self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, smoothing=0.05)

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
        record = {"step": step, **{k: float(v) for k, v in metrics.items()},
                  "images_per_s": round(self.images_per_s, 1)}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for k, v in record.items():
            if k != "step":
                self.writer.add_scalar(k, v, step)
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k != "step"}, refresh=False)

    def images(self, step: int, images: torch.Tensor, tag: str = "samples", nrow: int | None = None) -> Path | None:
        """Save a grid of images in [-1, 1] as <out>/<tag>/step_XXXXXXX.png and to TensorBoard."""
        if not self.enabled:
            return None
        g = grid(images, nrow)
        path = self.out / tag / f"step_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(g, path)
        self.writer.add_image(tag, g, step)
        return path

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.jsonl.close()
            self.writer.close()
