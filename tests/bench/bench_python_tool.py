"""The stateful Python tool's cost per call against a stateless command in the same slot.

    python tests/bench/bench_python_tool.py [--smoke]

Starts a local slot server (bubblewrap), then times N calls of `POST /slots/0/python` with a
trivial statement against N `exec` of `true`, and the first call (which starts the session).
Prints p50/p90 in ms and their ratio, all measured in this one run.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rollout.sandbox.client import SlotServerClient  # noqa: E402
from tests.sandbox_image.conftest import running_server  # noqa: E402

N = 3 if "--smoke" in sys.argv[1:] else 100  # smoke: only proves it works


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[int(q * (len(xs) - 1))] * 1000


async def main() -> None:
    gen = running_server("bench-python-", "--slots", "1", "--isolation", "required")
    srv = next(gen)
    try:
        async with aiohttp.ClientSession() as session:
            c = SlotServerClient(session, srv.url, srv.token)
            t = time.perf_counter()
            await c.python(0, "x = 0")
            first = time.perf_counter() - t
            py, sh = [], []
            for _ in range(N):
                t = time.perf_counter()
                await c.python(0, "x += 1")
                py.append(time.perf_counter() - t)
                t = time.perf_counter()
                await c.exec(0, "true")
                sh.append(time.perf_counter() - t)
            assert (await c.python(0, "x")).result == str(N)
    finally:
        next(gen, None)
    print(f"python session start (first call): {first * 1000:.1f} ms")
    print(f"python call  p50 {_pct(py, .5):.2f} ms  p90 {_pct(py, .9):.2f} ms")
    print(f"exec `true`  p50 {_pct(sh, .5):.2f} ms  p90 {_pct(sh, .9):.2f} ms")
    print(f"python call / exec p50 ratio: {statistics.median(py) / statistics.median(sh):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
