"""File operations confined to one slot workspace.

A path is relative to the workspace (or absolute under the sandbox's workspace path). `..`
components and absolute paths elsewhere are refused outright; the resolved host path must
stay inside the workspace, and the final open walks it component by component with
O_NOFOLLOW so a symlink swapped in after the check cannot redirect the access.
All functions here are blocking; the app runs them in a worker thread.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
from typing import Any

MAX_LIST_ENTRIES = 10_000
MAX_ARCHIVE_MEMBERS = 200_000


class PathError(Exception):
    """The request names a path outside the workspace or of the wrong kind (HTTP 400/404/413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def resolve(ws_real: str, ws_inside: str, path: str) -> str:
    """Map a user path to a host path inside `ws_real` (symlinks resolved), or raise."""
    if "\x00" in path:
        raise PathError("path contains a NUL byte")
    if path.startswith("/"):
        if path == ws_inside or path.startswith(ws_inside + "/"):
            path = path[len(ws_inside):]
        elif path == ws_real or path.startswith(ws_real + "/"):
            path = path[len(ws_real):]
        else:
            raise PathError(f"absolute path {path!r} is outside the workspace {ws_inside}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathError(f"'..' is not allowed in paths ({path!r})")
    real = os.path.realpath(os.path.join(ws_real, *parts))
    if not _inside(real, ws_real):
        raise PathError(f"{path!r} resolves outside the workspace (symlink escape refused)")
    return real


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _enter(fd: int, part: str, create: bool, owner: int | None) -> int:
    """The directory `part` of the directory `fd` (made first if `create`; what is made
    belongs to `owner` if set), opened without following a symlink. Closes `fd`."""
    try:
        if create:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                if owner is not None:
                    os.chown(part, owner, owner, dir_fd=fd, follow_symlinks=False)
            except FileExistsError:
                pass
        return os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def make_dirs(root: str, path: str, owner: int | None = None) -> None:
    """`mkdir -p root/path`, never following a symlink on the way; what it makes belongs to
    `owner` (root of a slot container) if set."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in [p for p in path.split("/") if p]:
        fd = _enter(fd, part, True, owner)
    os.close(fd)


def _open_walk(ws_real: str, real: str, flags: int, mode: int = 0o644, *,
               create_parents: bool = False, owner: int | None = None) -> int:
    """Open `real` (inside ws_real) without following any symlink on the way. Directories
    it creates are given to `owner` (root of the slot's container), if set."""
    rel = os.path.relpath(real, ws_real)
    parts = [] if rel == "." else rel.split("/")
    fd = os.open(ws_real, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            old, fd = fd, -1
            fd = _enter(old, part, create_parents, owner)
        if not parts:
            out, fd = fd, -1
            return out
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PathError("path crosses a symlink or a non-directory; refused") from e
        if e.errno == errno.ENOENT:
            raise PathError(f"no such file or directory: {rel}", 404) from e
        if e.errno == errno.EISDIR:
            raise PathError(f"is a directory: {rel}") from e
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def read_file(ws_real: str, ws_inside: str, path: str, max_bytes: int | None,
              cap: int) -> tuple[bytes, int]:
    """Returns (data, file size). Without max_bytes a file over `cap` is refused."""
    real = resolve(ws_real, ws_inside, path)
    fd = _open_walk(ws_real, real, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathError(f"{path!r} is not a regular file")
        if max_bytes is None and st.st_size > cap:
            raise PathError(f"{path!r} is {st.st_size} bytes, over the read cap of {cap}; "
                            "pass max_bytes to read a prefix", 413)
        limit = min(max_bytes if max_bytes is not None else cap, cap)
        chunks, remaining = [], limit
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks), st.st_size
    finally:
        os.close(fd)


def write_file(ws_real: str, ws_inside: str, path: str, data: bytes,
               owner: int | None = None) -> None:
    """Write `path`; what it creates (the file, missing parents) belongs to `owner` if set
    (never the server's own uid: root in a slot container must own what appears in it)."""
    real = resolve(ws_real, ws_inside, path)
    if real == ws_real:
        raise PathError("cannot write to the workspace root itself")
    fd = _open_walk(ws_real, real, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, create_parents=True,
                    owner=owner)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathError(f"{path!r} is not a regular file")
        if owner is not None and st.st_uid == os.geteuid():
            os.fchown(fd, owner, owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def list_dir(ws_real: str, ws_inside: str, path: str) -> dict[str, Any]:
    real = resolve(ws_real, ws_inside, path)
    fd = _open_walk(ws_real, real, os.O_RDONLY | os.O_DIRECTORY)
    entries = []
    truncated = False
    try:
        for name in sorted(os.listdir(fd)):
            if len(entries) >= MAX_LIST_ENTRIES:
                truncated = True
                break
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            entries.append({"name": name, "type": _kind(st.st_mode), "size": st.st_size})
    finally:
        os.close(fd)
    return {"entries": entries, "truncated": truncated}


class _CappedBuffer(io.RawIOBase):
    def __init__(self, cap: int) -> None:
        self.buf = bytearray()
        self.cap = cap

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if len(self.buf) + len(b) > self.cap:
            raise PathError(f"archive exceeds the size cap of {self.cap} bytes", 413)
        self.buf += b
        return len(b)


def archive(ws_real: str, ws_inside: str, path: str, cap: int) -> bytes:
    """tar.gz of a file or directory; members are named relative to `path`."""
    real = resolve(ws_real, ws_inside, path)
    if not os.path.lexists(real):
        raise PathError(f"no such file or directory: {path}", 404)
    out = _CappedBuffer(cap)
    try:
        with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
            if os.path.isdir(real):
                for name in sorted(os.listdir(real)):
                    tar.add(os.path.join(real, name), arcname=name)
            else:
                tar.add(real, arcname=os.path.basename(real))
    except PermissionError as e:  # modes the slot's own user set: a bad request, not an I/O fault
        where = os.path.relpath(e.filename, ws_real) if e.filename else path
        raise PathError(f"cannot archive {path}: permission denied on {where}") from e
    return bytes(out.buf)


def _give_tree(dest: str, owner: int) -> None:
    """Give what the server extracted under `dest` to `owner`, never following a symlink
    (a slot's processes run meanwhile and may swap a directory for a link)."""
    me = os.geteuid()
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_uid == me:
            os.fchown(fd, owner, owner)
    finally:
        os.close(fd)
    for _root, dirs, names, dir_fd in os.fwalk(dest, follow_symlinks=False):
        for name in [*dirs, *names]:
            try:
                if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid == me:
                    os.chown(name, owner, owner, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue


def extract(ws_real: str, ws_inside: str, path: str, data: bytes, cap: int,
            owner: int | None = None) -> int:
    """Safely extract a tar(.gz) into `path`; returns the member count. With `owner`,
    everything extracted (and `path`, if made) belongs to it.

    Every member is checked before anything is written (so a bad archive changes nothing):
    no absolute names, no `..`, no links leaving the workspace, no devices or FIFOs, total
    unpacked size under 8 x cap.
    """
    dest = resolve(ws_real, ws_inside, path)
    os.makedirs(dest, exist_ok=True)
    if not os.path.isdir(dest) or not _inside(os.path.realpath(dest), ws_real):
        raise PathError(f"upload target {path!r} is not a directory in the workspace")
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except tarfile.TarError as e:
        raise PathError(f"not a readable tar archive: {e}") from e
    with tar:
        members, total = [], 0
        try:
            for member in tar:
                if len(members) >= MAX_ARCHIVE_MEMBERS:
                    raise PathError(f"archive has more than {MAX_ARCHIVE_MEMBERS} members")
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    raise PathError(f"archive member {member.name!r} has an absolute or "
                                    "'..' path; refused")
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    raise PathError(f"archive member {member.name!r} is a device/FIFO; refused")
                try:
                    checked = tarfile.data_filter(member, dest)
                except tarfile.FilterError as e:
                    raise PathError(f"unsafe archive member refused: {e}") from e
                total += checked.size
                if total > 8 * cap:
                    raise PathError(f"archive unpacks to more than {8 * cap} bytes", 413)
                members.append(checked)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise PathError(f"corrupt tar archive: {e}") from e
        tar.extractall(dest, members=members, filter="data")
    if owner is not None:
        _give_tree(dest, owner)
    return len(members)
