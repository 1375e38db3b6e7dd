"""benchmark.py on a tiny setting: the CPU line comes first, then a row per setting with its share of the peak."""
import sys

import torch

import benchmark
import train
from shared import bench


def test_benchmark_names_the_cpu_first_and_reports_each_setting(monkeypatch, capsys):
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, **kw: 1e11 if dtype == torch.float32 else 2e10)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--steps", "4", "--warmup", "2", "--threads", "1",
                                      "--image-size", "16", "--width", "4", "--batch-size", "8", "--z-dim", "4",
                                      "--precisions", "fp32"])
    benchmark.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: ") and "1 threads" in lines[0]
    assert "fp32 0.100 TFLOP/s" in lines[1] and "bf16" not in lines[1]  # only the peaks asked for
    assert "bernoulli" in lines[2]
    rows = [line.split() for line in lines if line.strip().startswith("fp32 ")]
    assert [r[1] for r in rows] == ["contiguous", "channels_last"]
    assert all(float(r[2]) > 0 and 0 < float(r[4].rstrip("%")) < 100 for r in rows)  # images/s, % of fp32 peak


def test_counted_flops_grow_with_the_width_and_the_batch():
    base = dict(image_size=16, batch_size=4, z_dim=4, width=4, hidden=16)
    small = benchmark.flops_per_step(train.TrainConfig(**base), 1)
    assert benchmark.flops_per_step(train.TrainConfig(**{**base, "batch_size": 8}), 1) == 2 * small
    assert benchmark.flops_per_step(train.TrainConfig(**{**base, "width": 8}), 1) > 1.5 * small
