"""User namespaces for slot containers: who root inside a slot is on the host.

A slot container's user namespace maps uid/gid 0..65535 inside to `base`..`base`+65535 on
the host (`IdRange`), so uid 0 in a slot is an unprivileged uid outside: it cannot write
/proc/sys, load modules or touch a host file it does not own, whatever it does inside.

Three kernel features make that work with images whose files are owned by uid 0:
- the server (real root) writes the namespace's uid_map/gid_map itself (`write_maps`),
  so no setuid newuidmap and no /etc/subuid are needed;
- an image's root filesystem is shown to its slots through an *idmapped mount*
  (`idmapped_clone`): the files stay owned by 0 on disk, and through that mount they are
  owned by `base` (root inside), so a slot's root can change them in its overlay;
- what the server itself writes into a slot (uploads, files) is given to `base` once
  written (files.py, `owner`), so root inside owns it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)

# Syscall numbers of the new mount API (the same on x86_64 and aarch64).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, 0o2000000
_AT_FDCWD, _AT_EMPTY_PATH, _AT_RECURSIVE = -100, 0x1000, 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 4
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


@dataclass(frozen=True)
class IdRange:
    """Host uids/gids `base`..`base`+`size`-1 are uids 0..`size`-1 inside a slot."""

    base: int = 100000
    size: int = 65536

    @property
    def map_line(self) -> str:
        return f"0 {self.base} {self.size}\n"


def write_maps(pid: int, ids: IdRange) -> None:
    """Give the (blocked) user namespace of `pid` its mapping; needs CAP_SETUID/SETGID."""
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(ids.map_line)
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(ids.map_line)


class MappingNamespace:
    """One user namespace with the slots' mapping, held by a sleeping child, used only as
    the `userns_fd` of idmapped mounts. Close it when the server stops."""

    def __init__(self, ids: IdRange) -> None:
        self.ids = ids
        unshare = "/usr/bin/unshare" if os.path.exists("/usr/bin/unshare") else "unshare"
        # `unshare --user` exec's cat with stdin a pipe: it lives until we close the pipe.
        self._proc = subprocess.Popen(
            [unshare, "--user", "--", "cat"], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={"PATH": "/usr/bin:/bin"})
        try:
            # The child has unshared once its user namespace differs from ours.
            own = os.stat("/proc/self/ns/user").st_ino
            for _ in range(2000):
                if os.stat(f"/proc/{self._proc.pid}/ns/user").st_ino != own:
                    break
                if self._proc.poll() is not None:
                    raise OSError(errno.EPERM, "unshare --user failed: "
                                  + self._proc.stderr.read().decode(errors="replace").strip())
                os.sched_yield()
            write_maps(self._proc.pid, ids)
            self.fd = os.open(f"/proc/{self._proc.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            self._proc.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            self._proc.send_signal(signal.SIGKILL)
        self._proc.wait()


def idmapped_clone(source: str, target: str, userns_fd: int, *, read_only: bool = True) -> None:
    """Mount a clone of the tree at `source` on `target` (an existing directory), its
    owners shifted through the user namespace `userns_fd` (uid u on disk shows as the
    namespace's host uid for u). nosuid, nodev; read-only unless told otherwise."""
    tree = _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source),
                                _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | _AT_RECURSIVE),
                  f"open_tree {source}")
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV
                          | (_MOUNT_ATTR_RDONLY if read_only else 0), 0, 0, userns_fd)
        _check(_libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", _AT_EMPTY_PATH | _AT_RECURSIVE,
                             ctypes.byref(attr), ctypes.sizeof(attr)),
               f"idmapping {source}")
        _check(_libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target),
                             _MOVE_MOUNT_F_EMPTY_PATH), f"move_mount to {target}")
    finally:
        os.close(tree)
