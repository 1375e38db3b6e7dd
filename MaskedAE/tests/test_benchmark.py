"""benchmark.py on a tiny setting: the CPU line first, the encoder's FLOPs falling with the mask ratio (the
decoder's nearly constant), a row per precision."""
import sys

import torch

import benchmark
import train
from shared import bench


def test_benchmark_names_the_cpu_first_and_reports_each_setting(monkeypatch, capsys):
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, **kw: 1e11 if dtype == torch.float32 else 2e10)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--steps", "4", "--warmup", "2", "--threads", "1",
                                      "--image-size", "16", "--dim", "16", "--depth", "1", "--batch-size", "8",
                                      "--precisions", "fp32", "--mask-ratios", "0", "0.75"])
    benchmark.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: ") and "1 threads" in lines[0]
    assert "fp32 0.100 TFLOP/s" in lines[1] and "bf16" not in lines[1]
    rows = [line.split() for line in lines if line.strip().startswith("fp32 ")]
    assert len(rows) == 1 and float(rows[0][1]) > 0 and 0 < float(rows[0][3].rstrip("%")) < 100


def test_the_encoder_forward_cost_falls_with_the_mask_ratio_and_the_decoder_cost_barely_changes():
    cfg = train.TrainConfig(image_size=16, dim=16, depth=1, heads=2, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    (enc0, dec0), (enc75, dec75) = benchmark.forward_flops(cfg, 1, 0.0), benchmark.forward_flops(cfg, 1, 0.75)
    assert 3 < enc0 / enc75 < 4  # 17 tokens vs 5
    assert dec75 < dec0 < 1.2 * dec75  # the decoder runs on all 1 + L positions; only its input projection sees K
