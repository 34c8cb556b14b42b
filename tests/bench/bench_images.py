"""Benchmark: first use of an image (unpack) vs warm use, in the image store.

Run on demand: `python tests/bench/bench_images.py [--files 400] [--rounds 3] [--warm 2000]`.
The image is real: `--files` files of this machine's Python standard library and shared
libraries (tens of MB), plus sh and its libraries, in two gzip layers. Prints:
  - first use from an OCI layout dir, an OCI layout tar, a docker save tar, and a pull from a
    local fake registry (token auth, manifest list), each into a fresh store (median of rounds)
  - first get in a new store instance over an already unpacked image (another slot server)
  - warm get and warm use (pin + unpin) in a live store (p50 / p99)
and the first-use / warm-use ratios from this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sandbox_image.images import ImageStore, RegistryClient  # noqa: E402
from tests.sandbox_image.images.build import (File, build_docker_save, build_oci_archive,  # noqa: E402
                                              build_oci_layout, host_binaries)
from tests.sandbox_image.images.fake_registry import FakeRegistry, repo_from  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def host_tree(n_files: int, max_bytes: int = 40_000_000, max_file: int = 4_000_000) -> tuple[dict, dict, int]:
    """Two layers of real host files: stdlib sources/bytecode, then shared libraries."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    libs = Path("/usr/lib/x86_64-linux-gnu")

    def pick(paths: list[Path], n: int, budget: int) -> list[Path]:
        out: list[Path] = []
        for p in paths:
            if len(out) == n or budget <= 0:
                break
            if p.is_file() and not p.is_symlink() and p.stat().st_size <= max_file:
                out.append(p)
                budget -= p.stat().st_size
        return out

    py_files = pick(sorted(stdlib.rglob("*")), n_files * 3 // 4, max_bytes // 3)
    so_files = pick(sorted(libs.glob("*.so*")), n_files - len(py_files), max_bytes - max_bytes // 3)
    first = host_binaries("sh") | {f"opt/py/{p.relative_to(stdlib)}": File(p, 0o644) for p in py_files}
    second = {f"usr/lib/bench/{p.name}": File(p, 0o755) for p in so_files}
    total = sum(p.stat().st_size for p in py_files + so_files)
    return first, second, total


async def first_use(ref: str, tmp: Path, rounds: int, registry: FakeRegistry | None = None) -> list[float]:
    times = []
    for i in range(rounds):
        root = tmp / f"store-{ref.__hash__()}-{i}"
        rc = RegistryClient(credentials={registry.host: ("u", "p")}) if registry else None
        store = ImageStore(root, max_bytes=8 << 30, registry=rc)
        t0 = time.perf_counter()
        await store.get(ref)
        times.append(time.perf_counter() - t0)
        await store.close()
        if rc is not None:
            await rc.close()
        shutil.rmtree(root)
    return times


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warm", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="20 files, 1 round: only proves it works")
    args = ap.parse_args()
    if args.smoke:
        args.files, args.rounds, args.warm = 20, 1, 10
    tmp = Path(tempfile.mkdtemp(prefix="bench-images-"))
    try:
        first, second, payload = host_tree(args.files)
        t0 = time.perf_counter()
        layout = build_oci_layout(tmp / "layout", [first, second], {"WorkingDir": "/opt"})
        build_s = time.perf_counter() - t0
        archive = build_oci_archive(tmp / "oci.tar", [first, second], {"WorkingDir": "/opt"})
        docker = build_docker_save(tmp / "docker.tar", [first, second], {"WorkingDir": "/opt"})
        compressed = sum(os.path.getsize(layout.blob_path(d)) for d in layout.layer_digests)
        entries = len(first) + len(second)
        print(f"image: {entries} entries, {payload / 1e6:.1f} MB of file data, "
              f"{compressed / 1e6:.1f} MB gzip layers (built in {build_s:.1f} s)")

        registry = await FakeRegistry({"bench/img": repo_from(layout)}, credentials=("u", "p")).start()
        try:
            cold = {
                "OCI layout dir": await first_use(str(layout.path), tmp, args.rounds),
                "OCI layout tar": await first_use(str(archive.path), tmp, args.rounds),
                "docker save tar (uncompressed layers)": await first_use(str(docker.path), tmp, args.rounds),
                "registry pull (fake, token auth)": await first_use(f"{registry.host}/bench/img:latest", tmp,
                                                                    args.rounds, registry),
            }
        finally:
            await registry.stop()

        store = ImageStore(tmp / "warm", max_bytes=8 << 30)
        await store.get(layout.path)
        await store.close()
        reopen = []
        for _ in range(args.rounds):
            s = ImageStore(tmp / "warm", max_bytes=8 << 30)
            t0 = time.perf_counter()
            await s.get(layout.path)
            reopen.append(time.perf_counter() - t0)
            await s.close()

        store = ImageStore(tmp / "warm", max_bytes=8 << 30)
        await store.get(layout.path)
        warm_get, warm_use = [], []
        for _ in range(args.warm):
            t0 = time.perf_counter()
            await store.get(layout.path)
            warm_get.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            async with store.use(layout.path):
                pass
            warm_use.append(time.perf_counter() - t0)
        await store.close()

        print(f"\nfirst use (unpack into a fresh store), median of {args.rounds}:")
        for name, xs in cold.items():
            med = statistics.median(xs)
            print(f"  {name:<42} {1000 * med:8.1f} ms   ({payload / 1e6 / med:6.1f} MB/s of file data)")
        print(f"  {'new store instance, image already on disk':<42} {1000 * statistics.median(reopen):8.2f} ms")
        print(f"\nwarm, {args.warm} calls in a live store:")
        print(f"  {'get':<42} p50 {1e6 * statistics.median(warm_get):7.1f} us   p99 {1e6 * pct(warm_get, .99):7.1f} us")
        print(f"  {'use (pin + unpin)':<42} p50 {1e6 * statistics.median(warm_use):7.1f} us   "
              f"p99 {1e6 * pct(warm_use, .99):7.1f} us")
        base = statistics.median(warm_use)
        print("\nratios (this run):")
        for name, xs in cold.items():
            print(f"  first use / warm use, {name:<36} {statistics.median(xs) / base:10.0f}x")
        print(f"  new store instance / warm use {'':<31} {statistics.median(reopen) / base:10.1f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
