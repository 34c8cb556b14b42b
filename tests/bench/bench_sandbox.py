"""Benchmark: the cost of a tool call through the SlotPool, and of acquire+release.

Run on demand: `python tests/bench/bench_sandbox.py [--n 300]`. Prints p50/p99 of:
  - bare `sh -c true`
  - bare `bwrap ... sh -c true` (the flags from notes/this-machine.md), and bare bwrap with
    the slot server's own flags (what the pool's overhead is made of, without the pool)
  - `true` through the pool (HTTP -> slot server -> bwrap with our flags and cgroups),
    and through a pool without cgroup limits
  - warm acquire+release (with workspace reset, and without) under 256 concurrent acquirers
and the ratios measured in this one run. The exec paths are interleaved (one of each per
round), so load from other processes on the machine hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rollout.sandbox import LocalBackend, PoolConfig, SlotPool  # noqa: E402
from rollout.types import Slot  # noqa: E402
from sandbox_image.isolation import Bubblewrap, choose_workspace_path, default_env  # noqa: E402

BWRAP = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
         "--unshare-all", "--die-with-parent", "--", "sh", "-c", "true"]


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def show(name: str, samples: list[float]) -> tuple[float, float]:
    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    print(f"  {name:<46} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   (n={len(samples)})")
    return p50, p99


async def spawn(argv: list[str], env: dict[str, str] | None = None) -> None:
    p = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                             stderr=asyncio.subprocess.DEVNULL, env=env)
    await p.wait()


def server_bwrap_argv(root: str) -> list[str]:
    """The argv the slot server runs for `true`, with its masks for a LocalBackend host."""
    for sub in ("data/slots/0", "token"):
        path = os.path.join(root, sub)
        os.makedirs(path) if sub != "token" else open(path, "w").close()
    bw = Bubblewrap("bwrap", network=False,
                    hide=[os.path.join(root, "data"), os.path.join(root, "token"), root])
    ws = os.path.join(root, "data/slots/0")
    return bw.argv(ws, choose_workspace_path("/workspace"), "/workspace", "true")


async def exec_true(pool: SlotPool, slot: Slot) -> None:
    r = await pool.call(slot, "exec", "true")
    assert r.exit_code == 0, r


async def interleaved(paths: dict[str, Callable[[], Awaitable[None]]],
                      n: int) -> dict[str, list[float]]:
    """n rounds; each round times every path once, in order."""
    for _ in range(20):  # warm connections, page cache, the servers' first requests
        for run in paths.values():
            await run()
    out: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(n):
        for name, run in paths.items():
            t = time.perf_counter()
            await run()
            out[name].append(time.perf_counter() - t)
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
    print(f"sandbox benchmark: {os.cpu_count()} cpus, n={n}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    cfg = PoolConfig(min_hosts=2, max_hosts=2, slots_per_host=128, health_check_interval=30)
    pool = SlotPool(LocalBackend(cfg), cfg)
    # The same path without per-slot cgroups: isolates the cost of joining them.
    cfg_plain = PoolConfig(min_hosts=1, max_hosts=1, slots_per_host=4, memory_mb=None, pids=None)
    plain = SlotPool(LocalBackend(cfg_plain), cfg_plain)
    await asyncio.gather(pool.start(), plain.start())
    try:
        isolation = {hs.host.meta.get("isolation") for hs in pool._hosts.values()}
        slot, plain_slot = await pool.acquire("bench-exec"), await plain.acquire("bench-exec")
        root = tempfile.mkdtemp(prefix="bench-bwrap-", dir="/var/tmp")
        server_argv = server_bwrap_argv(root)
        env = default_env("/tmp")
        t = await interleaved({
            "sh": lambda: spawn(["sh", "-c", "true"]),
            "bwrap": lambda: spawn(BWRAP),
            "bwrap_server": lambda: spawn(server_argv, env),
            "pool": lambda: exec_true(pool, slot),
            "plain": lambda: exec_true(plain, plain_slot),
        }, n)
        shutil.rmtree(root, ignore_errors=True)
        await pool.release(slot)
        await plain.release(plain_slot)
        await acquire_release(pool, 256, 1, reset=False)  # warm
        ar_reset = await acquire_release(pool, 256, 4, reset=True)
        ar_plain = await acquire_release(pool, 256, 4, reset=False)
    finally:
        await asyncio.gather(pool.stop(), plain.stop())

    print("\nexec of `true` (interleaved):")
    sh50, sh99 = show("bare sh -c true", t["sh"])
    bw50, bw99 = show("bare bwrap (notes flags) sh -c true", t["bwrap"])
    bs50, bs99 = show("bare bwrap (slot server's flags) sh -c true", t["bwrap_server"])
    po50, po99 = show(f"pool.exec (isolation={','.join(map(str, isolation))})", t["pool"])
    pl50, _ = show("pool.exec without cgroup limits", t["plain"])
    print(f"  pool overhead over bare bwrap: p50 {po50 - bw50:+.2f} ms, p99 {po99 - bw99:+.2f} ms;"
          f" ratio pool/bwrap p50 {po50 / bw50:.2f}x, bwrap/sh p50 {bw50 / sh50:.2f}x")
    print(f"  pool overhead over bare bwrap with the server's flags: p50 {po50 - bs50:+.2f} ms,"
          f" p99 {po99 - bs99:+.2f} ms; ratio p50 {po50 / bs50:.2f}x")
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
