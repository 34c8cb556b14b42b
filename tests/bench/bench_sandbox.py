"""Benchmark: the cost of a tool call through the whole stack, against bare bubblewrap.

Run on demand: `python tests/bench/bench_sandbox.py [--n 300]`. Prints p50/p99 of `true`:
  - bare `sh -c true`
  - bare `bwrap ... sh -c true` (the flags from notes/this-machine.md), and bare bwrap with
    the slot server's own flags (what the pool's overhead is made of, without the pool)
  - through a local SlotPool (HTTP -> slot server -> the command entering the slot's
    long-lived container, with cgroups and a per-slot disk), through the same pool with
    slot containers off (a fresh bwrap per command), through pools with only one of
    cgroups and disks, and with neither
  - through the Ray actor hop as a trajectory makes it: from inside an actor (as a
    RolloutWorker), an `ActorSandbox` over a SandboxPool actor handle -> SlotPool -> slot
    server -> bwrap; and the same from the driver (one process hop less)
and the ratios measured in this one run. The paths are interleaved (one of each per round),
so load from other processes on the machine hits them alike. (Acquire and release under
256 concurrent acquirers: tests/bench/bench_acquire.py.)

Reading the cgroup figures: a command joins its slot's cgroup v1 groups by writing "0" to
each group's `tasks` from its own wrapper shell (sandbox_image/limits.py), the one move the
kernel makes without its global threadgroup lock. A move written by another process (a pid)
takes that lock, whose write side waits for an RCU grace period (~10-12 ms here) unless
another move happened just before: if "with cgroup limits" ever costs milliseconds more
than "neither", look for a join that is not a self-move.
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

import ray  # noqa: E402

from actors.sandbox_pool import ActorSandbox, SandboxPool  # noqa: E402
from rollout.sandbox import LocalConfig, SlotLimits, SlotPool  # noqa: E402
from rollout.types import Slot  # noqa: E402
from sandbox_image.isolation import Bubblewrap, choose_workspace_path, default_env  # noqa: E402
from tests.bench.support import local_ray, pct  # noqa: E402

BWRAP = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
         "--unshare-all", "--die-with-parent", "--", "sh", "-c", "true"]


def show(name: str, samples: list[float]) -> tuple[float, float]:
    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    print(f"  {name:<46} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   (n={len(samples)})")
    return p50, p99


async def spawn(argv: list[str], env: dict[str, str] | None = None) -> None:
    p = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                             stderr=asyncio.subprocess.PIPE, env=env)
    _, err = await p.communicate()
    assert p.returncode == 0, (f"{argv[0]} exited {p.returncode} ({err.decode()[-300:]}): a "
                               "failing command would time nothing")


def server_bwrap_argv(root: str) -> list[str]:
    """The argv the slot server runs for `true`, with its masks for a LocalBackend host."""
    for sub in ("data/slots/0", "token"):
        path = os.path.join(root, sub)
        os.makedirs(path) if sub != "token" else open(path, "w").close()
    bw = Bubblewrap("bwrap", network=False,
                    hide=[os.path.join(root, "data"), os.path.join(root, "token"), root],
                    expose=[sys.executable])  # as the server exposes its interpreter
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


@ray.remote(num_cpus=0)
class Agent:
    """Stands for a RolloutWorker: runs one tool call through an ActorSandbox, as the
    agent loop does, and times it from inside this actor."""

    async def exec_true(self, pool, slot: Slot) -> float:
        t = time.perf_counter()
        r = await ActorSandbox(pool, slot).exec("true")
        assert r.exit_code == 0, r
        return time.perf_counter() - t


async def main(n: int) -> None:
    print(f"sandbox benchmark: {os.cpu_count()} cpus, n={n}, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    cfg = LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=4, health_check_interval=30)
    pool = SlotPool.from_config(cfg, SlotLimits())
    # The same path without per-slot cgroups or disks: isolates the cost of both.
    plain = SlotPool.from_config(cfg, SlotLimits(memory_mb=None, pids=None, disk_mb=None))
    # ... and with each of the two alone, to tell their costs apart.
    groups_only = SlotPool.from_config(cfg, SlotLimits(disk_mb=None))
    disks_only = SlotPool.from_config(cfg, SlotLimits(memory_mb=None, pids=None))
    # The per-command sandbox that slot containers replace.
    fresh = SlotPool.from_config(cfg, SlotLimits(containers="off"))
    actor = SandboxPool.remote(cfg, SlotLimits(), "bench")
    agent = Agent.remote()
    await asyncio.gather(pool.start(), plain.start(), groups_only.start(), disks_only.start(),
                         fresh.start(), actor.start.remote())
    try:
        isolation = {hs.host.meta.get("isolation") for hs in pool._hosts.values()}
        slot, plain_slot = await pool.acquire("bench-exec"), await plain.acquire("bench-exec")
        groups_slot = await groups_only.acquire("bench-exec")
        disks_slot = await disks_only.acquire("bench-exec")
        fresh_slot = await fresh.acquire("bench-exec")
        containers = {bool((await hs.client.health()).get("containers"))
                      for hs in pool._hosts.values()}
        actor_slot = await actor.acquire.remote("bench-exec", None, 60.0)
        via_driver = ActorSandbox(actor, actor_slot)
        inner: list[float] = []

        async def from_agent() -> None:
            inner.append(await agent.exec_true.remote(actor, actor_slot))

        root = tempfile.mkdtemp(prefix="bench-bwrap-", dir="/var/tmp")
        server_argv = server_bwrap_argv(root)
        env = default_env("/tmp")
        t = await interleaved({
            "sh": lambda: spawn(["sh", "-c", "true"]),
            "bwrap": lambda: spawn(BWRAP),
            "bwrap_server": lambda: spawn(server_argv, env),
            "pool": lambda: exec_true(pool, slot),
            "plain": lambda: exec_true(plain, plain_slot),
            "groups": lambda: exec_true(groups_only, groups_slot),
            "disks": lambda: exec_true(disks_only, disks_slot),
            "fresh": lambda: exec_true(fresh, fresh_slot),
            "driver_actor": lambda: _checked(via_driver.exec("true")),
            "agent_actor": from_agent,
        }, n)
        t["agent_actor"] = inner[-n:]  # timed inside the agent actor (warm-up rounds dropped)
        shutil.rmtree(root, ignore_errors=True)
        await pool.release(slot)
        await plain.release(plain_slot)
        await groups_only.release(groups_slot)
        await disks_only.release(disks_slot)
        await fresh.release(fresh_slot)
        await actor.release.remote(actor_slot)
    finally:
        await asyncio.gather(pool.stop(), plain.stop(), groups_only.stop(), disks_only.stop(),
                             fresh.stop(), actor.stop.remote())

    print("\nexec of `true` (interleaved):")
    sh50, sh99 = show("bare sh -c true", t["sh"])
    bw50, bw99 = show("bare bwrap (notes flags) sh -c true", t["bwrap"])
    bs50, bs99 = show("bare bwrap (slot server's flags) sh -c true", t["bwrap_server"])
    po50, po99 = show(f"pool.exec (isolation={','.join(map(str, isolation))}, "
                      f"containers={','.join(map(str, containers))})", t["pool"])
    fr50, fr99 = show("pool.exec, slot containers off", t["fresh"])
    pl50, _ = show("pool.exec without cgroup limits or disks", t["plain"])
    gr50, _ = show("pool.exec with cgroup limits, no disks", t["groups"])
    dk50, _ = show("pool.exec with slot disks, no cgroup limits", t["disks"])
    da50, da99 = show("ActorSandbox from the driver -> slot server", t["driver_actor"])
    aa50, aa99 = show("agent actor -> ActorSandbox -> slot server", t["agent_actor"])
    print(f"  a tool call in a warm slot container against bare bwrap (notes flags): ratio p50 "
          f"{po50 / bw50:.2f}x, p99 {po99 / bw99:.2f}x; against a fresh bwrap per command "
          f"through the same pool: ratio p50 {po50 / fr50:.2f}x ({po50 - fr50:+.2f} ms)")
    print(f"  pool overhead over bare bwrap: p50 {po50 - bw50:+.2f} ms, p99 {po99 - bw99:+.2f} ms;"
          f" ratio pool/bwrap p50 {po50 / bw50:.2f}x, bwrap/sh p50 {bw50 / sh50:.2f}x")
    print(f"  pool overhead over bare bwrap with the server's flags: p50 {po50 - bs50:+.2f} ms,"
          f" p99 {po99 - bs99:+.2f} ms; ratio p50 {po50 / bs50:.2f}x")
    print(f"  without cgroups or disks: overhead p50 {pl50 - bw50:+.2f} ms (ratio "
          f"{pl50 / bw50:.2f}x); cgroup join + slot disk cost p50 {po50 - pl50:+.2f} ms")
    print(f"  each alone over neither: cgroup limits p50 {gr50 - pl50:+.2f} ms, slot disks p50 "
          f"{dk50 - pl50:+.2f} ms")
    print(f"  the whole stack (agent actor -> slot server, one HTTP hop under the lease's key)"
          f" over bare bwrap"
          f" with the server's flags: p50 {aa50 - bs50:+.2f} ms, p99 {aa99 - bs99:+.2f} ms"
          f" (ratio p50 {aa50 / bs50:.2f}x); over notes-flags bwrap p50 {aa50 - bw50:+.2f} ms")
    print(f"  the whole stack over the local pool path (agent actor - local pool): p50"
          f" {aa50 - po50:+.2f} ms,"
          f" p99 {aa99 - po99:+.2f} ms; from the driver p50 {da50 - po50:+.2f} ms")


async def _checked(call: Awaitable) -> None:
    r = await call
    assert r.exit_code == 0, r


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--smoke", action="store_true", help="2 rounds: only proves it works")
    args = ap.parse_args()
    n = 2 if args.smoke else args.n
    with local_ray():
        asyncio.run(main(n))
