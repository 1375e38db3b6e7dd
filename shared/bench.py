"""Measuring speed: the machine's matmul peak and the FLOPs of a piece of code.

Benchmarks report images/s together with the share of the measured peak they reach, so a figure says both
how fast and how far from the hardware's limit it is.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    """Measured FLOP/s of an n x n matmul in `dtype` on the CPU with the current thread count."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start)


class _FlopCount(TorchDispatchMode):
    """Adds up torch's FLOP formulas (torch.utils.flop_counter) for every op dispatched under it.

    torch's own FlopCounterMode also tracks modules with backward hooks, and those hooks refuse a
    torch.autograd.grad call inside the counted code (the gradient penalty's double backward); counting
    without module attribution has no such hooks and gives the same total.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (multiply-add = 2) of the matmuls and convolutions that `fn()` runs, forward and backward."""
    with _FlopCount() as counter:
        fn()
    return counter.total
