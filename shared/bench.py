"""Measuring speed: the machine's matmul peak and the FLOPs of a piece of code.

Benchmarks report images/s together with the share of the measured peak they reach, so a figure says both
how fast and how far from the hardware's limit it is.
"""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


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


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (multiply-add = 2) of the matmuls and convolutions that `fn()` runs, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
