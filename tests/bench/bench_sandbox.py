"""Benchmark: the cost of a tool call through the SlotPool, and of acquire+release.

Run on demand: `python tests/bench/bench_sandbox.py [--n 300]`. Prints p50/p99 of:
  - bare `sh -c true`
  - bare `bwrap ... sh -c true` (the flags from notes/this-machine.md)
  - `true` through the pool (HTTP -> slot server -> bwrap with our flags and cgroups)
  - warm acquire+release (with workspace reset, and without) under 256 concurrent acquirers
and the ratios measured in this one run. All numbers are from the same process and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rollout.sandbox import LocalBackend, PoolConfig, SlotPool  # noqa: E402

BWRAP = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
         "--unshare-all", "--die-with-parent", "--", "sh", "-c", "true"]


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def show(name: str, samples: list[float]) -> tuple[float, float]:
    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    print(f"  {name:<46} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   (n={len(samples)})")
    return p50, p99


async def spawn_loop(argv: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        p = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                 stderr=asyncio.subprocess.DEVNULL)
        await p.wait()
        out.append(time.perf_counter() - t)
    return out


async def pool_exec_loop(pool: SlotPool, n: int) -> list[float]:
    slot = await pool.acquire("bench-exec")
    for _ in range(20):  # warm the connection and the page cache
        await pool.exec(slot, "true")
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = await pool.exec(slot, "true")
        out.append(time.perf_counter() - t)
        assert r.exit_code == 0, r
    await pool.release(slot)
    return out


async def acquire_release(pool: SlotPool, acquirers: int, rounds: int, reset: bool) -> list[float]:
    out: list[float] = []

    async def worker(w: int) -> None:
        for r in range(rounds):
            t = time.perf_counter()
            slot = await pool.acquire(f"bench-{w}-{r}", timeout=300)
            await pool.release(slot, reset=reset)
            out.append(time.perf_counter() - t)

    await asyncio.gather(*(worker(w) for w in range(acquirers)))
    return out


async def main(n: int) -> None:
    print(f"sandbox benchmark: {os.cpu_count()} cpus, n={n}")
    await spawn_loop(["sh", "-c", "true"], 20)
    sh = await spawn_loop(["sh", "-c", "true"], n)
    bw = await spawn_loop(BWRAP, n)

    cfg = PoolConfig(min_hosts=2, max_hosts=2, slots_per_host=128, health_check_interval=30)
    pool = SlotPool(LocalBackend(cfg), cfg)
    await pool.start()
    try:
        isolation = {hs.host.meta.get("isolation") for hs in pool._hosts.values()}
        via_pool = await pool_exec_loop(pool, n)
        await acquire_release(pool, 256, 1, reset=False)  # warm
        ar_reset = await acquire_release(pool, 256, 4, reset=True)
        ar_plain = await acquire_release(pool, 256, 4, reset=False)
    finally:
        await pool.stop()

    # The same path without per-slot cgroups: isolates the kernel's cgroup-migration cost.
    cfg_plain = PoolConfig(min_hosts=1, max_hosts=1, slots_per_host=4, memory_mb=None, pids=None)
    plain = SlotPool(LocalBackend(cfg_plain), cfg_plain)
    await plain.start()
    try:
        via_plain = await pool_exec_loop(plain, n)
    finally:
        await plain.stop()

    print("\nexec of `true`:")
    sh50, _ = show("bare sh -c true", sh)
    bw50, bw99 = show("bare bwrap (notes flags) sh -c true", bw)
    po50, po99 = show(f"pool.exec (isolation={','.join(map(str, isolation))})", via_pool)
    pl50, _ = show("pool.exec without cgroup limits", via_plain)
    print(f"  pool overhead over bare bwrap: p50 {po50 - bw50:+.2f} ms, p99 {po99 - bw99:+.2f} ms;"
          f" ratio pool/bwrap p50 {po50 / bw50:.2f}x, bwrap/sh p50 {bw50 / sh50:.2f}x")
    print(f"  without cgroups: overhead p50 {pl50 - bw50:+.2f} ms (ratio {pl50 / bw50:.2f}x);"
          f" cgroup join costs p50 {po50 - pl50:+.2f} ms")
    print("\nwarm acquire+release, 256 concurrent acquirers, 256 slots on 2 hosts:")
    show("with workspace reset (HTTP reset per release)", ar_reset)
    show("without reset", ar_plain)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    asyncio.run(main(ap.parse_args().n))
