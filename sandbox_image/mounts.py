"""Thin wrappers over the mount syscalls the slot disks need (libc through ctypes).

- `enter_private_mount_namespace`: the server's mounts live in a mount namespace of its
  own, so they are invisible on the host and vanish with the server's last process, even
  when the server is SIGKILLed (its commands die with it: bwrap --die-with-parent / pdeathsig).
- `mount`, `unmount`: mount(2) / umount2(2), raising OSError.
- `attach_loop`: a free loop device backed by a file, with autoclear, so the device is
  detached by the kernel when the filesystem on it is unmounted for the last time.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.syncfs.argtypes = [ctypes.c_int]

CLONE_NEWNS = 0x00020000
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2

_LOOP_CTL_GET_FREE = 0x4C82
_LOOP_CONFIGURE = 0x4C0A
_LO_FLAGS_AUTOCLEAR = 4
_LO_FLAGS_DIRECT_IO = 16


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_private_mount_namespace() -> None:
    """Move this process into a new mount namespace whose mounts do not propagate to the
    host's. Must be called while the process is single-threaded: unshare(CLONE_NEWNS)
    only moves the calling thread, and the server's worker threads must see its mounts."""
    global _private
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _private = True


_private = False


def in_private_namespace() -> bool:
    """Whether this process entered its own private mount namespace."""
    return _private


def syncfs(fd: int) -> None:
    """Write back the filesystem that `fd` is on (not every filesystem, as sync would)."""
    _check(_libc.syncfs(fd), "syncfs")


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    _check(_libc.mount(source.encode() or None, target.encode(), fstype.encode() or None,
                       flags, data.encode() or None), f"mount {fstype or source} on {target}")


def unmount(target: str) -> None:
    """Lazy unmount: detaches at once; the filesystem goes when its last user is gone."""
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"unmount {target}")


def _loop_config(backing_fd: int, flags: int, name: str) -> bytes:
    # struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
    # struct loop_info64: 5 x u64, lo_number, encrypt_type, encrypt_key_size, lo_flags (u32),
    # file_name[64], crypt_name[64], encrypt_key[32], lo_init[2] (u64)
    info = struct.pack("=5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0, flags,
                       name.encode()[:63], b"", b"", 0, 0)
    return struct.pack("=II", backing_fd, 0) + info + bytes(64)


def attach_loop(image: str) -> tuple[int, str]:
    """-> (open fd of the loop device, its path). Close the fd only after mounting it:
    with autoclear, the last close of an unmounted device detaches it."""
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(64):
                n = fcntl.ioctl(ctl, _LOOP_CTL_GET_FREE)
                dev = f"/dev/loop{n}"
                fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
                for flags in (_LO_FLAGS_AUTOCLEAR | _LO_FLAGS_DIRECT_IO, _LO_FLAGS_AUTOCLEAR):
                    try:
                        fcntl.ioctl(fd, _LOOP_CONFIGURE, _loop_config(backing, flags, image))
                        return fd, dev
                    except OSError as e:
                        if e.errno == errno.EBUSY:  # taken by someone else meanwhile
                            break
                        if e.errno != errno.EINVAL or flags == _LO_FLAGS_AUTOCLEAR:
                            os.close(fd)
                            raise
                os.close(fd)
            raise OSError(errno.EBUSY, "no free loop device after 64 tries")
        finally:
            os.close(ctl)
    finally:
        os.close(backing)


def mounts_under(root: str) -> list[str]:
    """Mount points at or below `root` in this process's namespace, deepest first."""
    root = root.rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].encode().decode("unicode_escape")
            if target == root or target.startswith(root + "/"):
                found.append(target)
    return sorted(found, key=len, reverse=True)
