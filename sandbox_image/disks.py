"""Per-slot disks: each slot's workspace, /tmp and /dev/shm on one filesystem of its own,
with a size and an inode count the kernel enforces (a full disk is a plain ENOSPC for the
command; the server, the host disk and other slots are unaffected).

Why this design (measured on the 2-core dev machine, kernel 6.18, 2026-12):

- Project quotas on one shared filesystem would keep the mount count constant, but this
  kernel has no CONFIG_QUOTA (ext4 refuses `-O quota,project`), nor has the root fs the
  feature; they are not an option here.
- Every mount in the server's namespace costs every command: bwrap copies the whole mount
  table into each sandbox. `bwrap ... true` went from 10.4 ms to 26.2 ms with 126 extra
  mounts, ~0.12 ms per mount per exec. So one mount per slot (not a workspace mount plus a
  /tmp mount plus a /dev/shm mount): /tmp and /dev/shm are directories on the slot's disk
  bound into the sandbox, and `disk_mb` / `inodes` limit the three together.
- tmpfs (`size=`, `nr_inodes=`) would cost least (mount + umount 0.18 ms), but its pages are
  RAM charged to the slot's memory cgroup: a slot would hit its memory limit (an OOM kill,
  not ENOSPC) long before a multi-GB disk limit, and slots x disk_mb of RAM would be at
  risk. A sparse ext4 image on a loop device is real disk: mkfs of a 4 GiB image (no
  journal, 256Ki inodes) 29 ms, a sparse copy of a formatted template 7 ms, attach + mount
  + umount 2.5-2.7 ms (idle machine; under load 8 on 2 cores: copy 2 ms, attach + mount
  17 ms, umount 13 ms, unlink of the used image 30 ms). A reset swaps in a fresh image
  prepared off the request path (`SlotDisks.fresh`) and releases the old one in the
  background, so the reset path pays one attach + mount; the exec path pays the one extra
  mount per slot above. tests/bench/bench_quota.py prints both on/off ratios (8 slots,
  HTTP included, load average 6-8 on 2 cores from other users): exec `true` p50 1.14x
  (36.5 vs 32.0 ms; p99 0.95x), reset p50 6.7x (29.4 vs 4.4 ms; p99 3.9x); with the
  release still on the reset path it was 13.4x (75.8 vs 5.6 ms).

Lifetime: all mounts are made inside the server's private mount namespace
(`mounts.enter_private_mount_namespace`), so a SIGKILLed server leaves no mount and no
loop device on the host (the namespace dies with its last process; autoclear detaches the
loop devices). Image files and mount points under <data>/disks and <data>/mnt are removed
on close and, after a crash, at the next start on the same data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sandbox_image import mounts

log = logging.getLogger(__name__)

# What each slot filesystem holds at its root (lost+found stays out of sight).
WORKSPACE, TMP, SHM, HOME = "ws", "tmp", "shm", "home"
ROOT = "root"  # a slot container's writable root: an overlay, its upper/work beside it
_SPARES = 2  # formatted images kept ready for resets


class DiskError(Exception):
    """The slot disks cannot be made here (message says why and what to do)."""


@dataclass(frozen=True)
class SlotDisk:
    mount_point: str  # the filesystem's root, in the server's namespace
    image: str

    @property
    def workspace(self) -> str:
        return os.path.join(self.mount_point, WORKSPACE)


def _sparse_copy(src: str, dst: str) -> None:
    """Copy only the allocated extents of `src` (a fresh ext4 image is ~99.9% holes)."""
    fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fin).st_size
            os.ftruncate(fout, size)
            pos = 0
            while pos < size:
                try:
                    pos = os.lseek(fin, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: only a hole is left
                    break
                end = os.lseek(fin, pos, os.SEEK_HOLE)
                while pos < end:
                    pos += os.copy_file_range(fin, fout, end - pos, pos, pos)
        finally:
            os.close(fout)
    finally:
        os.close(fin)


class SlotDisks:
    """Creates, swaps and removes the slot filesystems under <data_dir>.

    Guarantees: `fresh()` returns a mounted, empty filesystem of exactly the configured
    size and inode count; `release()` leaves nothing mounted at or attached for the old one
    once its last process is gone; `close()` releases them all. Blocking work runs in worker
    threads; call from the event loop.
    """

    def __init__(self, data_dir: Path, size_mb: int, inodes: int | None,
                 tmp_mount_points: list[str] = ()) -> None:
        self.size_mb = size_mb
        self.inodes = inodes
        # The host uid that owns a fresh disk's directories (root of the slot containers),
        # set by the server before the slots' disks are made; None: the server's own.
        self.owner: int | None = None
        self._images = data_dir / "disks"
        self._mnt = data_dir / "mnt"
        # Directories bwrap binds onto inside /tmp (exposed dirs, a /tmp workspace), made
        # up front so a slot that used up its inodes can still start commands.
        self._tmp_dirs = [p.strip("/") for p in tmp_mount_points if p.strip("/")]
        self._ids = itertools.count()
        self._flip: dict[int, int] = {}  # slot -> which of its two mount points is next
        self._spares: list[str] = []
        self._refill: asyncio.Task[None] | None = None
        self._mounted: set[str] = set()
        # mount point -> the background release of the disk that was on it. A mount point
        # is reused only once that is over: mounting on top of a disk about to be released
        # fails (ENOENT when the lazy unmount lands mid-mount) or, worse, has the release's
        # unmount take the new disk off instead of the old one.
        self._releasing: dict[str, asyncio.Task[None]] = {}
        self._remove_stale()
        self._images.mkdir(parents=True)
        self._mnt.mkdir(parents=True)
        self._template = str(self._images / "template.img")
        self.effective: dict[str, int] = {}
        try:
            self._format(self._template)
            self._release(self._mount(self._new_image(), "probe"))  # fail now, not later
        except BaseException:
            self.close_sync([])
            raise

    # --- blocking helpers (worker threads, or the constructor) ---------------------------

    def _remove_stale(self) -> None:
        """What a crashed server left on this data dir (its mounts died with its namespace;
        anything still mounted here in ours is unmounted first, never deleted through)."""
        for root in (self._mnt, self._images):
            for target in mounts.mounts_under(str(root)):
                with contextlib.suppress(OSError):
                    mounts.unmount(target)
            shutil.rmtree(root, ignore_errors=True)

    def _format(self, image: str) -> None:
        with open(image, "wb") as f:
            f.truncate(self.size_mb << 20)
        argv = ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
                "-E", "lazy_itable_init=1,nodiscard,root_owner=0:0"]
        if self.inodes:
            argv[3:3] = ["-N", str(self.inodes)]
        try:
            subprocess.run([*argv, image], check=True, capture_output=True, timeout=120)
        except FileNotFoundError as e:
            raise DiskError("mkfs.ext4 not found (apt-get install e2fsprogs)") from e
        except subprocess.CalledProcessError as e:
            raise DiskError(f"mkfs.ext4 failed: {e.stderr.decode(errors='replace').strip()}") from e

    def _new_image(self) -> str:
        image = str(self._images / f"{next(self._ids)}.img")
        _sparse_copy(self._template, image)
        return image

    def _mount(self, image: str, name: str) -> SlotDisk:
        target = str(self._mnt / name)
        with contextlib.suppress(FileExistsError):
            os.mkdir(target, 0o700)
        try:
            fd, dev = mounts.attach_loop(image)
        except OSError as e:
            raise DiskError(f"cannot attach a loop device ({e.strerror or e}); needs root "
                            "with CAP_SYS_ADMIN and /dev/loop-control") from e
        try:
            mounts.mount(dev, target, "ext4", mounts.MS_NOSUID | mounts.MS_NODEV,
                         "noinit_itable")
        except OSError as e:
            raise DiskError(f"cannot mount a slot disk ({e.strerror or e}); needs "
                            "CAP_SYS_ADMIN") from e
        finally:
            os.close(fd)  # the mount holds the device now; autoclear detaches it after
        self._mounted.add(target)
        for name, mode in ((WORKSPACE, 0o755), (TMP, 0o1777), (SHM, 0o1777), (HOME, 0o755)):
            os.mkdir(os.path.join(target, name))
            os.chmod(os.path.join(target, name), mode)  # mkdir's mode is masked by umask
            if self.owner is not None:
                os.chown(os.path.join(target, name), self.owner, self.owner)
        for d in self._tmp_dirs:
            os.makedirs(os.path.join(target, TMP, d), exist_ok=True)
        if not self.effective:
            st = os.statvfs(target)
            self.effective = {"bytes": st.f_blocks * st.f_frsize, "inodes": st.f_files}
        return SlotDisk(target, image)

    def _release(self, disk: SlotDisk) -> None:
        """Unmount and delete a disk whose processes were killed.

        Every sandbox started before this point holds a copy of the server's mount table
        (masked under the data dir, unreachable), so the filesystem and its loop device
        live on until the last command that started before the release ends, in any slot.
        Its blocks must not: the data is synced, then the image truncated, so the host gets
        its space back now. (Propagating the unmount into the sandboxes instead, with a
        shared mount, races with bwrap's own setup: a submount vanishing between its
        mountinfo read and its read-only remount fails that command.)
        """
        with contextlib.suppress(OSError):  # an image's overlay on the workspace, if any
            mounts.unmount(disk.workspace)
        with contextlib.suppress(OSError):  # a slot container's root overlay, if any
            mounts.unmount(os.path.join(disk.mount_point, ROOT))
        with contextlib.suppress(OSError):
            fd = os.open(disk.mount_point, os.O_RDONLY | os.O_DIRECTORY)
            try:
                mounts.syncfs(fd)  # nothing dirty left to be written after the truncate
            finally:
                os.close(fd)
        with contextlib.suppress(OSError):
            mounts.unmount(disk.mount_point)
        self._mounted.discard(disk.mount_point)
        with contextlib.suppress(OSError):
            os.truncate(disk.image, 0)
        # The empty mount point stays (the slot's next-but-one disk goes there): removing a
        # directory that is a mount point in another namespace would unmount it there, under
        # the feet of a bwrap setting up. Nothing writes through it: every path the server
        # hands out is a subdirectory of the disk (ws, tmp, shm, home).
        # The host's blocks are freed once the detached filesystem's last user is gone.
        with contextlib.suppress(OSError):
            os.unlink(disk.image)

    # --- event loop API ------------------------------------------------------------------

    def _mount_point(self, slot: int) -> str:
        """Each slot alternates between two mount points (no directory churn)."""
        k = self._flip.get(slot, 0)
        self._flip[slot] = 1 - k
        return f"{slot}{'ab'[k]}"

    def create_all(self, count: int) -> list[SlotDisk]:
        """The first disk of every slot (constructor time, blocking)."""
        return [self._mount(self._new_image(), self._mount_point(i)) for i in range(count)]

    async def fresh(self, slot: int) -> SlotDisk:
        """A new empty mounted filesystem for `slot`, from a spare image when one is ready."""
        image = self._spares.pop() if self._spares else await asyncio.to_thread(self._new_image)
        self._start_refill()
        name = self._mount_point(slot)
        try:
            pending = self._releasing.get(str(self._mnt / name))
            if pending is not None:
                await asyncio.wait({pending})  # its errors are the release task's own
            return await asyncio.to_thread(self._mount, image, name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(image)
            raise

    def _start_refill(self) -> None:
        if self._refill is not None and not self._refill.done():
            return

        async def refill() -> None:
            while len(self._spares) < _SPARES:
                self._spares.append(await asyncio.to_thread(self._new_image))

        self._refill = asyncio.get_running_loop().create_task(refill())

    def release(self, disk: SlotDisk) -> asyncio.Task[None]:
        """Unmount and delete `disk` in the background; its mount point is not reused
        before that is over. Returns the task (await it, or keep a reference)."""
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._release, disk))
        self._releasing[disk.mount_point] = task

        def forget(t: asyncio.Task[None]) -> None:
            if self._releasing.get(disk.mount_point) is t:
                del self._releasing[disk.mount_point]

        task.add_done_callback(forget)
        return task

    def close_sync(self, disks: list[SlotDisk]) -> None:
        for disk in disks:
            self._release(disk)
        for target in sorted(self._mounted, key=len, reverse=True):  # children first
            with contextlib.suppress(OSError):
                mounts.unmount(target)
        self._mounted.clear()
        shutil.rmtree(self._images, ignore_errors=True)
        shutil.rmtree(self._mnt, ignore_errors=True)

    async def close(self, disks: list[SlotDisk]) -> None:
        if self._refill is not None:
            self._refill.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refill
        await asyncio.to_thread(self.close_sync, disks)

    def describe(self) -> dict[str, object]:
        return {"disk_mb": self.size_mb, "disk_bytes": self.effective.get("bytes"),
                "inodes": self.effective.get("inodes")}
