"""Benchmark: Dockerfile builds, cold and warm, and the disk two images sharing a base use.

Run on demand: `python tests/bench/bench_builds.py [--rounds 3] [--smoke]` (as root, with
bubblewrap). The base is a small real Debian (dpkg, apt, bash, coreutils from this machine:
tests/sandbox_image/images/debian_image.py). Prints, for a 10-step Dockerfile (RUN, COPY,
ENV, WORKDIR and a heredoc):
  - cold: a fresh store, every step runs (median of rounds)
  - warm: the same Dockerfile again in a new builder (every step from the layer cache)
  - edit at step 7: steps 7..10 run, 1..6 come from the cache
(ENV and WORKDIR make no layer of their own: 8 of the 10 steps are layers)
and the disk of two images whose Dockerfiles share the base and their first 5 steps:
layer blobs and cached layer dirs counted once per inode (what is on disk), against the sum
of each image's own layers (what one big layer per image would take), and the two images as
the store unpacks them for slots (each, and on disk: their common files share inodes). `--smoke`: one round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sandbox_image.images import ImageStore  # noqa: E402
from sandbox_image.images.dockerfile import DockerfileBuilder  # noqa: E402
from tests.sandbox_image.images.debian_image import build_debian_image  # noqa: E402

STEPS = [
    "RUN mkdir -p /srv/app/data && echo one > /srv/app/data/1.txt",
    "ENV APP=/srv/app",
    "WORKDIR /srv/app",
    "COPY files/ ./files/",
    "RUN dd if=/dev/zero of=data/blob bs=1M count=4 2>/dev/null",
    "RUN cat <<'EOF' > notes.txt\nstep six\nEOF",
    "RUN echo {variant} > variant.txt",
    "RUN cp -r files files-copy",
    "RUN ls -la > listing.txt",
    "RUN sleep 0 && echo done > done.txt",
]


def dockerfile(base: Path, variant: str = "a", shared: int = 10) -> str:
    steps = [s.format(variant=variant if i >= shared else "a") for i, s in enumerate(STEPS)]
    if shared < 10:  # a different image: its steps after `shared` differ
        steps = steps[:shared] + [s.replace("echo", f"echo {variant}", 1) for s in steps[shared:]]
    return f"FROM oci:{base}\n" + "\n".join(steps) + "\n"


def disk(paths: list[Path]) -> int:
    """Bytes allocated under `paths`, each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in paths:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def layer_sizes(layout: Path) -> int:
    return sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())


async def build(store: ImageStore, ctx: Path) -> tuple[float, Path, dict]:
    b = DockerfileBuilder(store, store.root, bwrap="bwrap", network=False, run_timeout=120,
                          memory_mb=1024, pids=512, disk_mb=512)
    t0 = time.perf_counter()
    layout = await b.build(ctx)
    return time.perf_counter() - t0, layout, dict(b.stats)


def context(work: Path, text: str, name: str) -> Path:
    ctx = work / name
    (ctx / "files").mkdir(parents=True, exist_ok=True)
    for i in range(20):
        (ctx / "files" / f"f{i}.txt").write_text(f"file {i}\n" * 50)
    (ctx / "Dockerfile").write_text(text)
    return ctx


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="one round (for tests/test_bench_smoke.py)")
    args = ap.parse_args()
    rounds = 1 if args.smoke else args.rounds
    if os.geteuid() != 0 or not shutil.which("bwrap"):
        sys.exit("bench_builds needs root and bubblewrap")
    work = Path(tempfile.mkdtemp(prefix="bench-builds-"))
    try:
        base = build_debian_image(work / "base").path
        cold, warm, edit = [], [], []
        for r in range(rounds):
            store = ImageStore(work / f"store-{r}", max_bytes=8 << 30)
            await store.get(f"oci:{base}")  # the base's unpack is not the build's cost
            ctx = context(work, dockerfile(base), f"ctx-{r}")
            t, layout, stats = await build(store, ctx)
            assert stats["steps_run"] == 8, stats  # ENV, WORKDIR: no layer of their own
            cold.append(t)
            t, again, stats = await build(store, ctx)
            assert again == layout and stats["steps_run"] == 0, stats
            warm.append(t)
            (ctx / "Dockerfile").write_text(dockerfile(base).replace("RUN echo a > variant.txt",
                                                                     f"RUN echo edit{r} > variant.txt"))
            t, _, stats = await build(store, ctx)
            assert stats == {"steps_run": 4, "steps_cached": 4}, stats
            edit.append(t)
            await store.close()
        print(f"10-step Dockerfile (8 layers), median of {rounds} round(s):")
        print(f"  cold build            {statistics.median(cold):7.2f} s")
        print(f"  warm build            {statistics.median(warm):7.3f} s  (all 8 layers cached)")
        print(f"  edit at step 7        {statistics.median(edit):7.2f} s  (4 layers built, 4 cached)")
        print(f"  cold / warm           {statistics.median(cold) / statistics.median(warm):7.1f}x")

        store = ImageStore(work / "store-share", max_bytes=8 << 30)
        one = context(work, dockerfile(base, "one", shared=5), "share-one")
        two = context(work, dockerfile(base, "two", shared=5), "share-two")
        _, layout_one, _ = await build(store, one)
        _, layout_two, _ = await build(store, two)
        own = layer_sizes(layout_one) + layer_sizes(layout_two)
        builds = store.root / "builds"
        on_disk = disk([layout_one, layout_two])
        cache = disk([builds / "layers"])
        print("two images on one base, sharing their first 5 steps:")
        print(f"  layers if nothing were shared   {own / 1e6:8.1f} MB (sum of each image's layers)")
        print(f"  layer blobs on disk             {on_disk / 1e6:8.1f} MB (shared layers counted once)")
        print(f"  + the layer cache (step dirs)   {cache / 1e6:8.1f} MB")
        roots = [(await store.get(f"oci:{layout}")).rootfs for layout in (layout_one, layout_two)]
        each = [disk([r]) for r in roots]
        print(f"  unpacked for slots, each        {each[0] / 1e6:8.1f} + {each[1] / 1e6:.1f} MB")
        print(f"  unpacked for slots, on disk     {disk(roots) / 1e6:8.1f} MB (files shared by inode)")
        await store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
