"""The host view: the root filesystem of a slot on the `host` image.

A small directory built once per server (its data dir's `host-view/`) and bound read-only
on `/`: empty mount points for the host's system directories (/usr, /lib*, bound read-only
on top; /bin -> usr/bin stays a symlink), a filtered copy of /etc, empty /var and /home,
and the mount points the server needs (workspace, exposed interpreter prefixes). Nothing
else of the host: never /root, /home, /work, /var, /opt, /srv, /mnt, caches, other
checkouts or the repo mirrors.

Why a built directory instead of one bind per /etc file on bwrap's empty root: every mount
is paid on every command. The per-file binds were ~30 mounts and cost ~3.4 ms of each
command's ~12 ms here (bare bwrap with the server's flags, tests/bench/bench_sandbox.py);
the built root takes one bind for all of them. The /etc copy is taken when the server starts, and only of
entries any user may read (no /etc/ssl/private); symlinks inside copied directories stay
symlinks, so one pointing outside the visible trees dangles inside the slot.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

HOST_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
HOST_ETC = ("passwd", "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf",
            "gai.conf", "protocols", "services", "networks", "ld.so.cache", "ld.so.conf",
            "ld.so.conf.d", "alternatives", "ssl", "ca-certificates", "ca-certificates.conf",
            "localtime", "timezone", "os-release", "debian_version", "mime.types", "magic",
            "shells", "inputrc", "locale.alias", "mke2fs.conf")
# Mount points bwrap needs in the root (/tmp, /dev, /proc get their own mounts).
_EMPTY = ("etc", "var", "home", "tmp", "dev", "proc")


def _world_readable(st: os.stat_result) -> bool:
    if stat.S_ISDIR(st.st_mode):
        return bool(st.st_mode & stat.S_IROTH and st.st_mode & stat.S_IXOTH)
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & stat.S_IROTH)


def _copy_entry(src: str, dst: str, follow: bool) -> None:
    """Copy a file or a tree of /etc, leaving out what not every user may read."""
    st = os.stat(src) if follow else os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif not _world_readable(st):
        return
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)
        for entry in sorted(os.listdir(src)):
            _copy_entry(os.path.join(src, entry), os.path.join(dst, entry), follow=False)
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    else:
        shutil.copyfile(src, dst, follow_symlinks=True)
        os.chmod(dst, stat.S_IMODE(st.st_mode))


class HostView:
    """A built host-view root at `path` (rebuilt from scratch: the host may have changed)."""

    def __init__(self, path: str | Path, etc: str = "/etc") -> None:
        """`etc`: where the copied files come from (a test's own tree; the host's by default)."""
        self.path = str(path)
        shutil.rmtree(self.path, ignore_errors=True)
        os.makedirs(self.path, mode=0o755)
        os.chmod(self.path, 0o755)
        binds: list[str] = []
        for d in HOST_DIRS:
            if os.path.islink(d):
                os.symlink(os.readlink(d), self.path + d)
            elif os.path.isdir(d):
                os.mkdir(self.path + d, 0o755)
                binds += ["--ro-bind", d, d]
        for d in _EMPTY:
            os.makedirs(os.path.join(self.path, d), mode=0o755, exist_ok=True)
        os.chmod(os.path.join(self.path, "tmp"), 0o1777)
        for name in HOST_ETC:
            src = f"{etc}/{name}"
            try:  # a top-level symlink (resolv.conf -> /run/...): its content
                _copy_entry(src, f"{self.path}/etc/{name}", follow=True)
            except OSError:  # absent, dangling or unreadable: left out
                continue
        self.args = ["--ro-bind", self.path, "/", *binds]
        self.roots = [os.path.realpath(d) for d in HOST_DIRS if os.path.isdir(d)]
        self._points: set[str] = set()

    @classmethod
    def private(cls) -> HostView:
        """A view in a temp dir removed when the interpreter exits (tests, benchmarks): not
        with the object, since an argv built from it outlives it."""
        view = cls(tempfile.mkdtemp(prefix="slot-host-view-"))
        atexit.register(shutil.rmtree, view.path, True)
        return view

    def mount_point(self, inside: str) -> None:
        """Make sure `inside` (absolute) can be mounted on: bwrap cannot create it in a
        read-only root. Paths under /tmp live on the slot's own /tmp instead."""
        if inside in self._points:
            return
        norm = os.path.normpath(inside)
        if not norm.startswith("/") or ".." in norm.split("/"):
            raise ValueError(f"not an absolute path: {inside!r}")
        if norm != "/tmp" and not norm.startswith("/tmp/") and \
                not any(norm == d or norm.startswith(d + "/") for d in HOST_DIRS):
            os.makedirs(self.path + norm, mode=0o755, exist_ok=True)
        self._points.add(inside)
