"""The observability benchmark (tests/bench/bench_observe.py): its recording, driver-tick
and report parts at smoke sizes, on the gold run the observe tests already make."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from rollout.record.events import read_events

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_observe.py"


def test_bench_observe_costs_smoke(gold_run, capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_observe", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lines = list(read_events(gold_run.run_dir))
    assert lines
    bench.costs(lines, gold_run.snapshot, report_n=50)
    out = capsys.readouterr().out
    for part in ("recording per trajectory:", "driver:", "report.html for 50 trajectories"):
        assert part in out, out
