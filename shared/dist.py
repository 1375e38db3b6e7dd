"""Device, precision, threads and (optional) multi-process set-up.

The same train.py runs as one process (`python train.py`) or under `torchrun --nproc_per_node=N train.py`:
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and we join a process group (gloo on CPU, nccl on GPU).
Only rank 0 logs and checkpoints (`Dist.is_main`).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class Dist:
    """Where this process runs and who it is among the training processes."""
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is a clear error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo), e.g. 'AMD EPYC 9454 48-Core Processor'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_flags() -> str:
    """The bf16-relevant CPU features, e.g. 'avx2 avx512f avx512_bf16' or 'avx2 (no avx512_bf16, no amx)'."""
    flags = cpu_flags()
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    lacking = [f"no {f}" for f in ("avx512_bf16", "amx_bf16") if f not in flags]
    return " ".join(have) + (f" ({', '.join(lacking)})" if lacking else "")


def _probe_seconds(bf16: bool, reps: int = 3, give_up_after: float = float("inf")) -> float:
    """Best-of-reps time of a forward + backward of a conv (64 -> 64 channels, 3x3, batch 16 at 16x16,
    channels_last) and a 128 x 512 x 512 matmul, typical layer sizes of this project's CPU models; stops early
    once one repetition takes longer than `give_up_after` seconds (bf16 has clearly lost)."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(16, 64, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, generator=gen, requires_grad=True)
    a = torch.randn(128, 512, generator=gen)
    best = float("inf")
    for _ in range(reps + 1):  # the first repetition warms up
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = conv(x).float().square().mean() + (a @ w).float().square().mean()
        loss.backward()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        if elapsed > give_up_after:
            break
    return best


def probe_bf16_speedup() -> float:
    """fp32 time / bf16-autocast time of the probe on this CPU with the current thread count (> 1: bf16 wins).
    Well under a second: where bf16 is emulated (AVX2 only, 4-20x slower) it stops after one slow repetition."""
    fp32 = _probe_seconds(False)
    return fp32 / _probe_seconds(True, give_up_after=4 * fp32)


BF16_MARGIN = 1.1  # bf16 must be at least this much faster than fp32 to be chosen (it costs some precision)


def precision_cache_path() -> Path:
    """Where the CPU's bf16 verdict is cached ($GENMODELS_CACHE, else ~/.cache/generative-models)."""
    root = os.environ.get("GENMODELS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / \
        "generative-models"
    return Path(root) / "precision.json"


def cpu_bf16_is_faster(cache: Path | None = None, probe: Callable[[], float] = probe_bf16_speedup) -> bool:
    """Measured, not assumed: the probe's verdict for this CPU model, torch version and thread count, cached."""
    cache = cache or precision_cache_path()
    key = f"{cpu_model()} | {bf16_flags()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    try:
        verdicts = json.loads(cache.read_text())
    except (OSError, ValueError):
        verdicts = {}
    if key not in verdicts:
        speedup = probe()
        verdicts[key] = {"bf16_speedup": round(speedup, 3), "bf16": speedup >= BF16_MARGIN}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(verdicts, indent=1, sort_keys=True) + "\n")
            tmp.replace(cache)
        except OSError:
            pass  # a read-only home only costs the probe again next time
    return bool(verdicts[key]["bf16"])


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA with bf16 support, or on a CPU where the measured probe says bf16 autocast is at
    least BF16_MARGIN times faster (cpu_bf16_is_faster); else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_is_faster() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the forward pass, or a no-op for fp32. Losses should be taken in fp32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def setup(device: str = "auto", threads: int = 0) -> Dist:
    """Join the torchrun process group if launched by torchrun; set threads and the device."""
    if threads > 0:
        torch.set_num_threads(threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    dev = resolve_device(device)
    if world_size > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, device=dev)


def wrap(model: nn.Module, dist: Dist) -> nn.Module:
    """DistributedDataParallel around `model` when running multi-process, else the model itself."""
    if not dist.enabled:
        return model
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (for checkpoints and sampling)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gather_objects(obj: object, dist: Dist) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (a one-element list when single-process)."""
    if not dist.enabled:
        return [obj]
    out: list = [None] * dist.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def all_max(values: list[float], dist: Dist) -> list[float]:
    """Element-wise maximum of `values` over all ranks (the values themselves single-process): how ranks agree
    on a decision, e.g. 'stop' if any rank was signalled."""
    if not dist.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=dist.device if dist.device.type == "cuda" else "cpu")
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return t.tolist()


def barrier(dist: Dist) -> None:
    """Wait for every process (no-op single-process)."""
    if dist.enabled:
        torch_dist.barrier()


def teardown(dist: Dist) -> None:
    """Leave the process group cleanly.

    gloo can abort at exit if a DDP wrapper is still alive when the group is destroyed, so callers drop their
    wrappers first; we collect garbage and synchronise before destroying.
    """
    if dist.enabled and torch_dist.is_initialized():
        gc.collect()
        torch_dist.barrier()
        torch_dist.destroy_process_group()
