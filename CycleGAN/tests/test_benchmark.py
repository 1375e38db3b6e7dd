"""benchmark.py on a tiny setting: the CPU line comes first, then a row per precision with its share of the peak."""
import sys

import torch

import benchmark
from model import Config
from shared import bench


def test_benchmark_names_the_cpu_first_and_reports_each_setting(monkeypatch, capsys):
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, **kw: 1e11 if dtype == torch.float32 else 2e10)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--dataset", "mnist", "--steps", "4", "--warmup", "2",
                                      "--threads", "1", "--image-size", "16", "--g-width", "4", "--n-blocks", "1",
                                      "--d-width", "4", "--batch-size", "4", "--precisions", "fp32"])
    benchmark.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: ") and "1 threads" in lines[0]
    assert "fp32 0.100 TFLOP/s" in lines[1] and "bf16" not in lines[1]
    rows = [line.split() for line in lines if line.strip().startswith("fp32 ")]
    assert len(rows) == 1 and float(rows[0][1]) > 0 and 0 < float(rows[0][3].rstrip("%")) < 100


def test_flops_grow_with_the_residual_blocks():
    small, large = (benchmark.flops_per_step(Config(image_size=16, channels=1, g_width=4, n_blocks=n,
                                                    d_width=4, d_layers=1), 2)
                    for n in (1, 3))
    assert large > 1.3 * small
