"""Benchmark: slots in an image vs the host view, and an image's /testbed made writable per
slot by an overlay vs a copy.

Run on demand: `python tests/bench/bench_image_slots.py [--n 200] [--files 2000] [--smoke]`
(smoke: 2 rounds over a /testbed of 5 files, only proves it works). Builds a
real OCI image from this machine's files (python3.11, git, sh, coreutils, pytest in a
conda-style env) with a SWE-smith-style repo at /testbed (`--files` Python files of ~8 KiB
plus its .git), then starts real slot servers (bubblewrap, cgroups, slot disks):
  - exec of `true` in a slot of the image vs a slot of the host view, on one server
    (interleaved, through HTTP): p50 / p99 and the ratio;
  - restore of /testbed (a reset, which re-makes the slot's private copy) plus the prepare
    step that clears the image's tracked files and .git, with `--writable overlay` vs
    `--writable copy` (two servers, interleaved): p50 / p99 and the ratio;
  - the first use of the image (pull from the layout + unpack into a fresh store, at the
    server's start) vs a warm start over the unpacked image.
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
from pathlib import Path

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from rollout.sandbox.client import SlotServerClient  # noqa: E402
from rollout.tasks.swe_smith import CLEAR_WORKDIR  # noqa: E402
from sandbox_image.config import SlotLimits  # noqa: E402
from tests.sandbox_image.images.python_image import build_python_image  # noqa: E402

READY = "SLOT_SERVER_READY "
IMAGE = "bench"


def make_repo(dest: Path, files: int) -> Path:
    body = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(300))  # ~8 KiB
    for i in range(files):
        p = dest / "pkg" / f"m{i // 100}" / f"mod{i}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "x"],
                   cwd=dest, check=True)
    return dest


def start(root: Path, layout: Path, store: Path, writable: str,
          slots: int) -> tuple[subprocess.Popen, str, str, float]:
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    (root / "token").write_text(token)
    limits = SlotLimits(isolation="required", writable=writable,
                        images={IMAGE: {"source": f"oci:{layout}"}})
    argv = [sys.executable, "-m", "sandbox_image", *limits.to_argv(), "--image", IMAGE,
            "--image-store", str(store), "--data-dir", str(root / "data"),
            "--token-file", str(root / "token"), "--slots", str(slots),
            "--host-python", sys.executable, "--log-level", "WARNING"]
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT})
    line = proc.stdout.readline()
    if not line.startswith(READY):
        raise SystemExit(f"server did not start: {line!r}")
    return proc, json.loads(line[len(READY):])["url"], token, time.perf_counter() - t


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def line(what: str, a_name: str, a: list[float], b_name: str, b: list[float]) -> None:
    print(f"  {what:<34} {a_name} p50 {pct(a, .5):8.2f} ms p99 {pct(a, .99):8.2f} ms | "
          f"{b_name} p50 {pct(b, .5):8.2f} ms p99 {pct(b, .99):8.2f} ms | ratio p50 "
          f"{pct(a, .5) / pct(b, .5):.2f}x p99 {pct(a, .99) / pct(b, .99):.2f}x")


async def run(n: int, files: int) -> None:
    print(f"image-slot benchmark: {os.cpu_count()} cpus, n={n}, /testbed of {files} files, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    work = Path(tempfile.mkdtemp(prefix="bench-image-slots-", dir="/var/tmp"))
    procs: list[subprocess.Popen] = []
    try:
        layout = build_python_image(work / "layout", make_repo(work / "repo", files)).path
        size = sum(f.stat().st_size for f in (work / "repo").rglob("*") if f.is_file())
        print(f"  image built: /testbed {size / 1e6:.1f} MB with .git")
        cold = start(work / "cold", layout, work / "store", "overlay", 2)
        procs.append(cold[0])
        warm = start(work / "warm", layout, work / "store", "copy", 2)
        procs.append(warm[0])
        print(f"  server start, first use of the image (unpack) {cold[3] * 1000:8.1f} ms | "
              f"warm (already unpacked, copy of /testbed) {warm[3] * 1000:8.1f} ms | ratio "
              f"{cold[3] / warm[3]:.2f}x")
        async with aiohttp.ClientSession() as session:
            overlay = SlotServerClient(session, cold[1], cold[2])
            copy = SlotServerClient(session, warm[1], warm[2])
            await overlay.reset(1, image="host")  # slot 1 of the overlay server: host view

            async def exec_true(c: SlotServerClient, slot: int) -> float:
                t = time.perf_counter()
                r = await c.exec(slot, "true")
                assert r.exit_code == 0, r
                return time.perf_counter() - t

            async def restore(c: SlotServerClient) -> float:
                r = await c.exec(0, "echo x > new.py")
                assert r.exit_code == 0, r
                t = time.perf_counter()
                await c.reset(0)
                r = await c.exec(0, CLEAR_WORKDIR, timeout=600)
                assert r.exit_code == 0, r
                return time.perf_counter() - t

            image_exec: list[float] = []
            host_exec: list[float] = []
            warm_up = min(10, n)
            for i in range(n + warm_up):
                a, b = await exec_true(overlay, 0), await exec_true(overlay, 1)
                if i >= warm_up:
                    image_exec.append(a)
                    host_exec.append(b)
            r_overlay: list[float] = []
            r_copy: list[float] = []
            for _ in range(max(min(5, n), n // 10)):
                r_overlay.append(await restore(overlay))
                r_copy.append(await restore(copy))
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)
        shutil.rmtree(work, ignore_errors=True)
    print("\nper request, through HTTP (interleaved):")
    line("exec `true`", "image", image_exec, "host view", host_exec)
    line("restore /testbed + clear for prepare", "overlay", r_overlay, "copy", r_copy)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="only proves it works")
    a = ap.parse_args()
    asyncio.run(run(2, 5) if a.smoke else run(a.n, a.files))
