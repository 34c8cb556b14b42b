"""Benchmark: trajectories in flight on one machine, through the whole real cluster.

Run on demand (not collected by pytest):

    python tests/bench/bench_throughput.py                      # 16, 64, 256, 1024
    python tests/bench/bench_throughput.py --concurrency 16,64 --latency 2 --turns 3

Each row starts a fresh cluster on one local Ray (TaskQueue, RolloutWorkers, one SandboxPool
actor, TrainerSink writing groups.jsonl), with `policy=simulated`: every turn waits
`--latency` seconds, then one real tool call runs in the trajectory's real slot (slot server,
bubblewrap, cgroups); the slot is prepared for real (SWE-smith checkout of a bundled task)
unless `--no-prepare`, graded from the seed unless `--grading`. `--waves` x concurrency
trajectories run, `concurrency` at a time (tasks are the bundled ones, repeated under new
task ids). Hosts are started before the clock starts.

Printed per row: trajectories/s and tool calls/s against the ideal (every trajectory taking
exactly latency x turns), the per-trajectory ratio, per-phase p50/p99 (acquire wait from the
trajectories; tool call, actor hop and sink hop from a probe that runs alongside the load
through the same actors), CPU-seconds per tool call by process (driver, workers, pool actor,
slot servers with their commands, queue + sink actors, Ray's own daemons), and peak resident
memory per trajectory.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from actors.cluster import RolloutCluster, Snapshot  # noqa: E402
from actors.sandbox_pool import ActorSandbox  # noqa: E402
from rollout.tasks import load_tasks  # noqa: E402
from rollout.types import Task  # noqa: E402
from tests.bench.support import local_ray, pct  # noqa: E402
from tests.launch_config import compose_config, qwen_tokenizer_dir  # noqa: E402

ROLES = ("driver", "workers", "pool actor", "slot servers", "queue+sink", "ray daemons")


def role_of(p: psutil.Process, me: int) -> str | None:
    if p.pid == me:
        return "driver"
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return None
    if "sandbox_image" in cmd:
        return "slot servers"
    if cmd.startswith("ray::RolloutWorker"):
        return "workers"
    if cmd.startswith("ray::SandboxPool"):
        return "pool actor"
    if cmd.startswith(("ray::TaskQueue", "ray::TrainerSink")):
        return "queue+sink"
    if "ray" in cmd:
        return "ray daemons"
    return None


class Meter:
    """CPU seconds (own + waited-for children: a slot server's commands, a worker's git)
    and resident memory of this process tree, by role. Exited processes keep counting
    through their last sample."""

    def __init__(self) -> None:
        self.me = os.getpid()
        self.cpu: dict[int, tuple[str, float]] = {}
        self.base: dict[int, float] = {}
        self.peak_rss: dict[str, int] = {r: 0 for r in ROLES}

    def _procs(self) -> list[tuple[psutil.Process, str]]:
        out = []
        me = psutil.Process(self.me)
        for p in [me, *me.children(recursive=True)]:
            role = role_of(p, self.me)
            if role:
                out.append((p, role))
        return out

    def sample(self, start: bool = False) -> None:
        rss = {r: 0 for r in ROLES}
        for p, role in self._procs():
            try:
                t = p.cpu_times()
                total = t.user + t.system
                if role != "pool actor":  # its children are the slot servers, counted apart
                    total += t.children_user + t.children_system
                mem = p.memory_info().rss
            except psutil.Error:
                continue
            if start or p.pid not in self.base:
                # A process born during the run counts from zero, one from before from now.
                self.base[p.pid] = total if start else 0.0
            self.cpu[p.pid] = (role, total)
            if os.environ.get("BENCH_DEBUG"):
                print(role, p.pid, t, file=sys.stderr)
            rss[role] += mem
        for r in ROLES:
            self.peak_rss[r] = max(self.peak_rss[r], rss[r])

    def cpu_by_role(self) -> dict[str, float]:
        out = {r: 0.0 for r in ROLES}
        for pid, (role, total) in self.cpu.items():
            out[role] += total - self.base.get(pid, 0.0)
        return out


@dataclasses.dataclass
class Probe:
    """One acquire -> exec `true` -> release, an actor hop and a sink hop, every `every`
    seconds, through the run's own actors, while the load runs."""

    cluster: RolloutCluster
    every: float = 0.1
    stopped: bool = False
    acquire: list[float] = dataclasses.field(default_factory=list)
    tool: list[float] = dataclasses.field(default_factory=list)
    hop: list[float] = dataclasses.field(default_factory=list)
    sink: list[float] = dataclasses.field(default_factory=list)

    async def run(self) -> None:
        pool, sink = self.cluster.pools[0], self.cluster.sink
        n = 0
        while not self.stopped:
            await asyncio.sleep(self.every)
            n += 1
            t0 = time.perf_counter()
            await pool.node_id.remote()
            t1 = time.perf_counter()
            await sink.may_start.remote()
            t2 = time.perf_counter()
            slot = await pool.acquire.remote(f"probe/{n}", None, 600.0)
            t3 = time.perf_counter()
            try:
                r = await ActorSandbox(pool, slot).exec("true")
                t4 = time.perf_counter()
            finally:
                await pool.release.remote(slot)
            if r.exit_code == 0:
                self.tool.append(t4 - t3)
            self.hop.append(t1 - t0)
            self.sink.append(t2 - t1)
            self.acquire.append(t3 - t2)


