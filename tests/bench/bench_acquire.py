"""Benchmark: acquire and release latency with 256 concurrent acquirers (real slot servers).

Run on demand: `python tests/bench/bench_acquire.py [--acquirers 256] [--rounds 8]
[--hosts 3 --slots-per-host 128] [--disk-mb 4096|0] [--smoke]`.

Each acquirer loops: acquire, run `true` in the slot (a trajectory's shortest use of it),
release. Two ways of releasing, interleaved round by round so load from other processes on
the machine hits both alike:
  - `background`: today's release: it ends the lease and returns; the pool resets the
    workspace in the background and hands the slot out again only once it is clean;
  - `on path`: the reset HTTP round trip on the releasing trajectory's path (what release
    cost before: it awaited the reset), then a release without reset.
Prints acquire / release / whole-cycle p50 and p99 for both and their ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rollout.sandbox import LocalConfig, SlotLimits, SlotPool  # noqa: E402
from rollout.types import Slot  # noqa: E402
from tests.bench.support import pct  # noqa: E402


def show(name: str, samples: list[float]) -> tuple[float, float]:
    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    print(f"  {name:<34} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   (n={len(samples)})")
    return p50, p99


async def cycle(pool: SlotPool, tid: str, mode: str, out: dict[str, list[float]]) -> None:
    t0 = time.perf_counter()
    slot: Slot = await pool.acquire(tid, timeout=600)
    t1 = time.perf_counter()
    r = await pool.call(slot, "exec", "true")
    if r.exit_code != 0:
        out["failed"].append(0.0)
        logging.warning("exec failed in %s/%d: %s", slot.host_id, slot.index, r)
    t2 = time.perf_counter()
    if mode == "background":
        await pool.release(slot)
    else:
        await pool.fleet.hosts[slot.host_id].client.reset(slot.index, lease=slot.lease)
        await pool.release(slot, reset=False)
    t3 = time.perf_counter()
    out["acquire"].append(t1 - t0)
    out["release"].append(t3 - t2)
    out["cycle"].append(t3 - t0)


async def main(args: argparse.Namespace) -> None:
    print(f"acquire benchmark: {os.cpu_count()} cpus, {args.acquirers} acquirers, "
          f"{args.hosts} hosts x {args.slots_per_host} slots, disk_mb={args.disk_mb or None}, "
          f"{args.rounds} rounds per mode; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    cfg = LocalConfig(min_hosts=args.hosts, max_hosts=args.hosts,
                      slots_per_host=args.slots_per_host, health_check_interval=30)
    pool = SlotPool.from_config(cfg, SlotLimits(disk_mb=args.disk_mb or None))
    await pool.start()
    results = {m: {"acquire": [], "release": [], "cycle": [], "failed": []} for m in ("background", "on path")}
    try:
        warm: dict[str, list[float]] = {"acquire": [], "release": [], "cycle": [], "failed": []}
        await asyncio.gather(*(cycle(pool, f"warm-{w}", "background", warm)
                               for w in range(args.acquirers)))
        for r in range(args.rounds):
            for mode, out in results.items():
                await asyncio.gather(*(cycle(pool, f"{mode}-{w}-{r}", mode, out)
                                       for w in range(args.acquirers)))
        # Let the last background resets finish before the pool goes.
        while pool.stats()["slots_resetting"]:
            await asyncio.sleep(0.01)
        stats = pool.stats()
    finally:
        await pool.stop()
    print(f"  (pool after the run: {stats['slots_in_use']} held, {stats['slots_free']} free, "
          f"{stats['reset_failures']} reset failures)")
    figures = {}
    for mode, out in results.items():
        print(f"\nrelease with the reset {mode}:")
        figures[mode] = {k: show(k, out[k]) for k in ("acquire", "release", "cycle")}
        if out["failed"]:
            print(f"  ({len(out['failed'])} execs failed: see the log)")
    bg, old = figures["background"], figures["on path"]
    print("\nratios (reset on path / background):")
    for k in ("acquire", "release", "cycle"):
        print(f"  {k:<8} p50 {old[k][0] / bg[k][0]:6.2f}x   p99 {old[k][1] / bg[k][1]:6.2f}x")
    a50, a99 = bg["acquire"]
    print(f"\nacquire with background resets: p50 {a50:.2f} ms (target <= 2), "
          f"p99 {a99:.2f} ms (target <= 20)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser()
    ap.add_argument("--acquirers", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--slots-per-host", type=int, default=128)
    ap.add_argument("--disk-mb", type=int, default=4096, help="per-slot disk; 0 = none")
    ap.add_argument("--smoke", action="store_true",
                    help="4 acquirers, 1 round, one host of 4 slots: only proves it works")
    args = ap.parse_args()
    if args.smoke:
        args.acquirers, args.rounds, args.hosts, args.slots_per_host, args.disk_mb = 4, 1, 1, 4, 0
    asyncio.run(main(args))
