"""The image store: unpacked root filesystems by config digest, shared by every slot on a host.

Layout under `root`:
  images/<hex>/rootfs      a complete root filesystem (never changed once it is here)
  images/<hex>/image.json  what the store knows of it (source, size, skipped members)
  images/<hex>/config.json the image config blob, byte for byte
  images/<hex>/used        its mtime is the last use (LRU, shared by all processes)
  tmp/<hex>.<random>       an unpack in progress (never visible as an image)
  locks/<hex>.lock         per-image flock: exclusive while creating, shared while in use
  locks/store.lock         serialises eviction across processes
  refs/<sha256(ref)>.json  registry reference -> digest, so a warm get needs no network
  files/<xx>/<key>         one inode per distinct file (content, mode, mtime): every image's
                           copy of that file is a hard link to it

Guarantees:
- First use unpacks once per host: within a process one coroutine unpacks and the others
  wait on it; across processes the unpacker holds the image's lock exclusively and the
  others wait on the lock, then find the image complete.
- An image appears only complete: it is unpacked into tmp/ and renamed into images/ in one
  step. A cancelled get stops the unpack at its next member or chunk and deletes the partial
  tree before the cancellation completes; a killed process leaves a tmp dir the next
  unpacker of that digest deletes.
- A pinned image (`pin`, `use`, `get(pin=True)`) is never evicted, by this process or any
  other: a pin holds a shared lock on the image, and eviction takes the lock exclusively
  without waiting, skipping images it cannot lock.
- Eviction (after each new unpack, or `trim()`) removes least recently used unpinned images
  until the total is within `max_bytes`. Pinned images may hold the total above it.
- Each image may write at most `max_image_bytes` and `max_entries` entries while unpacking.
- Files are stored once per host: after an unpack, each regular file of the image becomes a
  hard link to the one inode of its content, mode and mtime in files/ (images are read-only
  by contract, so sharing an inode is safe), so images built on one base, or sharing layers,
  take the base's space once. A pool inode no image links to any more goes at the next
  eviction. Sizes used for eviction still count each image whole (conservative).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ImageError, ImageNotFound
from .locks import flock, try_flock
from .oci import ContainerConfig, ImageConfig, check_digest, host_platform
from .registry import Reference, RegistryClient, RemoteImage, parse_reference
from .sources import ResolvedImage, resolve_local, split_selector
from .unpack import Budget, UnpackCancelled, unpack_layers

log = logging.getLogger(__name__)

LOCAL_PREFIXES = ("oci:", "oci-archive:", "docker-archive:")


@dataclass(frozen=True)
class Image:
    """A complete, unpacked image. `rootfs` is read-only by contract: bind it read-only."""

    digest: str
    rootfs: Path
    config: ContainerConfig
    source: str
    size: int
    manifest_digest: str | None = None
    skipped: tuple[str, ...] = ()

    @property
    def env(self) -> dict[str, str]:
        return self.config.env_dict()

    @property
    def working_dir(self) -> str:
        return self.config.working_dir

    @property
    def user(self) -> str:
        return self.config.user

    @property
    def command(self) -> list[str]:
        """Entrypoint + Cmd, as the image would run by default."""
        return [*(self.config.entrypoint or []), *(self.config.cmd or [])]


@dataclass
class StoreStats:
    unpacks: int = 0
    hits: int = 0
    evictions: int = 0
    unpack_seconds: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Pending:
    """An image to get: its digest, and how to produce its layers if it must be unpacked."""

    digest: str
    source: str
    materialize: Callable[[Path], Awaitable[ResolvedImage]]
    remember: Callable[[], None] = lambda: None


def is_local_ref(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or ref.startswith(LOCAL_PREFIXES)


class ImageStore:
    """Unpacked images under `root`, at most `max_bytes` of unpinned ones. See the module doc."""

    def __init__(self, root: Path | str, max_bytes: int, *, max_image_bytes: int | None = None,
                 max_entries: int = 1_000_000, registry: RegistryClient | None = None,
                 platform: tuple[str, str] | None = None, unpack_threads: int = 2,
                 sources: dict[str, str] | None = None) -> None:
        """`sources`: image names (`ubuntu:22.04`) -> where that image really comes from
        (an OCI layout dir, an OCI or `docker save` tar, `#name` to pick one, or another
        reference, e.g. a registry mirror): a name found here never goes to its registry."""
        self.root = Path(root)
        self.sources = dict(sources or {})
        self.max_bytes = max_bytes
        self.max_image_bytes = max_image_bytes if max_image_bytes is not None else max_bytes
        self.max_entries = max_entries
        self.platform = platform or host_platform()
        self._registry = registry
        self._own_registry = registry is None
        self._images = self.root / "images"
        self._tmp = self.root / "tmp"
        self._locks = self.root / "locks"
        self._refs = self.root / "refs"
        self._trash = self.root / "trash"
        self._files = self.root / "files"
        for d in (self._images, self._locks, self._refs, self._trash, self._files):
            d.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(mode=0o700, exist_ok=True)
        for leftover in self._trash.iterdir():  # an eviction killed half way
            shutil.rmtree(leftover, ignore_errors=True)
        self._unpack_pool = ThreadPoolExecutor(unpack_threads, thread_name_prefix="image-unpack")
        self._lock_pool = ThreadPoolExecutor(16, thread_name_prefix="image-lock")
        self._mutexes: dict[str, asyncio.Lock] = {}
        self._pins: dict[str, int] = {}
        self._pin_fds: dict[str, int] = {}
        self._meta: dict[str, Image] = {}
        self._resolved: dict[tuple[object, ...], ResolvedImage] = {}
        self.stats = StoreStats()

    # -- public API ----------------------------------------------------------------------

    async def get(self, ref: str | os.PathLike[str], *, pin: bool = False, refresh: bool = False) -> Image:
        """The image `ref` names, unpacked on first use. `ref` is a local layout or archive
        path (optionally `#name`), a registry reference, or `sha256:<hex>` of a stored image.
        With `pin=True` the image stays pinned until `unpin(image.digest)`. `refresh`
        re-resolves a registry tag instead of using the digest it last resolved to."""
        pending = await self._pending(ref, refresh)
        image = await self._acquire(pending)
        if not pin:
            self.unpin(image.digest)
        return image

    @contextlib.asynccontextmanager
    async def use(self, ref: str | os.PathLike[str]) -> AsyncIterator[Image]:
        """The image, pinned for the duration of the block."""
        image = await self.get(ref, pin=True)
        try:
            yield image
        finally:
            self.unpin(image.digest)

    async def pin(self, digest: str) -> Image:
        """Pin a stored image (ImageNotFound if it is not stored). Pins count: unpin each."""
        return await self._acquire(self._stored_only(check_digest(digest)))

    def unpin(self, digest: str) -> None:
        count = self._pins.get(digest, 0)
        if count <= 0:
            raise ImageError(f"unpin({digest}): not pinned")
        if count == 1:
            del self._pins[digest]
            os.close(self._pin_fds.pop(digest))
        else:
            self._pins[digest] = count - 1

    def pinned(self, digest: str) -> bool:
        return self._pins.get(digest, 0) > 0

    def lookup(self, digest: str) -> Image | None:
        """The stored image with this digest, if complete (no lock, no pin)."""
        return self._read_meta(check_digest(digest).split(":", 1)[1])

    def images(self) -> list[Image]:
        """Every complete image in the store."""
        out = []
        for d in sorted(self._images.iterdir()):
            image = self._read_meta(d.name)
            if image is not None:
                out.append(image)
        return out

    async def trim(self) -> list[str]:
        """Evict least recently used unpinned images until the store is within `max_bytes`."""
        return await asyncio.get_running_loop().run_in_executor(self._lock_pool, self._trim_sync, frozenset())

    async def close(self) -> None:
        for digest in list(self._pin_fds):
            os.close(self._pin_fds.pop(digest))
        self._pins.clear()
        if self._own_registry and self._registry is not None:
            await self._registry.close()
        self._unpack_pool.shutdown(wait=True)
        self._lock_pool.shutdown(wait=False)

    # -- resolving a reference -----------------------------------------------------------

    def mapped(self, text: str) -> str | None:
        """What `sources` maps the name `text` to (exactly, or as the same registry
        reference: `ubuntu:22.04` and `docker.io/library/ubuntu:22.04` are one name)."""
        if text in self.sources:
            return self.sources[text]
        if not self.sources or is_local_ref(text) or text.startswith("sha256:"):
            return None
        try:
            wanted = str(parse_reference(text))
        except ImageError:
            return None
        for name, source in self.sources.items():
            with contextlib.suppress(ImageError):
                if str(parse_reference(name)) == wanted:
                    return source
        return None

    async def _pending(self, ref: str | os.PathLike[str], refresh: bool) -> _Pending:
        text = os.fspath(ref)
        if not isinstance(ref, os.PathLike):
            target = self.mapped(text)
            if target is not None:
                text = target
        if isinstance(ref, os.PathLike) or is_local_ref(text):
            for prefix in LOCAL_PREFIXES:
                text = text.removeprefix(prefix)
            resolved = await self._resolve_local(os.path.expanduser(text))
            return _Pending(resolved.digest, resolved.source, _ready(resolved))
        if text.startswith("sha256:"):
            return self._stored_only(check_digest(text))
        return await self._pending_registry(text, refresh)

    def _stored_only(self, digest: str) -> _Pending:
        async def missing(_: Path) -> ResolvedImage:
            raise ImageNotFound(f"image {digest} is not in the store at {self.root}")
        return _Pending(digest, digest, missing)

    async def _resolve_local(self, text: str) -> ResolvedImage:
        path, _ = split_selector(text)
        probe = Path(path) / "index.json" if Path(path).is_dir() else Path(path)
        try:
            st = probe.stat()
            key: tuple[object, ...] = (text, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            key = (text, None)
        cached = self._resolved.get(key)
        if cached is None:
            cached = await asyncio.get_running_loop().run_in_executor(
                self._lock_pool, resolve_local, text, self.platform)
            self._resolved[key] = cached
        return cached

    async def _pending_registry(self, text: str, refresh: bool) -> _Pending:
        reference = parse_reference(text)
        ref_file = self._refs / (hashlib.sha256(str(reference).encode()).hexdigest() + ".json")
        known = None if refresh else _read_json(ref_file)
        if known is not None:
            digest = check_digest(str(known.get("digest", "")))
            if self._read_meta(digest.split(":", 1)[1]) is not None:  # warm: no network
                return _Pending(digest, str(reference), lambda work: self._pull(reference, work, None))
        remote = await self._client().resolve(reference)

        def remember() -> None:
            _write_json_atomic(ref_file, {"ref": str(reference), "digest": remote.config_digest,
                                          "manifest_digest": remote.manifest_digest})

        return _Pending(remote.config_digest, str(reference), lambda work: self._pull(reference, work, remote),
                        remember)

    def _client(self) -> RegistryClient:
        if self._registry is None:
            self._registry = RegistryClient(platform=self.platform)
        return self._registry

    async def _pull(self, reference: Reference, work: Path, remote: RemoteImage | None) -> ResolvedImage:
        """Download the image into an OCI layout next to `work` and resolve it from there."""
        client = self._client()
        if remote is None:
            remote = await client.resolve(reference)
        layout = work.with_name(work.name + ".pull")
        await client.download(remote, layout, max_bytes=self.max_image_bytes)
        resolved = await asyncio.get_running_loop().run_in_executor(
            self._lock_pool, resolve_local, str(layout), self.platform)
        return dataclasses.replace(resolved, source=str(reference), manifest_digest=remote.manifest_digest)

    # -- acquiring (and creating) an image -----------------------------------------------

    async def _acquire(self, pending: _Pending) -> Image:
        """The complete image, pinned once more for the caller."""
        digest = pending.digest
        hexpart = digest.split(":", 1)[1]
        mutex = self._mutexes.setdefault(digest, asyncio.Lock())
        async with mutex:
            if self._pins.get(digest, 0) > 0:
                self._pins[digest] += 1
                self.stats.hits += 1
                return self._touch(hexpart)
            lock_path = self._locks / f"{hexpart}.lock"
            created = False
            while True:
                fd = await flock(lock_path, exclusive=False, executor=self._lock_pool)
                if self._read_meta(hexpart) is not None:
                    break
                os.close(fd)
                fd = await flock(lock_path, exclusive=True, executor=self._lock_pool)
                try:
                    if self._read_meta(hexpart) is None:
                        await self._create(pending, hexpart)
                        created = True
                except BaseException:
                    os.close(fd)
                    raise
                await self._downgrade(fd)
                # EX -> SH is not atomic: an evicter may have slipped in between.
                if self._read_meta(hexpart) is not None:
                    break
                os.close(fd)
            self._pins[digest] = 1
            self._pin_fds[digest] = fd
            try:
                pending.remember()
                if created:
                    await asyncio.get_running_loop().run_in_executor(self._lock_pool, self._trim_quietly, digest)
                else:
                    self.stats.hits += 1
                return self._touch(hexpart)
            except BaseException:
                self.unpin(digest)
                raise

    async def _downgrade(self, fd: int) -> None:
        """Turn the exclusive lock on `fd` into a shared one; on failure or cancellation the fd
        is closed (once the locking thread has let go of it)."""
        future = asyncio.get_running_loop().run_in_executor(self._lock_pool, fcntl.flock, fd, fcntl.LOCK_SH)
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda _: os.close(fd))
            raise
        except BaseException:
            os.close(fd)
            raise

    async def _create(self, pending: _Pending, hexpart: str) -> None:
        """Unpack into tmp/ and rename into images/ (caller holds the image lock exclusively)."""
        work = self._tmp / f"{hexpart}.{secrets.token_hex(6)}"
        work.mkdir(mode=0o700)
        try:
            resolved = await pending.materialize(work)
            if resolved.digest != pending.digest:
                raise ImageError(f"{pending.source}: resolved to {resolved.digest}, expected {pending.digest}")
            cancel = threading.Event()
            started = time.monotonic()
            future = asyncio.get_running_loop().run_in_executor(
                self._unpack_pool, self._unpack_sync, resolved, work, cancel)
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                cancel.set()
                await _wait_out(future)
                raise
            self.stats.unpacks += 1
            self.stats.unpack_seconds.append(time.monotonic() - started)
        finally:
            for leftover in (work, work.with_name(work.name + ".pull")):
                if leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)

    def _unpack_sync(self, resolved: ResolvedImage, work: Path, cancel: threading.Event) -> None:
        hexpart = resolved.digest.split(":", 1)[1]
        for stale in self._tmp.glob(f"{hexpart}.*"):  # left by a killed unpacker (we hold the lock)
            if stale.name not in (work.name, work.name + ".pull"):
                log.info("image store: removing stale partial unpack %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        try:
            budget = Budget(self.max_image_bytes, self.max_entries)
            stats = unpack_layers(resolved.layers, str(work / "rootfs"), budget, cancel)
            share_files(work / "rootfs", self._files, cancel)
            (work / "config.json").write_bytes(resolved.config_bytes)
            _write_json_atomic(work / "image.json", {
                "digest": resolved.digest, "source": resolved.source, "manifest_digest": resolved.manifest_digest,
                "size": budget.footprint, "bytes": budget.written, "entries": budget.entries,
                "layers": stats.layers, "skipped": stats.skipped, "skipped_count": stats.skipped_count,
                "created": time.time()})
            (work / "used").touch()
            if cancel.is_set():
                raise UnpackCancelled("unpack cancelled")
            os.rename(work, self._images / resolved.digest.split(":", 1)[1])
            log.info("image store: unpacked %s from %s (%d bytes, %d entries)",
                     resolved.digest, resolved.source, budget.written, budget.entries)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    # -- metadata, LRU and eviction ------------------------------------------------------

    def _read_meta(self, hexpart: str) -> Image | None:
        digest = f"sha256:{hexpart}"
        base = self._images / hexpart
        cached = self._meta.get(digest)
        if cached is not None and base.is_dir():
            return cached
        meta = _read_json(base / "image.json")
        if meta is None:
            self._meta.pop(digest, None)
            return None
        try:
            config = ImageConfig.model_validate_json_tolerant((base / "config.json").read_bytes()).config
        except (OSError, ImageError):
            return None
        image = Image(digest=digest, rootfs=base / "rootfs", config=config, source=str(meta.get("source", "")),
                      size=int(meta.get("size", 0)), manifest_digest=meta.get("manifest_digest"),
                      skipped=tuple(meta.get("skipped", ())))
        self._meta[digest] = image
        return image

    def _touch(self, hexpart: str) -> Image:
        image = self._read_meta(hexpart)
        assert image is not None  # we hold its lock: it cannot have gone
        with contextlib.suppress(OSError):
            os.utime(self._images / hexpart / "used")
        return image

    def _trim_quietly(self, new_digest: str) -> None:
        """Eviction after an unpack: a failure to evict is logged, never fails the get."""
        try:
            self._trim_sync(frozenset({new_digest}))
        except OSError as e:
            log.warning("image store %s: eviction failed: %s", self.root, e)

    def _trim_sync(self, keep: frozenset[str]) -> list[str]:
        evicted: list[str] = []
        store_fd = os.open(self._locks / "store.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(store_fd, fcntl.LOCK_EX)
            entries = []
            for d in self._images.iterdir():
                meta = _read_json(d / "image.json")
                if meta is None:
                    continue
                try:
                    used = (d / "used").stat().st_mtime_ns
                except OSError:
                    used = 0
                entries.append((used, d.name, int(meta.get("size", 0))))
            total = sum(size for _, _, size in entries)
            for _, hexpart, size in sorted(entries):
                if total <= self.max_bytes:
                    break
                digest = f"sha256:{hexpart}"
                if digest in keep or self.pinned(digest):
                    continue
                lock_fd = try_flock(self._locks / f"{hexpart}.lock", exclusive=True)
                if lock_fd is None:
                    continue  # pinned by another process, or being created
                try:
                    trash = self._trash / f"{hexpart}.{secrets.token_hex(6)}"
                    os.rename(self._images / hexpart, trash)
                finally:
                    os.close(lock_fd)
                shutil.rmtree(trash, ignore_errors=True)
                self._meta.pop(digest, None)
                total -= size
                evicted.append(digest)
                self.stats.evictions += 1
                log.info("image store: evicted %s (%d bytes)", digest, size)
            if evicted:
                _forget_unlinked(self._files)
            if total > self.max_bytes:
                log.warning("image store %s holds %d bytes, over its %d: the rest is pinned",
                            self.root, total, self.max_bytes)
        finally:
            os.close(store_fd)
        return evicted


def share_files(rootfs: Path, pool: Path, cancel: threading.Event) -> int:
    """Make every regular file under `rootfs` a hard link to the pool's inode for its
    content, mode and mtime (adding the file to the pool when it is the first). Returns
    the number of files that now share an inode with another image."""
    shared = 0
    # Never two names of one image on one inode (unless its layers made a hard link): a
    # slot's copy of its workdir (cp -a) would keep them linked, and a write to one would
    # change the other.
    used: set[str] = set()
    for dirpath, _, filenames in os.walk(rootfs):
        if cancel.is_set():
            raise UnpackCancelled("unpack cancelled")
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or st.st_nlink > 1:
                continue
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            key = f"{h.hexdigest()}-{stat.S_IMODE(st.st_mode):o}-{st.st_mtime_ns}"
            if key in used:
                continue
            used.add(key)
            target = pool / key[:2] / key
            try:
                os.link(path, target)  # the first of its kind: the pool adopts this inode
                continue
            except FileNotFoundError:
                target.parent.mkdir(exist_ok=True)
                try:
                    os.link(path, target)
                    continue
                except FileExistsError:
                    pass
            except FileExistsError:
                pass
            tmp = f"{path}.share-{secrets.token_hex(4)}"
            try:
                os.link(target, tmp)
            except OSError:  # evicted meanwhile, or too many links: keep our own copy
                continue
            os.replace(tmp, path)
            shared += 1
    return shared


def _forget_unlinked(pool: Path) -> None:
    """Drop pool inodes no image links to any more."""
    for sub in pool.iterdir():
        for entry in sub.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_nlink == 1:
                    entry.unlink()


def _ready(resolved: ResolvedImage) -> Callable[[Path], Awaitable[ResolvedImage]]:
    async def materialize(_: Path) -> ResolvedImage:
        return resolved
    return materialize


async def _wait_out(future: asyncio.Future[None]) -> None:
    """Wait for `future` to finish, even through further cancellations; its error is dropped
    (the caller is propagating a cancellation)."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])
    with contextlib.suppress(BaseException):
        future.result()


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json_atomic(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)
