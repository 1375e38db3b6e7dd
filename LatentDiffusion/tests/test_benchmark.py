"""benchmark.py on a tiny setting: the CPU line first, a row per stage with its share of the peak, sampling."""
import sys

import benchmark
from shared import bench


def test_benchmark_names_the_cpu_first_and_reports_both_stages(monkeypatch, capsys):
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, **kw: 1e11)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--steps", "4", "--warmup", "2", "--threads", "1",
                                      "--image-size", "16", "--ae-width", "8", "--widths", "16",
                                      "--sample-steps", "2"])
    benchmark.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: ") and "1 threads" in lines[0]
    for name in ("autoencoder fp32", "U-Net width 16 fp32"):
        rows = [line.split() for line in lines if line.strip().startswith(name)]
        assert len(rows) == 1 and float(rows[0][len(name.split())]) > 0, name
    assert any("DDIM 2 steps" in line and "images/s" in line for line in lines)
