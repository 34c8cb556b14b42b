"""Benchmark: the ceiling of the run's single TaskQueue and TrainerSink actors.

Run on demand: `python tests/bench/bench_actors.py [--callers 64] [--seconds 5] [--smoke]`.

- TaskQueue: `callers` concurrent loops of lease(1) -> complete, against a queue of
  `--tasks` tasks of which a share is already finished (as late in a long run). Every
  change is persisted (rollout.leases.Cursor: one journal line, the snapshot rewritten only
  as the journal outgrows it), so the rate should not fall as finished tasks pile up.
  Prints leases/s and the p50/p99 of one lease call, per (tasks, finished) size.
- TrainerSink (trainer=jsonl, as a run without a trainer): `callers` concurrent submits of
  groups of `--group-size` trajectories of `--tokens` tokens each. Prints groups/s, MB/s of
  JSON written and the p50/p99 of one submit.

All calls come from the driver through real actor handles on a local Ray, as the workers'
calls would (one hop each way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ray  # noqa: E402

from actors.task_queue import TaskQueue  # noqa: E402
from actors.trainer_sink import TrainerSink  # noqa: E402
from rollout.trainer.sink import GroupRules, TrainerConfig  # noqa: E402
from rollout.types import Task  # noqa: E402
from tests.bench.support import local_ray, pct  # noqa: E402


async def closed_loop(callers: int, seconds: float, op) -> tuple[int, list[float], float]:
    """`callers` loops of `op(caller)` for `seconds`; returns ops, latencies, elapsed."""
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def loop(c: int) -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            if not await op(c):
                return
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in range(callers)))
    return len(lat), lat, time.perf_counter() - t0


async def queue_row(tasks: int, finished: float, callers: int, seconds: float) -> str:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    state = run_dir / "queue_state.json"
    done = int(tasks * finished)
    ids = [f"task-{i:07d}" for i in range(tasks)]
    state.write_text(json.dumps({"completed": {t: "delivered" for t in ids[:done]},
                                 "dropped": {}, "infra_dropped": [],
                                 "attempts": {t: 1 for t in ids[:done]}}))
    queue = TaskQueue.remote([Task(t, "bench", "x") for t in ids], str(state), 600.0, 3)
    await queue.progress.remote()
    lease_lat: list[float] = []

    async def op(c: int) -> bool:
        t = time.perf_counter()
        leases = await queue.lease.remote(f"w{c}", 1)
        lease_lat.append(time.perf_counter() - t)
        if not leases:
            return False
        await queue.complete.remote(leases[0].lease_id)
        return True

    n, _, elapsed = await closed_loop(callers, seconds, op)
    ray.kill(queue)
    journal = state.with_name(state.name + ".journal")
    size = (state.stat().st_size + (journal.stat().st_size if journal.exists() else 0)) / 2**20
    shutil.rmtree(run_dir, ignore_errors=True)
    return (f"  {tasks:>8} tasks, {done:>7} finished: {n / elapsed:8.1f} leases/s "
            f"(lease + complete), lease p50 {pct(lease_lat, .5):7.2f} ms  p99 "
            f"{pct(lease_lat, .99):7.2f} ms; cursor file {size:.2f} MB")


def group(group_size: int, tokens: int, k: int) -> dict:
    toks = [[(k * 7919 + i * 31 + j) % 150_000 for j in range(tokens)] for i in range(group_size)]
    masks = [[-100] * (tokens // 2) + t[tokens // 2:] for t in toks]
    return {"tokens": toks, "masks": masks, "scores": [float(i % 2) for i in range(group_size)],
            "inference_logprobs": [[1.0] * (tokens // 2) + [-0.5] * (tokens - tokens // 2)
                                   for _ in range(group_size)],
            "advantages": None, "ref_logprobs": None, "messages": None,
            "generation_params": {"temperature": 1.0}, "group_overrides": {}, "overrides": None,
            "images": None}


async def sink_row(callers: int, seconds: float, group_size: int, tokens: int) -> str:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    rules = GroupRules(group_size=group_size, max_token_length=tokens + 1)
    sink = TrainerSink.remote(str(run_dir), TrainerConfig(type="jsonl"), rules)
    await sink.start.remote()
    payloads = [group(group_size, tokens, k) for k in range(8)]
    count = [0]

    async def op(c: int) -> bool:
        count[0] += 1
        result = await sink.submit.remote(f"task-{count[0]}", payloads[count[0] % 8], None)
        assert result == "accepted", result
        return True

    n, lat, elapsed = await closed_loop(callers, seconds, op)
    await sink.close.remote(30.0)
    ray.kill(sink)
    written = sum(p.stat().st_size for p in run_dir.glob("*.jsonl")) / 2**20
    shutil.rmtree(run_dir, ignore_errors=True)
    return (f"  groups of {group_size} x {tokens} tokens: {n / elapsed:8.1f} groups/s "
            f"({written / elapsed:.1f} MB/s written), submit p50 {pct(lat, .5):7.2f} ms  "
            f"p99 {pct(lat, .99):7.2f} ms")


async def main(args: argparse.Namespace) -> None:
    print(f"actor ceilings: {os.cpu_count()} cpus, {args.callers} concurrent callers, "
          f"{args.seconds}s per row; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print("TaskQueue (one serial actor; its cursor is persisted after every change):")
    for tasks in args.tasks:
        for finished in (0.0, 0.5):
            print(await queue_row(tasks, finished, args.callers, args.seconds), flush=True)
    print("TrainerSink (trainer=jsonl; outbox + groups.jsonl):")
    for tokens in args.tokens:
        print(await sink_row(args.callers, args.seconds, args.group_size, tokens), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--tasks", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1000, 10000, 100000])
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--tokens", type=lambda s: [int(x) for x in s.split(",")],
                    default=[2048, 8192], help="tokens per trajectory, comma-separated")
    ap.add_argument("--smoke", action="store_true",
                    help="2 callers, 0.3 s per row, 100 tasks, short groups: only proves it works")
    args = ap.parse_args()
    if args.smoke:
        args.callers, args.seconds, args.tasks, args.group_size, args.tokens = 2, 0.3, [100], 2, [64]
    with local_ray():
        asyncio.run(main(args))
