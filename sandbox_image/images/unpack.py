"""Apply layer tars to a root filesystem directory, refusing anything that would escape it.

Guarantees, for any archive however hostile:
- Nothing is created, changed or removed outside `root`: every path is walked component by
  component from a directory fd with O_NOFOLLOW, so a symlink (from this or an earlier layer)
  is never followed while unpacking; a member whose path goes through one is refused.
- Refused with `UnsafeArchive` naming the member: absolute paths, `..` components, paths
  through symlinks or non-directories, hard links whose target is absolute, has `..`, goes
  through a symlink or does not exist in the rootfs.
- Symlinks themselves are kept as written, absolute targets included (`/usr/bin/python ->
  /usr/bin/python3.11` resolves inside the sandbox, where the rootfs is `/`).
- Device nodes and FIFOs are skipped (listed in `UnpackStats.skipped`, logged): the sandbox
  gets its own /dev from bubblewrap and an image's node could name a host device.
- setuid/setgid bits and xattrs (file capabilities included) are dropped; owners are not kept
  (every file belongs to the store's user); modes and mtimes are kept; directories stay
  owner-writable so the store can delete them.
- Bytes written are capped per image (`Budget.max_bytes`), checked against each member's
  declared size before anything is written, so a 10 GB claim fails at once; the entry count
  is capped too (`Budget.max_entries`).
- Whiteouts follow the OCI spec: `.wh.<name>` removes `<name>` of lower layers,
  `.wh..wh..opq` hides everything lower layers put in its directory; neither touches what
  the same layer wrote.
- `cancel` (a threading.Event) is checked between members and between chunks of a file.
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import shutil
import stat
import tarfile
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from .errors import ImageError, SizeLimitExceeded, UnsafeArchive, UnsupportedImage
from .streams import LayerStream

if TYPE_CHECKING:
    from .sources import LayerBlob

log = logging.getLogger(__name__)

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SKIPPED_LISTED = 100


class UnpackCancelled(ImageError):
    """The unpack was asked to stop (its caller was cancelled)."""


@dataclass
class Budget:
    """What one image may write, across all its layers, and what it has written."""

    max_bytes: int
    max_entries: int = 1_000_000
    written: int = 0
    entries: int = 0

    def take(self, nbytes: int, member: str) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise SizeLimitExceeded(f"member {member!r}: image has more than {self.max_entries} entries")
        if self.written + nbytes > self.max_bytes:
            raise SizeLimitExceeded(
                f"member {member!r} ({nbytes} bytes) would take the image past its cap of "
                f"{self.max_bytes} bytes ({self.written} written so far)")
        self.written += nbytes

    @property
    def footprint(self) -> int:
        """Approximate disk use: payload plus a block per entry."""
        return self.written + 1024 * self.entries


@dataclass
class UnpackStats:
    layers: int = 0
    skipped: list[str] = field(default_factory=list)
    skipped_count: int = 0


def _parts(name: str, member: str, what: str = "path") -> list[str]:
    if "\0" in name:
        raise UnsafeArchive(f"member {member!r}: {what} contains a NUL byte")
    if name.startswith("/"):
        raise UnsafeArchive(f"member {member!r}: absolute {what} {name!r} refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"member {member!r}: {what} {name!r} has a '..' component")
    return parts


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _remove(name: str, dir_fd: int, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _set_mtime(m: tarfile.TarInfo, path: str | int, dir_fd: int | None = None) -> None:
    ns = int(m.mtime * 10**9)
    try:
        if isinstance(path, int):
            os.utime(path, ns=(ns, ns))
        else:
            os.utime(path, ns=(ns, ns), dir_fd=dir_fd, follow_symlinks=False)
    except (OverflowError, ValueError, OSError):
        pass  # an out-of-range mtime is not worth refusing an image over


class LayerApplier:
    """Applies the layers of one image, in order, to the directory `root` (which it owns)."""

    def __init__(self, root: str, budget: Budget, cancel: threading.Event | None = None) -> None:
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.budget = budget
        self.cancel = cancel or threading.Event()
        self.stats = UnpackStats()
        self._dirs: dict[tuple[str, ...], int] = {}  # open parent dirs of this layer
        self._touched: set[tuple[str, ...]] = set()  # paths this layer wrote, and their ancestors
        self._skipped_paths: set[tuple[str, ...]] = set()

    def close(self) -> None:
        self._forget_dirs()
        os.close(self.root_fd)

    def __enter__(self) -> "LayerApplier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- walking -------------------------------------------------------------------------

    def _forget_dirs(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def _dir(self, parts: list[str], member: str, create: bool) -> int:
        """An fd of the directory `parts` under root (cached for this layer; do not close),
        walked without following symlinks; missing directories are created if `create`."""
        if not parts:
            return self.root_fd
        key = tuple(parts)
        if key in self._dirs:
            return self._dirs[key]
        fd = self._dir(parts[:-1], member, create)
        name = parts[-1]
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise UnsafeArchive(f"member {member!r}: {'/'.join(parts)!r} does not exist") from None
            os.mkdir(name, 0o755, dir_fd=fd)
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = _lstat(name, fd)
            kind = "symlink" if st is not None and stat.S_ISLNK(st.st_mode) else "non-directory"
            raise UnsafeArchive(
                f"member {member!r}: path goes through {kind} {'/'.join(parts)!r}; refused") from None
        self._dirs[key] = child
        return child

    def _touch(self, parts: list[str]) -> None:
        for i in range(1, len(parts) + 1):
            self._touched.add(tuple(parts[:i]))

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise UnpackCancelled("unpack cancelled")

    # -- layers --------------------------------------------------------------------------

    def apply(self, tar_stream: BinaryIO, what: str) -> None:
        """Apply one layer (an uncompressed tar byte stream, read once, front to back)."""
        self._touched = set()
        try:
            with tarfile.open(fileobj=tar_stream, mode="r|", errorlevel=2, bufsize=_CHUNK) as tf:
                for member in tf:
                    self._check_cancel()
                    self._member(tf, member)
        except (tarfile.TarError, EOFError) as e:
            raise ImageError(f"{what} is not a readable tar archive: {e}") from None
        finally:
            self._forget_dirs()
        self.stats.layers += 1

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _parts(m.name, m.name)
        if not parts:
            if not m.isdir():
                raise UnsafeArchive(f"member {m.name!r}: a non-directory at the rootfs itself")
            return  # the root directory keeps the store's mode
        leaf = parts[-1]
        if leaf.startswith(WHITEOUT):
            self.budget.take(0, m.name)
            self._whiteout(parts, m.name)
            return
        if m.issparse():
            raise UnsupportedImage(f"member {m.name!r}: sparse tar members are not supported")
        kind = ("file" if m.isreg() else "dir" if m.isdir() else "symlink" if m.issym()
                else "hardlink" if m.islnk() else "special")
        if kind == "special":  # char/block devices, FIFOs
            self.budget.take(0, m.name)
            self.stats.skipped_count += 1
            self._skipped_paths.add(tuple(parts))
            if len(self.stats.skipped) < _MAX_SKIPPED_LISTED:
                self.stats.skipped.append(m.name)
            log.warning("image unpack: skipped device/fifo member %r", m.name)
            return
        self.budget.take(m.size if kind == "file" else 0, m.name)
        pfd = self._dir(parts[:-1], m.name, create=True)
        existing = _lstat(leaf, pfd)
        if existing is not None and not (kind == "dir" and stat.S_ISDIR(existing.st_mode)):
            if stat.S_ISDIR(existing.st_mode):
                self._forget_dirs()  # cached fds under it would point at a deleted tree
                pfd = self._dir(parts[:-1], m.name, create=True)
            _remove(leaf, pfd, existing)
        self._touch(parts)
        self._skipped_paths.discard(tuple(parts))
        if kind == "file":
            self._file(tf, m, leaf, pfd)
        elif kind == "dir":
            self._mkdir(m, leaf, pfd, exists=existing is not None and stat.S_ISDIR(existing.st_mode))
        elif kind == "symlink":
            if "\0" in m.linkname:
                raise UnsafeArchive(f"member {m.name!r}: symlink target contains a NUL byte")
            os.symlink(m.linkname, leaf, dir_fd=pfd)
            _set_mtime(m, leaf, dir_fd=pfd)
        else:
            self._hardlink(m, parts, pfd)

    def _file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, leaf: str, pfd: int) -> None:
        src = tf.extractfile(m)
        assert src is not None
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=pfd)
        try:
            while chunk := src.read(_CHUNK):
                self._check_cancel()
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fchmod(fd, m.mode & 0o777)  # setuid, setgid and sticky dropped
            _set_mtime(m, fd)
        finally:
            os.close(fd)

    def _mkdir(self, m: tarfile.TarInfo, leaf: str, pfd: int, exists: bool) -> None:
        if not exists:
            os.mkdir(leaf, 0o700, dir_fd=pfd)
        fd = os.open(leaf, _DIR_FLAGS, dir_fd=pfd)
        try:
            os.fchmod(fd, (m.mode & 0o1777) | 0o700)
        finally:
            os.close(fd)

    def _hardlink(self, m: tarfile.TarInfo, parts: list[str], pfd: int) -> None:
        target = _parts(m.linkname, m.name, what="hard link target")
        if not target:
            raise UnsafeArchive(f"member {m.name!r}: hard link to the rootfs itself refused")
        if tuple(target) in self._skipped_paths:
            self._skipped_paths.add(tuple(parts))
            return  # a link to a skipped device node is skipped with it
        tfd = self._dir(target[:-1], m.name, create=False)
        st = _lstat(target[-1], tfd)
        if st is None:
            raise UnsafeArchive(f"member {m.name!r}: hard link target {m.linkname!r} does not exist in the rootfs")
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"member {m.name!r}: hard link to directory {m.linkname!r} refused")
        os.link(target[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    # -- whiteouts -----------------------------------------------------------------------

    def _whiteout(self, parts: list[str], member: str) -> None:
        parent, leaf = parts[:-1], parts[-1]
        pfd = self._dir(parent, member, create=True)
        self._touch(parent)
        if leaf == OPAQUE:
            self._forget_dirs()
            self._hide_lower(self._dir(parent, member, create=True), parent)
            return
        if leaf.startswith(WHITEOUT + WHITEOUT):
            return  # other aufs metadata (.wh..wh.plnk, ...): nothing to apply
        name = leaf[len(WHITEOUT):]
        if name in ("", ".", ".."):
            raise UnsafeArchive(f"member {member!r}: whiteout of {name!r} refused")
        if tuple(parent + [name]) in self._touched:
            return  # a whiteout never hides what its own layer wrote
        st = _lstat(name, pfd)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                self._forget_dirs()
                pfd = self._dir(parent, member, create=True)
            _remove(name, pfd, st)

    def _hide_lower(self, dfd: int, path: list[str]) -> None:
        """Remove everything under the directory `dfd` (at `path`) this layer did not write."""
        for name in os.listdir(dfd):
            child = path + [name]
            st = os.lstat(name, dir_fd=dfd)
            if tuple(child) not in self._touched:
                _remove(name, dfd, st)
            elif stat.S_ISDIR(st.st_mode):
                cfd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                try:
                    self._hide_lower(cfd, child)
                finally:
                    os.close(cfd)


def unpack_layers(layers: Sequence[LayerBlob], rootfs: str, budget: Budget,
                  cancel: threading.Event | None = None) -> UnpackStats:
    """Create `rootfs` (which must not exist) and apply `layers` to it in order, verifying each
    layer's digests as it streams through. Blocking: run it in a thread. On error the partial
    tree is left for the caller (the store unpacks into a private temp dir it deletes)."""
    os.mkdir(rootfs, 0o755)
    with LayerApplier(rootfs, budget, cancel) as applier:
        for layer in layers:
            # The uncompressed stream may carry tar headers and padding beyond the payload cap.
            limit = budget.max_bytes + 2048 * budget.max_entries + (1 << 20)
            with layer.open() as raw:
                stream = LayerStream(raw, layer.name, max_uncompressed=limit)
                try:
                    applier.apply(stream.tar, layer.name)  # type: ignore[arg-type]
                except (gzip.BadGzipFile, zlib.error) as e:
                    raise ImageError(f"{layer.name}: corrupt compressed stream: {e}") from None
                stream.verify(layer.digest, layer.size, layer.diff_id)
    return applier.stats