def bench_tasks(n: int) -> list[Task]:
    """`n` tasks: the bundled ones in turn, each copy under its own task id (prepare and
    grading read the instance from `data`, so every copy is a real, preparable task)."""
    base = load_tasks({"source": "bundled"})
    return [dataclasses.replace(base[i % len(base)], task_id=f"{base[i % len(base)].task_id}#{i}")
            for i in range(n)]


def row_config(args: argparse.Namespace, c: int, run_dir: Path) -> Any:
    group = min(args.group_size, c)
    workers = max(1, min(args.max_workers, math.ceil(c / args.per_worker)))
    groups_in_flight = math.ceil(c / group / workers)
    hosts = math.ceil(c * (1 + args.headroom) / args.slots_per_host)
    sim = args.latency, args.turns
    overrides = [
        "conf=swe_smith", f"run.dir={run_dir}", "policy=simulated",
        f"policy.tokenizer={qwen_tokenizer_dir()}", f"policy.simulated.latency={sim[0]}",
        f"policy.simulated.latency_spread={args.spread}", f"policy.simulated.turns={sim[1]}",
        f"policy.simulated.grading={str(args.grading).lower()}",
        f"policy.simulated.prepare={str(args.prepare).lower()}",
        "policy.simulated.commands=[" + ", ".join(repr(x) for x in args.commands) + "]",
        f"env.group_size={group}", f"workers.num={workers}",
        f"workers.groups_in_flight={groups_in_flight}",
        f"backend.min_hosts={hosts}", f"backend.max_hosts={hosts}",
        f"backend.slots_per_host={args.slots_per_host}", "backend.start_burst=16",
        "backend.max_starting=8", "backend.start_rate=50", "backend.health_check_interval=30",
        "sandbox.disk_mb=" + (str(args.disk_mb) if args.disk_mb else "null"),
        f"sandbox.containers={args.containers}",
        "queue.lease_seconds=600", "workers.acquire_timeout=600", "run.shutdown_grace=30",
        "agent.max_context_tokens=32000",
    ]
    return compose_config(overrides), group, workers, groups_in_flight, hosts


