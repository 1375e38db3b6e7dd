"""The helpers of the folders' plumbing tests (shared/testing.py)."""
import os
import subprocess
import sys

import pytest

from shared.testing import children, environ, exits_with, one_error_line, strict_json_lines, wait_for


def test_strict_json_lines_refuses_bare_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": null}\n')
    assert [r["loss"] for r in strict_json_lines(path)] == [0.5, None]
    path.write_text('{"step": 1, "loss": NaN}\n')
    with pytest.raises(ValueError, match="NaN"):
        strict_json_lines(path)


def test_exits_with_and_one_error_line(capsys):
    def fail():
        print("error: one line", file=sys.stderr)
        raise SystemExit(2)
    exits_with(2, fail)
    assert one_error_line(capsys) == "error: one line"
    with pytest.raises(AssertionError):
        exits_with(3, fail)


def test_children_and_environ_find_a_child_by_its_environment(tmp_path):
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", f"open({str(marker)!r}, 'w').write('x' * 10); "
                             "import time; time.sleep(30)"], env={**os.environ, "RANK": "7"},
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(proc, marker, 10, seconds=30)
        mine = children(os.getpid())
        assert proc.pid in mine and environ(proc.pid).get("RANK") == "7"
    finally:
        proc.kill()
        proc.wait()
    assert environ(proc.pid) == {}  # gone
    done = subprocess.Popen([sys.executable, "-c", "pass"], stderr=subprocess.PIPE, text=True)
    done.wait()
    with pytest.raises(AssertionError):  # the process ended before writing the file
        wait_for(done, tmp_path / "never", 1, seconds=5)
