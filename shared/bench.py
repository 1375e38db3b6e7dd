"""Measuring speed: the machine's matmul peak, the FLOPs of a piece of code, a train.py's images/s.

Benchmarks report images/s together with the share of the measured peak they reach, so a figure says both
how fast and how far from the hardware's limit it is, and every report starts with cpu_line(): our machines'
CPUs differ between sessions, and a figure without its CPU cannot be compared.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def cpu_line(threads: int | None = None) -> str:
    """'CPU: <model> | <bf16 features> | N threads | torch X': printed beside every speed figure."""
    from shared.dist import bf16_flags, cpu_model

    return (f"CPU: {cpu_model()} | {bf16_flags()} | {threads or torch.get_num_threads()} threads | "
            f"torch {torch.__version__}")


def matmul_peak(dtype: torch.dtype, n: int = 3072, repeats: int = 5, seconds: float = 0.5) -> float:
    """FLOP/s of large square (n x n) matmuls in `dtype` on the CPU with the current thread count (set it to the
    run's first): the best of `repeats` timed windows of about `seconds` each, after a warm-up. Large squares
    and the best window come close to the hardware's peak; small or single timings under-measure it. Where one
    matmul would take longer than about `seconds` (bf16 emulated on an AVX2-only CPU is ~1000x slower), a
    smaller square is used, so the probe stays within a few seconds."""
    size = 256  # grow towards n while one matmul stays well inside a window (never start with a slow giant)
    while True:
        a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
        start = time.perf_counter()
        a @ b
        took = time.perf_counter() - start
        if size >= n or took * 8 > seconds:
            break
        size *= 2
    n = size
    a @ b
    best = 0.0
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while count == 0 or time.perf_counter() - start < seconds:
            a @ b
            count += 1
        best = max(best, 2 * n ** 3 * count / (time.perf_counter() - start))
    return best


def train_images_per_s(run_main: Callable[[Any], Any], make_config: Callable[[str], Any], skip: int = 1) -> float:
    """Mean images/s that a train.py's real loop logs in metrics.jsonl, skipping the first `skip` records (warm-up).
    make_config(out) builds its config with `out` as run folder (in a temporary folder, removed afterwards)."""
    with tempfile.TemporaryDirectory() as tmp:
        run_main(make_config(tmp))
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    timed = records[skip:] or records
    return sum(r["images_per_s"] for r in timed) / len(timed)


def report_row(name: str, images_per_s: float, flops_per_image: float, peaks: dict[str, float]) -> str:
    """One benchmark row: images/s, achieved TFLOP/s and the share of each measured peak."""
    achieved = images_per_s * flops_per_image
    shares = " ".join(f"{100 * achieved / peak:10.1f}%" for peak in peaks.values())
    return f"{name:>24} {images_per_s:9.0f} {achieved / 1e12:8.3f} {shares}"


def report_header(peaks: dict[str, float]) -> str:
    return f"{'setting':>24} {'images/s':>9} {'TFLOP/s':>8} " + " ".join(f"{'% ' + k + ' peak':>11}" for k in peaks)


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
