"""Checkpoints: the full training state, written atomically, read back safely.

A checkpoint is a dict of plain values and tensors (so `torch.load(weights_only=True)` accepts it):
    {"model": "DCGAN", "step": int, "config": {...}, "model_config": {...},
     "<network or optimizer name>": state_dict, ..., "data": {...}, "rng": [per-rank RNG states],
     "versions": {...}}
Layout in a run folder: checkpoints/latest.pt (always the newest) and checkpoints/step_XXXXXXX.pt (periodic).
"""
from __future__ import annotations

import os
import platform
import random
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


class CheckpointError(Exception):
    """A checkpoint that can't be used, with a one-line reason for the user."""


def versions() -> dict[str, str]:
    """Library versions recorded in every checkpoint."""
    return {"torch": str(torch.__version__), "numpy": str(np.__version__), "python": platform.python_version()}


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_run_checkpoint(run_dir: str | Path, state: dict[str, Any], periodic: bool = False) -> Path:
    """Write checkpoints/latest.pt (and checkpoints/step_XXXXXXX.pt when periodic)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    latest = save(ckpt_dir / "latest.pt", state)
    if periodic:
        save(ckpt_dir / f"step_{state['step']:07d}.pt", state)
    return latest


def latest(run_dir: str | Path) -> Path | None:
    """The newest checkpoint in a run folder, or None."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if (ckpt_dir / "latest.pt").is_file():
        return ckpt_dir / "latest.pt"
    periodic = sorted(ckpt_dir.glob("step_*.pt"))
    return periodic[-1] if periodic else None


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run folder meaning its latest checkpoint."""
    p = Path(path)
    if p.is_dir():
        found = latest(p)
        if found is None:
            raise CheckpointError(f"no checkpoint in run folder {p} (expected {p / 'checkpoints' / 'latest.pt'})")
        return found
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def load(path: str | Path, model: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written for `model`; corrupt, truncated or foreign files raise CheckpointError."""
    p = resolve(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickles with disallowed globals, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {p}: corrupt or truncated ({reason[:160]})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{p} is not a checkpoint of this project (no 'model'/'step' entries)")
    if state["model"] != model:
        raise CheckpointError(f"{p} is a {state['model']} checkpoint, not {model}")
    return state


def rng_state() -> dict[str, torch.Tensor]:
    """Every RNG a training step may touch, as tensors (weights_only-safe)."""
    state = {"torch": torch.get_rng_state(),
             "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": torch.tensor([float(v) for v in np.random.get_state()[2:]], dtype=torch.float64)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore what rng_state() captured."""
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), None))
    pos, has_gauss, gauss = state["numpy_pos"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class StopSignal:
    """Context manager: the first Ctrl-C or SIGTERM sets `.requested` so the loop can checkpoint and exit.

    A second Ctrl-C interrupts immediately, as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
