"""Helpers for the plumbing tests every model folder runs (tests/test_train.py): reading a run's log strictly,
checking one-line CLI errors and exit codes, and finding torchrun's worker processes to signal one of them.

The tests themselves stay in each folder (they name the folder's networks, flags and losses); only these
model-free helpers live here, so they are written once.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest


def strict_json_lines(path: Path) -> list[dict]:
    """metrics.jsonl parsed as strict JSON: a bare NaN / Infinity raises."""
    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def exits_with(code: int, fn: Callable[..., Any], *args: Any) -> None:
    """fn(*args) raises SystemExit with this code."""
    with pytest.raises(SystemExit) as exit_info:
        fn(*args)
    assert exit_info.value.code == code


def one_error_line(capsys: Any) -> str:
    """The single line on stderr (asserts there is exactly one)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def wait_for(proc: subprocess.Popen, path: Path, size: int, seconds: float = 180) -> None:
    """Wait until `path` holds at least `size` bytes (e.g. a few metrics.jsonl lines); fails if proc ends first."""
    deadline = time.time() + seconds
    while not path.exists() or path.stat().st_size < size:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.2)


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(proc.name))
    return found


def environ(pid: int) -> dict[str, str]:
    """The environment of process `pid` ({} if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
