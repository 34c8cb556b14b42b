"""What watching a run costs: metrics + events + report on vs off, in one run.

1. End to end: gold runs of the bundled tasks on a real local Ray (real slot servers, real
   grading), alternating `metrics.enabled=true` / `false` (ABAB... so drift hits both),
   wall time per run; the ratio of the medians.
2. The recording itself, per trajectory, measured on the lines the runs wrote: the Trace
   events of one trajectory, its JSON line, the metrics fed from it (typed stats, the
   Prometheus registry), as a share of a trajectory's wall time. This bounds the overhead
   when (1) is within the noise of a shared machine.
3. The driver: one RunObserver.tick (a timeline point, the gauges) per poll of the actors.
4. The report: one build from a run dir of 10,000 trajectories (in a thread, every
   `metrics.report_interval` seconds, less often when slow), as a share of one core.

Run: python tests/bench/bench_observe.py [pairs=4] [tasks=8]
     python tests/bench/bench_observe.py --smoke   (one pair of 1-task runs, no warm-up, a
                                                    report of 200 trajectories: only proves
                                                    it works)
tests/observe/test_bench_observe.py runs parts 2-4 (`costs`) at smoke sizes on the run the
observe tests already make, so the suite starts no extra cluster for it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ray  # noqa: E402

from actors.cluster import Snapshot  # noqa: E402
from actors.observe import RunObserver  # noqa: E402
from rollout.settings.config import MetricsConfig  # noqa: E402
from rollout.record.events import read_events  # noqa: E402
from rollout.record.metrics import PrometheusRegistry, StatsMetrics  # noqa: E402
from rollout.report import build_report  # noqa: E402
from rollout.record.stats import GroupStats, TrajectoryStats  # noqa: E402
from rollout.record.trace import Trace  # noqa: E402
from tests.actors.helpers import gold_config, make_cluster, run_until_done  # noqa: E402


async def gold_run(run_dir: Path, enabled: bool, tasks: int) -> tuple[float, Snapshot]:
    cfg = gold_config(run_dir, f"metrics.enabled={str(enabled).lower()}", "workers.num=2",
                      "backend.max_hosts=2", max_items=tasks)
    cluster = make_cluster(cfg)
    t0 = time.perf_counter()
    snap = await run_until_done(cluster)
    wall = time.perf_counter() - t0
    assert snap.queue["completed"] == tasks, snap.queue
    return wall, snap


def driver_tick_cost(snap: Snapshot) -> float:
    """Seconds per RunObserver.tick (timeline point, gauges; the report builds in a thread)."""
    with tempfile.TemporaryDirectory() as d:
        obs = RunObserver(Path(d), MetricsConfig(report_interval=1e9))
        obs._next_report = float("inf")
        t0 = time.perf_counter()
        for _ in range(2000):
            obs.tick(snap)
        return (time.perf_counter() - t0) / 2000


def recording_cost(lines: list[dict]) -> float:
    """Seconds spent per trajectory recording its events and metrics (best of 5)."""
    reg = PrometheusRegistry()
    metrics = StatsMetrics(reg)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for line in lines:
            trace = Trace(line["id"], line["task"], attempt=line["attempt"], worker=line["worker"],
                          image=line.get("image"))
            for kind, _, _, fields in line["ev"]:
                trace.add(kind, time.monotonic(), **fields)
            out = trace.to_line(outcome=line["outcome"], score=line["score"], group=line["group"])
            json.dumps(out, separators=(",", ":"), default=str)
            metrics.trajectory(TrajectoryStats.from_line(out))
            metrics.group(GroupStats.from_fate(out["group"]))
        reg.render()
        best = min(best, (time.perf_counter() - t0) / len(lines))
    return best


def report_cost(lines: list[dict], n: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "events.jsonl"
        with path.open("w") as fh:
            for i in range(n):
                line = dict(lines[i % len(lines)], id=f"t{i}", task=f"task-{i % 500}")
                fh.write(json.dumps(line, separators=(",", ":")) + "\n")
        t0 = time.perf_counter()
        build_report(d)
        return time.perf_counter() - t0


async def main(pairs: int, tasks: int, smoke: bool = False) -> None:
    walls: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        if not smoke:
            warm, _ = await gold_run(Path(tmp) / "warm-up", False, tasks)  # caches, imports
            print(f"  warm-up run: {warm:.2f} s", flush=True)
        for i in range(pairs):
            for enabled in ((True, False) if i % 2 == 0 else (False, True)):
                run_dir = Path(tmp) / f"run-{i}-{enabled}"
                wall, snap = await gold_run(run_dir, enabled, tasks)
                walls[enabled].append(wall)
                print(f"  run {i} metrics {'on ' if enabled else 'off'}: {walls[enabled][-1]:.2f} s",
                      flush=True)
        lines = list(read_events(Path(tmp) / "run-0-True"))
    on, off = statistics.median(walls[True]), statistics.median(walls[False])
    pair_ratios = [a / b for a, b in zip(walls[True], walls[False])]
    print(f"end to end ({pairs} pairs, {tasks} tasks x group 2, alternating): median with "
          f"metrics {on:.2f} s, without {off:.2f} s, ratio {on / off:.3f}; median ratio within "
          f"a pair {statistics.median(pair_ratios):.3f} (spread of runs without: "
          f"{min(walls[False]):.2f}-{max(walls[False]):.2f} s)")
    costs(lines, snap, 200 if smoke else 10_000)


def costs(lines: list[dict], snap: Snapshot, report_n: int) -> None:
    """Parts 2-4, from one run's trajectory lines and its last snapshot."""
    per_traj = recording_cost(lines)
    traj_wall = statistics.mean(x["wall"] for x in lines)
    print(f"recording per trajectory: {per_traj * 1e6:.0f} us for {statistics.mean(len(x['ev']) for x in lines):.0f} "
          f"events (trace, JSON line, typed stats, registry) = {100 * per_traj / traj_wall:.3f}% "
          f"of a trajectory's {traj_wall:.2f} s")
    tick = driver_tick_cost(snap)
    print(f"driver: {tick * 1e6:.0f} us per tick (timeline point, gauges), once per 0.5 s poll "
          f"= {100 * tick / 0.5:.3f}% of the driver's loop")
    build = report_cost(lines, report_n)
    print(f"report.html for {report_n:,} trajectories: {build:.2f} s per build, in a thread; every 30 s "
          f"that is {100 * build / 30:.1f}% of one core")


if __name__ == "__main__":
    smoke = "--smoke" in sys.argv[1:]
    args = [1, 1] if smoke else [int(a) for a in sys.argv[1:]]
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="rollout",
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        asyncio.run(main(*(args or [4, 8]), smoke=smoke))
    finally:
        ray.shutdown()
