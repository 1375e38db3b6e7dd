"""benchmark.py on a tiny setting: the CPU line comes first, then a row per width with its share of the peak."""
import sys

import benchmark
from shared import bench


def test_benchmark_names_the_cpu_first_and_reports_each_width(monkeypatch, capsys):
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, **kw: 1e11)
    monkeypatch.setattr(sys, "argv", ["benchmark.py", "--steps", "4", "--warmup", "2", "--threads", "1",
                                      "--image-size", "8", "--widths", "8", "--batch-size", "4", "--sample-steps", "2"])
    benchmark.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("CPU: ") and "1 threads" in lines[0]
    rows = [line.split() for line in lines if line.strip().startswith("width 8 fp32")]
    assert len(rows) == 1 and float(rows[0][3]) > 0
    assert any("PC sampler, 4 NFE" in line and "images/s" in line for line in lines)
    assert any("ODE sampler" in line and "images/s" in line for line in lines)
