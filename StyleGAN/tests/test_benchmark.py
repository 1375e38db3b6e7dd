"""benchmark.py on a tiny setting: the CPU line comes first, then a row per precision with its share of the peak."""
# Adapted from DCGAN/tests/test_benchmark.py: StyleGAN's flags; R1 and path length in the counted FLOPs.
import sys

import torch

import benchmark
from model import Config
from shared import bench


def test_benchmark_names_the_cpu_first_and_reports_each_precision(monkeypatch, capsys):
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, **kw: 1e11 if dtype == torch.float32 else 2e10)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--steps", "4", "--warmup", "2", "--threads", "1",
                                      "--image-size", "16", "--width", "8", "--w-dim", "8", "--batch-size", "8",
                                      "--precisions", "fp32"])
    benchmark.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: ") and "1 threads" in lines[0]
    assert "fp32 0.100 TFLOP/s" in lines[1] and "bf16" not in lines[1]
    rows = [line.split() for line in lines if line.strip().startswith("fp32 ")]
    assert len(rows) == 1 and float(rows[0][1]) > 0 and 0 < float(rows[0][3].rstrip("%")) < 100


def test_the_lazy_regularisers_add_their_share_of_flops():
    cfg = Config(image_size=16, z_dim=8, w_dim=8, g_width=8, d_width=8)
    plain = benchmark.flops_per_step(cfg, 8, r1_every=0)
    r1 = benchmark.flops_per_step(cfg, 8, r1_every=1)
    both = benchmark.flops_per_step(cfg, 8, r1_every=1, pl_every=1)
    assert r1 > 1.2 * plain and both > 1.2 * r1
    assert benchmark.flops_per_step(cfg, 8, r1_every=16) < (plain + r1) / 2  # 1/16 of an R1 step
