"""Checkpoints: the full training state, written atomically, read back safely.

A checkpoint is a dict of plain values and tensors (so `torch.load(weights_only=True)` accepts it):
    {"model": "DCGAN", "step": int, "config": {...}, "model_config": {...},
     "<network or optimizer name>": state_dict, ..., "data": {...}, "rng": [per-rank RNG states],
     "versions": {...}}
Layout in a run folder: checkpoints/latest.pt (always the newest) and checkpoints/step_XXXXXXX.pt (periodic).
"""
from __future__ import annotations

import os
import pickle
import platform
import random
import re
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


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename.

    The file gets the permissions any new file of the user's would (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
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


def blocked_global(message: str) -> str | None:
    """The global that torch's weights_only unpickler refused, read from its error message (None if absent)."""
    m = re.search(r"GLOBAL\s+([\w.]+)", message)
    return m.group(1) if m else None


def load(path: str | Path, model: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written for `model`; corrupt, truncated, unsafe or foreign files raise CheckpointError.

    Files are read with weights_only=True: tensors and plain values only, so a pickle that would run code or
    build arbitrary objects is refused before anything in it runs.
    """
    p = resolve(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if blocked_global(str(e)) is None:  # not a refused global: the bytes are not a valid checkpoint
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot read checkpoint {p}: corrupt or truncated ({reason[:160]})") from None
        # weights_only refused a global: the file holds code or objects that are not allowed
        what = f"the global {blocked_global(str(e))}"
        raise CheckpointError(f"refusing to load {p}: it holds code or objects that are not allowed in a "
                              f"checkpoint ({what}); nothing in it was run") from None
    except Exception as e:  # truncated zip, random bytes, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {p}: corrupt or truncated ({reason[:160]})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"{p} is not a checkpoint of this project (no 'model'/'step' entries)")
    if state["model"] != model:
        raise CheckpointError(f"{p} is a {state['model']} checkpoint, not {model}")
    return state


def load_weights(module: torch.nn.Module, state: dict[str, Any], key: str, path: str | Path = "checkpoint") -> None:
    """module.load_state_dict(state[key]), with a one-line CheckpointError when the entry is missing or its
    tensors do not fit the module (other network sizes)."""
    if not isinstance(state.get(key), dict):
        raise CheckpointError(f"{path} has no weights for {key!r} (entries: {', '.join(sorted(state))})")
    try:
        module.load_state_dict(state[key])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: the {key} weights do not fit this network: other network sizes than "
                              f"these flags? ({str(e).splitlines()[0][:120]})") from None


def save_pretrained(path: str | Path, model: str, model_config: dict, weights: dict[str, dict[str, torch.Tensor]],
                    source: str, dtype: torch.dtype = torch.float16, extra: dict[str, Any] | None = None) -> Path:
    """Small weights for `sample.py --pretrained`: {name: state_dict} with float tensors cast to `dtype`,
    plus the model config and a line saying which run made them (a weights_only-safe checkpoint)."""
    small = {name: {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
             for name, sd in weights.items()}
    return save(path, {"model": model, "step": -1, "model_config": model_config, "source": source, **small,
                       **(extra or {})})


def load_pretrained(path: str | Path, model: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Weights written by save_pretrained, cast back to float32."""
    state = load(path, model, map_location)
    return {k: {n: t.float() if t.is_floating_point() else t for n, t in v.items()} if isinstance(v, dict)
            and k != "model_config" else v for k, v in state.items()}


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
        self.signum = 0  # the signal received (0 = none)
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

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
