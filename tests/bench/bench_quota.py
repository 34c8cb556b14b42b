"""Benchmark: what the per-slot disk limits cost on the exec and the reset path.

Run on demand: `python tests/bench/bench_quota.py [--n 200] [--slots 8] [--smoke]`. Starts two real
slot servers (bubblewrap, cgroups) that differ only in `--disk-mb` (on: the default size
and inodes; off: 0), then, interleaved so that load from other processes hits both alike:
  - exec of `true` in a slot,
  - reset of a slot whose workspace, /tmp and /dev/shm got a small file each,
and prints p50/p99 of each and the on/off ratios measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rollout.sandbox.client import SlotServerClient  # noqa: E402
from sandbox_image.config import SlotLimits  # noqa: E402

READY = "SLOT_SERVER_READY "


def start(root: str, slots: int, disk: bool) -> tuple[subprocess.Popen, str, str]:
    token = secrets.token_urlsafe(24)
    with open(os.path.join(root, "token"), "w") as f:
        f.write(token)
    limits = SlotLimits(isolation="required", disk_mb=SlotLimits().disk_mb if disk else None)
    argv = [sys.executable, "-m", "sandbox_image", *limits.to_argv(),
            "--data-dir", os.path.join(root, "data"), "--token-file",
            os.path.join(root, "token"), "--slots", str(slots), "--log-level", "WARNING"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
    line = proc.stdout.readline()
    if not line.startswith(READY):
        raise SystemExit(f"server did not start: {line!r}")
    return proc, json.loads(line[len(READY):])["url"], token


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


async def interleaved(paths: dict[str, Callable[[], Awaitable[None]]],
                      n: int) -> dict[str, list[float]]:
    for _ in range(min(10, n)):
        for run in paths.values():
            await run()
    out: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(n):
        for name, run in paths.items():
            t = time.perf_counter()
            await run()
            out[name].append(time.perf_counter() - t)
    return out


async def main(n: int, slots: int) -> None:
    print(f"quota benchmark: {os.cpu_count()} cpus, n={n}, {slots} slots per server, load "
          f"average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    roots = [tempfile.mkdtemp(prefix="bench-quota-", dir="/var/tmp") for _ in range(2)]
    procs = []
    try:
        on_proc, on_url, on_tok = start(roots[0], slots, disk=True)
        procs.append(on_proc)
        off_proc, off_url, off_tok = start(roots[1], slots, disk=False)
        procs.append(off_proc)
        async with aiohttp.ClientSession() as session:
            on = SlotServerClient(session, on_url, on_tok)
            off = SlotServerClient(session, off_url, off_tok)

            async def exec_true(c: SlotServerClient) -> None:
                r = await c.exec(0, "true")
                assert r.exit_code == 0, r

            async def dirty_then_reset(c: SlotServerClient) -> float:
                r = await c.exec(1, "echo x > f; echo y > /tmp/t; echo z > /dev/shm/s 2>/dev/null;"
                                    " true")
                assert r.exit_code == 0, r
                t = time.perf_counter()
                await c.reset(1)
                return time.perf_counter() - t

            ex = await interleaved({"on": lambda: exec_true(on), "off": lambda: exec_true(off)}, n)
            resets: dict[str, list[float]] = {"on": [], "off": []}
            for _ in range(n):
                for name, c in (("on", on), ("off", off)):
                    resets[name].append(await dirty_then_reset(c))
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)

    def line(what: str, s: dict[str, list[float]]) -> None:
        on50, off50 = pct(s["on"], 0.5), pct(s["off"], 0.5)
        on99, off99 = pct(s["on"], 0.99), pct(s["off"], 0.99)
        print(f"  {what:<28} disk limit on p50 {on50:7.2f} ms p99 {on99:7.2f} ms | off p50 "
              f"{off50:7.2f} ms p99 {off99:7.2f} ms | ratio on/off p50 {on50 / off50:.2f}x "
              f"p99 {on99 / off99:.2f}x")

    print("\nper request, through HTTP (interleaved):")
    line("exec `true`", ex)
    line("reset (server side + HTTP)", resets)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="2 rounds, 2 slots: only proves it works")
    a = ap.parse_args()
    asyncio.run(main(2, 2) if a.smoke else main(a.n, a.slots))
