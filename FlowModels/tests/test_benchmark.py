"""benchmark.py on a tiny setting: the CPU line comes first, then a row per flow and precision."""
import sys

import torch

import benchmark
from model import Config
from shared import bench


def test_benchmark_names_the_cpu_first_and_reports_each_setting(monkeypatch, capsys):
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, **kw: 1e11 if dtype == torch.float32 else 2e10)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--steps", "4", "--warmup", "2", "--threads", "1",
                                      "--image-size", "16", "--levels", "2", "--depth", "1", "--width", "8",
                                      "--batch-size", "8", "--precisions", "fp32"])
    benchmark.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: ") and "1 threads" in lines[0]
    assert "fp32 0.100 TFLOP/s" in lines[1] and "bf16" not in lines[1]
    rows = [line.split() for line in lines if line.strip().split()[:2] in (["glow", "fp32"], ["realnvp", "fp32"])]
    assert [r[0] for r in rows] == ["glow", "realnvp"]
    assert all(float(r[2]) > 0 and 0 < float(r[4].rstrip("%")) < 100 for r in rows)


def test_flops_grow_with_depth():
    small, deep = (benchmark.flops_per_step(Config(image_size=16, levels=2, depth=d, width=8), 4) for d in (1, 3))
    assert 2.5 < deep / small < 3.5
