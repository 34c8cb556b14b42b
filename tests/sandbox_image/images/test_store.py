"""The store's guarantees: one unpack under concurrent first use (coroutines and processes),
pinned images never evicted (by this process or another), an interrupted unpack leaves no
visible image and the next get succeeds."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from sandbox_image.images import ImageError, ImageNotFound, ImageStore

from .build import BuiltImage, build_oci_layout
from .conftest import PYTHON, child_env, tree, wait_until


def spawn(mode: str, root: Path, ref: Path | str) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "tests.sandbox_image.images.child", mode, str(root), str(ref)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(),
                            cwd=child_env()["PYTHONPATH"])


def lock_inode(store: ImageStore, digest: str) -> int:
    path = store.root / "locks" / f"{digest.split(':', 1)[1]}.lock"
    return path.stat().st_ino if path.exists() else -1


def blocked_on(inode: int) -> set[int]:
    """Pids waiting (blocked) for a flock on this inode, from /proc/locks."""
    pids = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and fields[fields.index("->") + 1] == "FLOCK" and fields[-3].endswith(f":{inode}"):
            pids.add(int(fields[fields.index("->") + 4]))
    return pids


class FifoLayer:
    """Replace an image's (single, uncompressed) layer blob by a FIFO the test feeds, so an
    unpack can be held at a known point."""

    def __init__(self, built: BuiltImage) -> None:
        self.path = built.blob_path(built.layer_digests[0])
        self.data = self.path.read_bytes()
        self.path.unlink()
        os.mkfifo(self.path)
        self._writer: threading.Thread | None = None
        self._release = threading.Event()

    def feed(self, upto: int) -> None:
        """Write the first `upto` bytes, then the rest once `release()` is called (or stop
        there, leaving the reader to see EOF, with `release(eof=True)`)."""
        self._eof = False

        def run() -> None:
            try:
                with open(self.path, "wb") as f:
                    f.write(self.data[:upto])
                    f.flush()
                    self._release.wait()
                    if not self._eof:
                        f.write(self.data[upto:])
            except BrokenPipeError:
                pass

        self._writer = threading.Thread(target=run, daemon=True)
        self._writer.start()

    def release(self, eof: bool = False) -> None:
        self._eof = eof
        self._release.set()
        assert self._writer is not None
        self._writer.join()

    def __enter__(self) -> "FifoLayer":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writer is not None and not self._release.is_set():
            self.release(eof=True)  # a failed test must not leave an unpack blocked on the FIFO

    def restore(self) -> None:
        self.path.unlink()
        self.path.write_bytes(self.data)


SECOND = 6_000_000
FEED = 2_500_000  # past `first` and more than one 1 MiB read of the tar stream, well before the end


def two_file_image(path: Path) -> BuiltImage:
    """One uncompressed layer: a first file, then 6 MB more, so a reader fed FEED bytes has
    created the first file and is blocked before the end."""
    return build_oci_layout(path, [{"first": b"1" * 100_000, "second": os.urandom(SECOND)}], compress=None)


def partial(store: ImageStore) -> list[Path]:
    return list((store.root / "tmp").glob("*/rootfs/first"))


async def test_warm_get_does_not_unpack_again(store: ImageStore, sh_image: BuiltImage) -> None:
    first = await store.get(sh_image.path)
    again = await store.get(str(sh_image.path))
    by_digest = await store.get(sh_image.digest)
    assert first == again == by_digest and store.stats.unpacks == 1 and store.stats.hits == 2
    with pytest.raises(ImageNotFound):
        await store.get("sha256:" + "0" * 64)


async def test_twenty_coroutines_and_two_processes_unpack_once(store: ImageStore, tmp_path: Path) -> None:
    built = two_file_image(tmp_path / "img")
    children: list[subprocess.Popen] = []
    with FifoLayer(built) as fifo:
        fifo.feed(upto=FEED)
        tasks = [asyncio.create_task(store.get(built.path)) for _ in range(20)]
        try:
            await wait_until(lambda: bool(partial(store)), "this process to be half way through the unpack")
            children = [spawn("get", store.root, built.path) for _ in range(2)]
            inode = lock_inode(store, built.digest)
            await wait_until(lambda: {c.pid for c in children} <= blocked_on(inode),
                             "both processes to wait on the lock")
            assert not any(t.done() for t in tasks)
            fifo.release()
            images = await asyncio.gather(*tasks)
            outs = [json.loads(c.communicate(timeout=120)[0]) for c in children]
        finally:
            for c in children:
                if c.poll() is None:
                    c.kill()
                    c.wait()
    assert store.stats.unpacks == 1 and [o["unpacks"] for o in outs] == [0, 0]
    assert {str(i.rootfs) for i in images} | {o["rootfs"] for o in outs} == {str(images[0].rootfs)}
    assert (images[0].rootfs / "second").stat().st_size == SECOND
    assert (images[0].rootfs / "first").read_bytes() == b"1" * 100_000


async def test_cancelled_unpack_leaves_no_image_and_next_get_succeeds(store: ImageStore, tmp_path: Path) -> None:
    built = two_file_image(tmp_path / "img")
    with FifoLayer(built) as fifo:
        fifo.feed(upto=FEED)
        task = asyncio.create_task(store.get(built.path))
        await wait_until(lambda: bool(partial(store)), "the unpack to be half way")
        task.cancel()
        fifo.release(eof=True)  # the blocked read returns; the unpack thread sees the cancellation
        with pytest.raises(asyncio.CancelledError):
            await task
    assert store.images() == [] and store.lookup(built.digest) is None
    assert os.listdir(store.root / "tmp") == [] and os.listdir(store.root / "images") == []
    fifo.restore()
    image = await store.get(built.path)
    assert (image.rootfs / "second").stat().st_size == SECOND and store.stats.unpacks == 1


async def test_killed_unpacker_leaves_no_image_and_next_get_succeeds(store: ImageStore, tmp_path: Path) -> None:
    built = two_file_image(tmp_path / "img")
    with FifoLayer(built) as fifo:
        fifo.feed(upto=FEED)
        child = spawn("get", store.root, built.path)
        try:
            await wait_until(lambda: bool(partial(store)), "the other process to be half way through the unpack")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        fifo.release(eof=True)
    assert partial(store) and store.lookup(built.digest) is None  # a stale tmp dir, not an image
    fifo.restore()
    image = await store.get(built.path)
    assert (image.rootfs / "first").read_bytes() == b"1" * 100_000
    assert os.listdir(store.root / "tmp") == []  # the stale partial unpack was removed


def small_image(tmp_path: Path, name: str) -> BuiltImage:
    return build_oci_layout(tmp_path / name, [{f"{name}.bin": os.urandom(100_000)}])


async def test_lru_eviction_spares_pinned_images(tmp_path: Path) -> None:
    a, b, c, d = (small_image(tmp_path, n) for n in "abcd")
    store = ImageStore(tmp_path / "store", max_bytes=250_000)  # room for two
    try:
        ia = await store.get(a.path, pin=True)
        await store.get(b.path)
        await store.get(c.path)  # over budget: b is the LRU unpinned image
        assert {i.digest for i in store.images()} == {a.digest, c.digest}
        assert ia.rootfs.exists() and store.stats.evictions == 1
        async with store.use(c.path):
            await store.get(d.path)  # a and c pinned: d stays too, over budget
            assert {i.digest for i in store.images()} == {a.digest, c.digest, d.digest}
        store.unpin(a.digest)
        assert await store.trim() == [a.digest]  # now a is the least recently used
        with pytest.raises(ImageError, match="not pinned"):
            store.unpin(a.digest)
    finally:
        await store.close()


async def test_an_image_pinned_by_another_process_is_not_evicted(tmp_path: Path) -> None:
    a, b = small_image(tmp_path, "a"), small_image(tmp_path, "b")
    store = ImageStore(tmp_path / "store", max_bytes=150_000)  # room for one
    try:
        holder = spawn("hold", store.root, a.path)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "pinned"
        await store.get(b.path)
        assert {i.digest for i in store.images()} == {a.digest, b.digest}  # a in use elsewhere
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(timeout=60)
        await store.get(b.path)  # a is now the LRU image and free
        assert await store.trim() == [a.digest]
        assert [i.digest for i in store.images()] == [b.digest]
    finally:
        await store.close()


async def test_store_survives_reopen(tmp_path: Path, sh_image: BuiltImage) -> None:
    first = ImageStore(tmp_path / "store", max_bytes=1 << 30)
    image = await first.get(sh_image.path)
    await first.close()
    second = ImageStore(tmp_path / "store", max_bytes=1 << 30)
    try:
        again = await second.get(sh_image.path)
        assert again == image and second.stats.unpacks == 0
        assert tree(again.rootfs) == tree(image.rootfs)
    finally:
        await second.close()


async def test_images_share_the_inodes_of_their_common_files(tmp_path: Path) -> None:
    common = {"usr/lib/big.so": os.urandom(200_000), "etc/motd": b"same\n"}
    one = build_oci_layout(tmp_path / "one", [common, {"app/a.txt": b"one\n", "app/b.txt": b"one\n"}])
    two = build_oci_layout(tmp_path / "two", [common, {"app/a.txt": b"two\n"}])
    store = ImageStore(tmp_path / "store", max_bytes=1 << 30)
    try:
        a, b = await store.get(one.path), await store.get(two.path)
        for rel in common:
            assert os.stat(a.rootfs / rel).st_ino == os.stat(b.rootfs / rel).st_ino
        assert (a.rootfs / "app" / "a.txt").read_bytes() == b"one\n"
        assert (b.rootfs / "app" / "a.txt").read_bytes() == b"two\n"
        # Within one image, equal files stay separate files (a copy of it must not link them).
        assert os.stat(a.rootfs / "app" / "a.txt").st_ino != os.stat(a.rootfs / "app" / "b.txt").st_ino
        store.max_bytes = 0
        await store.trim()  # both evicted: nothing of them is left in the file pool either
        assert store.images() == []
        assert [p for p in (store.root / "files").rglob("*") if p.is_file()] == []
    finally:
        await store.close()