async def one_row(args: argparse.Namespace, c: int) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-tput-{c}-"))
    cfg, group, workers, gif, hosts = row_config(args, c, run_dir)
    n = c * args.waves
    tasks = bench_tasks(math.ceil(n / group))
    cluster = RolloutCluster(cfg, tasks, run_dir)
    meter, series = Meter(), []
    t_begin = time.monotonic()
    await cluster.start()
    t_started = time.monotonic()
    probe = Probe(cluster)
    probe_task = asyncio.create_task(probe.run())
    t_start = time.monotonic()
    last_sample = 0.0
    final_sampled: list[bool] = []

    def tick(s: Snapshot) -> None:
        nonlocal last_sample
        now = time.monotonic()
        done = sum(w.trajectories_done for w in s.workers)
        flying = sum(w.trajectories_in_flight for w in s.workers)
        series.append((now, done, flying))
        if flying and not meter.base:  # from the first trajectory on: no start-up costs
            meter.sample(start=True)
            last_sample = now
            return
        if done >= 0.95 * n:  # done well before the end: it holds no slot at the last poll
            probe.stopped = True
        # Sampled while everything still runs: at teardown the pool actor reaps the slot
        # servers, and their CPU would count twice (as its waited-for children).
        if not meter.base:
            return
        if now - last_sample > 1.0 or (done >= n and not final_sampled):
            last_sample = now
            meter.sample()
        if done >= n:
            final_sampled.append(True)

    snap = await cluster.run(on_tick=tick, tick=0.2)
    t_end = time.monotonic()
    probe_task.cancel()
    groups = _groups(run_dir)
    meta = [m for g in groups for m in g.get("_meta", [])]
    done = len(meta)
    first = next((t for t, _, f in series if f > 0), t_start)
    finished = next((t for t, d, _ in series if d >= done), t_end)
    makespan = finished - first
    ideal_t = args.latency * args.turns
    calls = sum(m["turns"] - 1 for m in meta)
    traj_wall = [m["timings"].get("prepare_time", 0) + m["llm_time"] + m["tool_time"]
                 + m["timings"].get("verify_time", 0) for m in meta]
    cpu = meter.cpu_by_role()
    outcomes: dict[str, int] = {}
    for m in meta:
        outcomes[m["outcome"]] = outcomes.get(m["outcome"], 0) + 1
    ws = snap.workers
    traj_time = sum(w.traj_time for w in ws) / max(1, sum(w.trajectories_done for w in ws))
    return {
        "c": c, "n": n, "done": done, "group": group, "workers": workers, "gif": gif,
        "hosts": hosts, "slots": hosts * args.slots_per_host, "makespan": makespan,
        "tps": done / makespan, "ideal_tps": c / ideal_t, "calls_ps": calls / makespan,
        "ideal_calls_ps": c * args.turns / ideal_t, "traj_mean": traj_time,
        "traj_ratio": ideal_t / traj_time if traj_time else float("nan"),
        "inner_mean": sum(traj_wall) / max(1, len(traj_wall)),
        "acq": [m["timings"].get("acquire_wait", 0.0) for m in meta],
        "prepare": [m["timings"].get("prepare_time", 0.0) for m in meta],
        "verify": [m["timings"].get("verify_time", 0.0) for m in meta],
        "tool_per_call": [m["tool_time"] / max(1, m["turns"] - 1) for m in meta],
        "probe": probe, "cpu": cpu, "calls": calls, "rss": dict(meter.peak_rss),
        "outcomes": outcomes, "delivered": snap.sink.get("delivered"),
        "in_use_end": sum(p.get("slots_in_use", 0) for p in snap.pools),
        "peak_flying": max((f for _, _, f in series), default=0),
        "phases": {"cluster start": t_started - t_begin, "to first trajectory": first - t_started,
                   "trajectories": makespan, "teardown": t_end - finished},
    }


