"""Every benchmark in tests/bench runs end to end in its smoke mode (tiny sizes, seconds), so
none can rot unnoticed: they are not collected by pytest. Two run elsewhere, on what their
test directory already starts: bench_embedded (tests/policy_embedded/test_bench_embedded.py,
the shared model server) and bench_observe (tests/observe/test_bench_observe.py, the shared
gold run); bench_embedded_toolcalls in tests/policy_embedded/test_bench_toolcalls.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "bench"
ROOT = BENCH.parents[1]


@pytest.mark.parametrize("script, expect", [
    ("bench_sandbox.py", "a tool call in a warm slot container against bare bwrap"),
    ("bench_throughput.py", "CPU-seconds per tool call by process"),
    ("bench_tmux.py", "round trip: tmux send-keys + capture against a plain terminal tool call"),
    ("bench_grading.py", "grading per trajectory"),
    ("bench_builds.py", "layer blobs on disk"),
    ("bench_acquire.py", "acquire with background resets: p50"),
    ("bench_actors.py", "groups of 2 x 64 tokens:"),
    ("bench_agent_turn.py", "agent overhead per turn:"),
    ("bench_image_slots.py", "restore /testbed + clear for prepare"),
    ("bench_images.py", "new store instance / warm use"),
    ("bench_modal_transport.py", "exec/tunnel ="),
    ("bench_prepare.py", "ratio git clone / prepare:"),
    ("bench_python_tool.py", "python call / exec p50 ratio:"),
    ("bench_quota.py", "reset (server side + HTTP)"),
])
def test_bench_smoke(script: str, expect: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], capture_output=True,
                          text=True, timeout=280, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout, proc.stdout[-3000:]


def test_every_benchmark_has_a_smoke_mode() -> None:
    for script in sorted(BENCH.glob("bench_*.py")):
        assert "--smoke" in script.read_text(), f"{script.name} has no --smoke mode"
