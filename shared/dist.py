"""Device, precision, threads and (optional) multi-process set-up.

The same train.py runs as one process (`python train.py`) or under `torchrun --nproc_per_node=N train.py`:
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and we join a process group (gloo on CPU, nccl on GPU).
Only rank 0 logs and checkpoints (`Dist.is_main`).
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass

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


def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tile units (the only CPUs where bf16 autocast is faster than fp32)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CUDA or on AMX CPUs (measured ~10x faster matmuls), else fp32."""
    if precision != "auto":
        return precision
    fast_bf16 = (device.type == "cuda" and torch.cuda.is_bf16_supported()) or (device.type == "cpu" and cpu_has_amx())
    return "bf16" if fast_bf16 else "fp32"


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
