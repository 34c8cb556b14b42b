"""Writing into an image's root from the host without ever leaving it.

Every path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`: `..` stops at the
root and a symlink (absolute or relative, from any layer or from a RUN step) is followed as
if the image root were `/`, so `RUN ln -s /etc/host-file /app/f` followed by `COPY f /app/`
writes the image's /etc/host-file, never the host's. Magic links (/proc/self/fd/...) are
refused. Sources are read the same way inside their own root (a build context, another
stage's root): a symlink in the context cannot reach a host file either.

What is written is given to `owner` (the host uid/gid of the wanted user of the image's
user namespace), as Docker gives COPY's files to root (or `--chown`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
_CHUNK = 1 << 20


class InRootError(OSError):
    """A path that cannot be written inside the root (the message names it)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


def open_in(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """An fd of `path` resolved inside the directory `root_fd` as its `/`."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0,
                   RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(_SYS_OPENAT2, root_fd, os.fsencode(path or "/"), ctypes.byref(how),
                       ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{path}: {os.strerror(err)}")
    return fd


def supported() -> bool:
    try:
        os.close(open_in(os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), "/",
                         os.O_RDONLY | os.O_DIRECTORY))
    except OSError:
        return False
    return True


def _split(path: str) -> tuple[str, str]:
    parts = [p for p in path.split("/") if p and p != "."]
    if not parts:
        return "/", ""
    return "/" + "/".join(parts[:-1]), parts[-1]


class Writer:
    """Writes into the root directory `root` (an fd is held until `close`)."""

    def __init__(self, root: str, owner: tuple[int, int]) -> None:
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.owner = owner
        self.mode: int | None = None  # COPY --chmod: the mode of everything written

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def makedirs(self, path: str, owner: tuple[int, int] | None = None, _depth: int = 0) -> None:
        """`mkdir -p` inside the root; directories it makes get `owner` (default: the
        writer's). A symlink on the way is followed inside the root, and a dangling one
        gets its target made (as Docker's WORKDIR and COPY do)."""
        uid, gid = owner or self.owner
        parts = [p for p in path.split("/") if p and p != "."]
        for i in range(len(parts)):
            sub = "/" + "/".join(parts[:i + 1])
            try:
                os.close(open_in(self.fd, sub, os.O_RDONLY | os.O_DIRECTORY))
                continue
            except FileNotFoundError:
                pass
            except NotADirectoryError:
                raise InRootError(errno.ENOTDIR, f"{sub} exists in the image and is not a "
                                  "directory") from None
            parent_path = "/" + "/".join(parts[:i])
            parent = open_in(self.fd, parent_path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                try:
                    os.mkdir(parts[i], 0o755, dir_fd=parent)
                    os.chown(parts[i], uid, gid, dir_fd=parent, follow_symlinks=False)
                    continue
                except FileExistsError:  # a dangling symlink
                    target = os.readlink(parts[i], dir_fd=parent)
            finally:
                os.close(parent)
            if _depth >= 16:
                raise InRootError(errno.ELOOP, f"{sub}: too many levels of symlinks")
            # normpath keeps `..` from climbing above the root, as RESOLVE_IN_ROOT does.
            self.makedirs(os.path.normpath(os.path.join(parent_path, target)), owner, _depth + 1)

    def is_dir(self, path: str) -> bool:
        try:
            os.close(open_in(self.fd, path, os.O_RDONLY | os.O_DIRECTORY))
            return True
        except OSError:
            return False

    def write_file(self, path: str, data: bytes | Iterator[bytes], mode: int,
                   mtime_ns: int | None = None, owner: tuple[int, int] | None = None) -> None:
        """Create or replace the file `path` (a symlink on the way is followed inside the
        root; one at `path` itself is replaced)."""
        uid, gid = owner or self.owner
        parent, leaf = _split(path)
        self.makedirs(parent, owner)
        pfd = open_in(self.fd, parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # The leaf itself is replaced, never written through (a link is not followed).
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISLNK(os.lstat(leaf, dir_fd=pfd).st_mode):
                    os.unlink(leaf, dir_fd=pfd)
            fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=pfd)
        finally:
            os.close(pfd)
        try:
            chunks = [data] if isinstance(data, bytes) else data
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, (self.mode if self.mode is not None else mode) & 0o7777)
            if mtime_ns is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def symlink(self, path: str, target: str, owner: tuple[int, int] | None = None) -> None:
        uid, gid = owner or self.owner
        parent, leaf = _split(path)
        self.makedirs(parent, owner)
        pfd = open_in(self.fd, parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(leaf, dir_fd=pfd)
                if stat.S_ISDIR(st.st_mode):
                    raise InRootError(errno.EISDIR, f"{path} is a directory in the image")
                os.unlink(leaf, dir_fd=pfd)
            os.symlink(target, leaf, dir_fd=pfd)
            os.chown(leaf, uid, gid, dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(pfd)

    def chmod_dir(self, path: str, mode: int) -> None:
        fd = open_in(self.fd, path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fchmod(fd, (self.mode if self.mode is not None else mode) & 0o7777)
        finally:
            os.close(fd)

    def copy_tree_from(self, src_root: str, src: str, dest: str, into_dir: bool,
                       owner: tuple[int, int] | None = None,
                       exclude: frozenset[str] = frozenset()) -> int:
        """Copy `src` (resolved inside `src_root`) to `dest` (inside this root), Docker's
        way: a directory's contents go into `dest`; a file goes to `dest`, or into it when
        `into_dir`. A link named as `src` is followed (inside `src_root`; a dangling one is
        copied as a link); links inside a copied directory are copied as links; devices,
        FIFOs and sockets are skipped. Returns the number of entries written."""
        sroot = os.open(src_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                # A link named as the source is followed (inside its root), as Docker does.
                sfd = open_in(sroot, src, os.O_RDONLY)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOENT):
                    raise
                parent, leaf = _split(src)
                pfd = open_in(sroot, parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    target = os.readlink(leaf, dir_fd=pfd)  # ENOENT again: no such source
                finally:
                    os.close(pfd)
                # `src` itself is a dangling or looping link: copy the link.
                self.symlink(dest.rstrip("/") + "/" + leaf if into_dir else dest, target, owner)
                return 1
            try:
                st = os.fstat(sfd)
                if stat.S_ISDIR(st.st_mode):
                    self.makedirs(dest, owner)
                    prefix = "/".join(p for p in src.split("/") if p and p != ".")
                    return self._copy_dir(sfd, dest, owner, prefix, exclude)
                name = _split(src)[1] or "file"
                out = dest.rstrip("/") + "/" + name if into_dir else dest
                self.write_file(out, _chunks(sfd), st.st_mode, st.st_mtime_ns, owner)
                return 1
            finally:
                os.close(sfd)
        finally:
            os.close(sroot)

    def _copy_dir(self, dfd: int, dest: str, owner: tuple[int, int] | None, rel: str = "",
                  exclude: frozenset[str] = frozenset()) -> int:
        """`exclude`: paths relative to the source root left out (.dockerignore)."""
        count = 0
        for name in sorted(os.listdir(dfd)):
            if (f"{rel}/{name}" if rel else name) in exclude:
                continue
            st = os.lstat(name, dir_fd=dfd)
            out = dest.rstrip("/") + "/" + name
            if stat.S_ISLNK(st.st_mode):
                self.symlink(out, os.readlink(name, dir_fd=dfd), owner)
            elif stat.S_ISDIR(st.st_mode):
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=dfd)
                try:
                    self.makedirs(out, owner)
                    count += self._copy_dir(child, out, owner, f"{rel}/{name}" if rel else name,
                                            exclude)
                    self.chmod_dir(out, st.st_mode)
                finally:
                    os.close(child)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                try:
                    self.write_file(out, _chunks(fd), st.st_mode, st.st_mtime_ns, owner)
                finally:
                    os.close(fd)
            else:
                continue
            count += 1
        return count

    def extract_tar(self, archive: str, dest: str, owner: tuple[int, int] | None = None) -> int:
        """ADD of a local tarball: its members under `dest`, each resolved inside the root
        (a member's `..` or absolute path cannot leave it either). Hard links become copies
        of their target's bytes; devices and FIFOs are skipped."""
        count = 0
        self.makedirs(dest, owner)
        with tarfile.open(archive, mode="r:*") as tf:
            for m in tf:
                parts = [p for p in m.name.split("/") if p and p != "."]
                if not parts or ".." in parts:
                    continue
                out = dest.rstrip("/") + "/" + "/".join(parts)
                if m.isdir():
                    self.makedirs(out, owner)
                    self.chmod_dir(out, m.mode | 0o700)
                elif m.issym():
                    self.symlink(out, m.linkname, owner)
                elif m.isreg() or m.islnk():
                    src = tf.extractfile(m)
                    if src is None:
                        continue
                    self.write_file(out, _reader(src), m.mode & 0o777, int(m.mtime * 10**9), owner)
                else:
                    continue
                count += 1
        return count


def _reader(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


def _chunks(fd: int) -> Iterator[bytes]:
    while chunk := os.read(fd, _CHUNK):
        yield chunk
