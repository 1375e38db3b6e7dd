"""benchmark.py on a tiny setting: the CPU line comes first, then a row per stage with its share of the peak."""
import sys

import torch

import benchmark
from model import Config
from shared import bench


def test_benchmark_names_the_cpu_first_and_reports_each_stage(monkeypatch, capsys):
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, **kw: 1e11 if dtype == torch.float32 else 2e10)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--steps", "4", "--warmup", "2", "--threads", "1",
                                      "--image-size", "16", "--hidden", "8", "--res-hidden", "8", "--codes", "16",
                                      "--code-dim", "4", "--prior-width", "16", "--prior-layers", "1",
                                      "--batch-size", "8", "--precisions", "fp32"])
    benchmark.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: ") and "1 threads" in lines[0]
    assert "fp32 0.100 TFLOP/s" in lines[1] and "bf16" not in lines[1]
    rows = [line.split() for line in lines if line.strip().startswith(("vqvae ", "prior "))]
    assert [r[0] for r in rows] == ["vqvae", "prior"]
    assert all(float(r[2]) > 0 and 0 < float(r[4].rstrip("%")) < 100 for r in rows)  # images/s, % of fp32 peak


def test_counted_flops_grow_with_the_network():
    small, wide = (benchmark.flops_per_step(Config(image_size=16, hidden=h, prior_width=w), 4)
                   for h, w in ((16, 16), (32, 32)))
    assert wide["vqvae"] > 2 * small["vqvae"] and wide["prior"] > 2 * small["prior"]
