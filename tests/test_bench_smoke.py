"""The benchmarks that slot containers changed run end to end in their smoke mode (they are
not collected by pytest, so without this they could break unnoticed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "bench"


@pytest.mark.parametrize("script, expect", [
    ("bench_sandbox.py", "a tool call in a warm slot container against bare bwrap"),
    ("bench_throughput.py", "CPU-seconds per tool call by process"),
    ("bench_tmux.py", "round trip: tmux send-keys + capture against a plain terminal tool call"),
    ("bench_grading.py", "grading per trajectory"),
    ("bench_builds.py", "layer blobs on disk"),
])
def test_bench_smoke(script: str, expect: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], capture_output=True,
                          text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout, proc.stdout[-3000:]
