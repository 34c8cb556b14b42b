"""Benchmark: slot preparation time for a bundled SWE-smith instance (p50 over 50).

    python tests/bench/bench_prepare.py [--n 50] [--slots 2] [--smoke]

Runs through a real SlotPool (slot-server process, bubblewrap) with a warm per-host repo
cache, as on a worker after its first task of a repo. Prints p50/p90 of
`SweSmithEnv.prepare` (upload of the cached `git archive` + `git init/add/commit` in the slot),
its parts, and ratios against the floor (one no-op command in a slot) and against what
preparation avoids (a `git clone` of the mirror).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rollout.sandbox import LocalConfig, SlotLimits, SlotPool  # noqa: E402
from rollout.tasks import TaskSourceConfig, load_tasks  # noqa: E402
from rollout.tasks.swe_smith import SweSmithEnv  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def main(n: int, slots: int) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-prepare-")
    cfg = TaskSourceConfig(cache_dir=tmp, repo_sources=[])
    env = SweSmithEnv(cfg)
    tasks = load_tasks(TaskSourceConfig())
    pool = SlotPool.from_config(
        LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=slots, default_image=tasks[0].image),
        SlotLimits())
    await pool.start()
    prep, upload, noop, fetch = [], [], [], []
    try:
        t0 = time.perf_counter()
        await env.cache.archive(tasks[0].data["repo"], f"refs/heads/{tasks[0].task_id}")
        first_fetch = time.perf_counter() - t0
        for i in range(n):
            task = tasks[i % len(tasks)]
            async with pool.session(f"bench-{i}", image=task.image) as sb:
                t0 = time.perf_counter()
                await sb.exec("true")
                noop.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                archive = await env.cache.archive(task.data["repo"], f"refs/heads/{task.task_id}")
                fetch.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await sb.upload_archive(archive)
                upload.append(time.perf_counter() - t0)
            async with pool.session(f"bench-p-{i}", image=task.image) as sb:
                t0 = time.perf_counter()
                await env.prepare(task, sb)
                prep.append(time.perf_counter() - t0)
    finally:
        await pool.stop()
    clone = []
    mirror = env.cache.repo_path(tasks[0].data["repo"])
    for i in range(min(n, 10)):
        dest = Path(tmp) / f"clone-{i}"
        t0 = time.perf_counter()
        subprocess.run(["git", "clone", "-q", "--no-local", str(mirror), str(dest)], check=True)
        clone.append(time.perf_counter() - t0)

    def row(name: str, xs: list[float]) -> None:
        print(f"{name:<44} p50 {1000 * statistics.median(xs):8.1f} ms   p90 {1000 * pct(xs, 0.9):8.1f} ms")

    print(f"slot preparation, {n} runs over {len(tasks)} bundled instances, {slots} slots")
    print(f"first fetch of a repo into the cache: {1000 * first_fetch:.1f} ms (once per host)")
    row("prepare (upload + git init/add/commit)", prep)
    row("  of which: cached archive lookup", fetch)
    row("  of which: upload_archive", upload)
    row("floor: one no-op command in a slot", noop)
    row("avoided: git clone of the mirror (host)", clone)
    p50 = statistics.median(prep)
    print(f"ratio prepare / no-op command: {p50 / statistics.median(noop):.1f}x")
    print(f"ratio git clone / prepare:     {statistics.median(clone) / p50:.1f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="2 runs: only proves it works")
    args = ap.parse_args()
    asyncio.run(main(2 if args.smoke else args.n, args.slots))
