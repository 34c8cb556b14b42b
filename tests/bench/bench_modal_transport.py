"""Tunnel vs exec as the modal backend's data plane, against the fake modal SDK.

    PYTHONPATH=. python tests/bench/bench_modal_transport.py [N|--smoke]

Runs `true` in one slot N times through the slot server over the sandbox's tunnel (what the
backend does), and N times as `sandbox.exec("true")` (a process per command, through the
control plane). Reports p50s and their ratio. On Modal the exec path also crosses Modal's
API per command (tens of ms), which the fake does not model, so the fake's ratio is a floor.
The fake's control plane is a fresh temporary `$FAKE_MODAL_DIR`, whose sandboxes all end with
the benchmark.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rollout.sandbox.client import SlotServerClient  # noqa: E402
from rollout.sandbox.modal import ModalConfig  # noqa: E402
from sandbox_image.config import SlotLimits  # noqa: E402
from tests.fake_modal import _control  # noqa: E402


async def main(n: int) -> None:
    backend = ModalConfig(sdk="tests.fake_modal", app_name="bench").create(
        SlotLimits(disk_mb=None), "bench-0")
    try:
        host = await backend.start_host(None, 1)
        sandbox = backend._sandboxes[host.host_id]
        tunnel, execs = [], []
        async with aiohttp.ClientSession() as session:
            client = SlotServerClient(session, host.url, host.token)
            await client.exec(0, "true", lease="bench")  # the server requires a lease per slot
            for _ in range(n):
                t0 = time.perf_counter()
                await client.exec(0, "true", lease="bench")
                tunnel.append(time.perf_counter() - t0)
        for _ in range(n):
            t0 = time.perf_counter()
            proc = await sandbox.exec.aio("true")
            await proc.wait.aio()
            execs.append(time.perf_counter() - t0)
        a, b = statistics.median(tunnel) * 1000, statistics.median(execs) * 1000
        print(f"tunnel + slot server (bwrap): p50 {a:.1f} ms; sandbox.exec: p50 {b:.1f} ms; "
              f"exec/tunnel = {b / a:.2f}")
    finally:
        await backend.close()


if __name__ == "__main__":
    arg = sys.argv[1] if len(sys.argv) > 1 else "50"
    state = tempfile.mkdtemp(prefix="bench-fake-modal-")
    os.environ[_control.ENV] = state
    try:
        asyncio.run(main(2 if arg == "--smoke" else int(arg)))  # smoke: only proves it works
    finally:
        _control.kill_everything()
        shutil.rmtree(state, ignore_errors=True)