def _groups(run_dir: Path) -> list[dict[str, Any]]:
    import json

    path = run_dir / "groups.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    ideal_t = args.latency * args.turns
    print(f"\nthroughput: {os.cpu_count()} cpus, latency {args.latency}s x {args.turns} turns "
          f"(ideal trajectory {ideal_t:.1f}s, spread {args.spread}), commands {args.commands}, "
          f"prepare={args.prepare}, grading={args.grading}, disk_mb={args.disk_mb or None}, "
          f"containers={args.containers}, "
          f"{args.slots_per_host} slots/host, waves={args.waves}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'conc':>5} {'trajs':>6} {'wk':>3} {'hosts':>5} {'traj/s':>7} {'ideal':>7} "
          f"{'ratio':>6} {'calls/s':>8} {'per-traj':>8} {'peak':>5} {'outcomes'}")
    for r in rows:
        print(f"{r['c']:>5} {r['done']:>6} {r['workers']:>3} {r['hosts']:>5} {r['tps']:>7.2f} "
              f"{r['ideal_tps']:>7.2f} {r['tps'] / r['ideal_tps']:>6.3f} {r['calls_ps']:>8.1f} "
              f"{r['traj_ratio']:>8.3f} {r['peak_flying']:>5} {r['outcomes']}")
    print("  ratio: trajectories/s over ideal (concurrency / ideal trajectory);"
          " per-traj: ideal / mean trajectory wall (acquire to release); peak: most in flight")
    print("\nper-phase p50 / p99 in ms (acquire wait, prepare, grading and tool call per call"
          " from the trajectories; probe: acquire, exec `true` via the pool actor, no-op pool"
          " actor hop, sink hop)")
    print(f"{'conc':>5} {'acq wait':>15} {'prepare':>15} {'grading':>15} {'tool/call':>15} "
          f"{'probe acq':>15} {'probe exec':>15} {'actor hop':>15} {'sink hop':>15}")
    for r in rows:
        p = r["probe"]
        cols = [r["acq"], r["prepare"], r["verify"], r["tool_per_call"], p.acquire, p.tool,
                p.hop, p.sink]
        print(f"{r['c']:>5} " + " ".join(f"{pct(x, .5):>7.1f}/{pct(x, .99):<7.1f}" for x in cols))
    print("\nCPU-seconds per tool call by process (ms), and peak RSS per trajectory (MB)")
    print(f"{'conc':>5} " + " ".join(f"{r:>12}" for r in ROLES) + f" {'total':>8} {'cores':>6}"
          f" {'RSS/traj':>9} {'RSS total':>10}")
    for r in rows:
        calls = max(1, r["calls"])
        cpu = r["cpu"]
        total = sum(cpu.values())
        rss = sum(r["rss"].values())
        print(f"{r['c']:>5} " + " ".join(f"{1000 * cpu[k] / calls:>12.2f}" for k in ROLES)
              + f" {1000 * total / calls:>8.2f} {total / r['makespan']:>6.2f}"
              f" {rss / r['c'] / 2**20:>9.2f} {rss / 2**30:>9.2f}G")
    print("  (cores: CPU-seconds of all of it per second of the run; RSS by role at peak: "
          + "; ".join(f"{r['c']}: " + ", ".join(f"{k} {v / 2**20:.0f}M" for k, v in r["rss"].items())
                      for r in rows) + ")")


async def main(args: argparse.Namespace) -> None:
    rows = []
    for c in args.concurrency:
        with local_ray():
            rows.append(await one_row(args, c))
            r = rows[-1]
            print(f"[{c}] {r['done']}/{r['n']} trajectories in {r['makespan']:.1f}s "
                  f"({r['tps']:.2f}/s, ideal {r['ideal_tps']:.2f}/s), slots held at the last poll "
                  f"{r['in_use_end']} (the probe's one included), delivered {r['delivered']}; "
                  + ", ".join(f"{k} {v:.1f}s" for k, v in r["phases"].items()), flush=True)
    report(args, rows)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                    default=[16, 64, 256, 1024], help="comma-separated, e.g. 16,64")
    ap.add_argument("--latency", type=float, default=10.0, help="seconds per turn")
    ap.add_argument("--spread", type=float, default=0.0, help="latency +/- this fraction")
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--waves", type=int, default=2, help="trajectories = waves x concurrency")
    ap.add_argument("--commands", type=lambda s: s.split(";;"),
                    default=["ls -A", "cat README* | head -c 2000; true", "git status --short"],
                    help="';;'-separated tool commands, used in turn")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--per-worker", type=int, default=256, help="trajectories per worker actor")
    ap.add_argument("--max-workers", type=int, default=4)
    ap.add_argument("--slots-per-host", type=int, default=64)
    ap.add_argument("--headroom", type=float, default=0.25, help="spare slots (resets)")
    ap.add_argument("--disk-mb", type=int, default=0, help="per-slot disk (0: none)")
    ap.add_argument("--grading", action="store_true", help="the tasks' real grading")
    ap.add_argument("--containers", default="auto", choices=("auto", "on", "off"),
                    help="sandbox.containers: slot containers, or a fresh bwrap per command")
    ap.add_argument("--no-prepare", dest="prepare", action="store_false")
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny run (4 trajectories, one short turn) that only proves it works")
    args = ap.parse_args()
    if args.smoke:
        args.concurrency, args.latency, args.turns, args.waves = [4], 0.1, 1, 1
        args.group_size, args.slots_per_host, args.prepare = 2, 8, False
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parse()))
