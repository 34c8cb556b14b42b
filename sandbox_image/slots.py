"""The slot workspaces under the data dir, and what runs in each.

Without slot disks: <data>/slots/<i> (workspace), <data>/homes/<i> (HOME without
isolation), <data>/trash (old workspaces being deleted in the background after a reset).
With slot disks (`disks.SlotDisks`): each slot's workspace, /tmp, /dev/shm and HOME are
directories of its own filesystem, and a reset swaps in a fresh filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

from sandbox_image import files, mounts
from sandbox_image.disks import HOME, ROOT, SHM, TMP, SlotDisk, SlotDisks
from sandbox_image.slot_images import SlotImage, SlotImageError, copy_tree, mount_overlay

log = logging.getLogger(__name__)


def _force_remove(path: str) -> None:
    def onerror(func, p, exc_info):  # type: ignore[no-untyped-def]
        # A command may have left read-only dirs; make them writable and retry once.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o755)
            os.chmod(p, 0o755)
            func(p)

    shutil.rmtree(path, onerror=onerror)


class SlotWorkspaces:
    """Guarantee: after `reset(i)` returns, slot i's workspace (and, with slot disks, its
    /tmp and /dev/shm) is empty and no process started for slot i before the reset is
    alive. The old disk is unmounted and deleted in the background right after (`close`
    waits for that). `paths[i]` always names a directory on slot i's current disk: a reset mounts the
    new disk before it switches the path, and kills the slot's processes before it unmounts
    the old one, so nothing ever writes through an unmounted mount point onto the host."""

    def __init__(self, data_dir: Path, count: int, disks: SlotDisks | None = None,
                 owner: int | None = None) -> None:
        """`owner`: the host uid of root in the slots' containers, which owns every
        directory a slot writes (None without containers)."""
        self.count = count
        self.root = data_dir
        self.disks = disks
        self.owner = owner
        self.roots: list[str | None] = [None] * count  # a container's writable root, if any
        self._trash = data_dir / "trash"
        self.running: list[set[int]] = [set() for _ in range(count)]
        self._cleanup_tasks: set[asyncio.Task[None]] = set()
        self._disk: list[SlotDisk] = []
        self.paths: list[str] = []
        if disks is not None:
            disks.owner = owner
            self._disk = disks.create_all(count)
            self.paths = [os.path.realpath(d.workspace) for d in self._disk]
            return
        for sub in ("slots", "homes", "trash", "scratch"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            ws = data_dir / "slots" / str(i)
            ws.mkdir(exist_ok=True)
            (data_dir / "homes" / str(i)).mkdir(exist_ok=True)
            self._own(str(ws), self.home(i))
            self._make_scratch(i)
            self.paths.append(os.path.realpath(ws))
        # Anything left from a previous run of a server on this data dir.
        self._schedule_delete([str(p) for p in self._trash.iterdir()])

    def home(self, i: int) -> str:
        if self._disk:
            return os.path.join(self._disk[i].mount_point, HOME)
        return str(self.root / "homes" / str(i))

    def _own(self, *paths: str) -> None:
        if self.owner is not None:
            for p in paths:
                os.chown(p, self.owner, self.owner)

    def _make_scratch(self, i: int) -> None:
        """Without slot disks, a container's /tmp and /dev/shm are directories of the data
        dir (they must outlive a command, as the container's processes do)."""
        if self.owner is None:
            return
        for d in ("tmp", "shm"):
            path = self.root / "scratch" / str(i) / d
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o1777)
            self._own(str(path))

    def scratch(self, i: int) -> tuple[str, str] | None:
        """(host dir for /tmp, host dir for /dev/shm) on the slot's disk, if it has one
        (or in the data dir for a container without one)."""
        if not self._disk:
            if self.owner is None:
                return None
            base = self.root / "scratch" / str(i)
            return str(base / "tmp"), str(base / "shm")
        mp = self._disk[i].mount_point
        return os.path.join(mp, TMP), os.path.join(mp, SHM)

    async def mount_root(self, i: int, lower: str, workdir: str) -> str:
        """Give slot i (a container with a disk) a writable root: an overlay of the image's
        root `lower` (idmapped: its files belong to the container's root) under an upper
        layer on the slot's disk. The workspace becomes the root's `workdir`. Returns its
        host path."""
        mp = self._disk[i].mount_point
        target, upper, work = (os.path.join(mp, d) for d in (ROOT, "upper", "work"))

        def mount() -> str:
            for d in (target, upper, work):
                os.makedirs(d, exist_ok=True)
            os.chmod(upper, os.stat(lower).st_mode & 0o7777)
            self._own(upper)
            mounts.mount("overlay", target, "overlay", mounts.MS_NOSUID | mounts.MS_NODEV,
                         f"lowerdir={lower},upperdir={upper},workdir={work}")
            files.make_dirs(target, workdir, self.owner)
            return os.path.realpath(target + workdir)

        try:
            ws = await asyncio.to_thread(mount)
        except OSError as e:
            raise SlotImageError(f"cannot mount the slot's root overlay: {e.strerror or e}",
                                 500) from e
        self.roots[i] = target
        self.paths[i] = ws
        return ws

    async def populate(self, i: int, image: SlotImage, writable: str) -> str | None:
        """Give slot i's (empty) workspace the image's content at its workdir: an overlay
        on the slot's disk, or a copy. Returns how ("overlay", "copy"), None if nothing."""
        if image.lower is None:
            return None
        if self._disk and writable != "copy":
            disk = self._disk[i]
            try:
                await asyncio.to_thread(mount_overlay, image.lower, disk.mount_point,
                                        disk.workspace)
                return "overlay"
            except OSError as e:
                if writable == "overlay":
                    raise SlotImageError(f"cannot mount the overlay of {image.label!r}: "
                                         f"{e.strerror or e}", 500) from e
                log.warning("overlay of %s unavailable (%s); copying its workdir instead",
                            image.label, e.strerror or e)
        elif writable == "overlay":
            raise SlotImageError("writable=overlay needs the slot disks (--disk-mb > 0, root "
                                 "with CAP_SYS_ADMIN)", 500)
        await copy_tree(image.lower, self.paths[i], owner=self.owner)
        return "copy"

    def kill_running(self, i: int) -> None:
        for pid in list(self.running[i]):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

    async def reset(self, i: int, kill: Callable[[], None] = lambda: None) -> None:
        """`kill` ends every other process of the slot (its cgroups)."""
        self.roots[i] = None
        if self.disks is not None:
            new = await self.disks.fresh(i)
            old, self._disk[i] = self._disk[i], new
            self.paths[i] = os.path.realpath(new.workspace)
            kill()
            self.kill_running(i)
            # Unmount and delete the old disk off the reset's path (unmount + unlink of a
            # used 4 GiB image: ~40 ms on a loaded 2-core machine). The slot is fresh now;
            # the host gets the old disk's blocks back moments later.
            task = self.disks.release(old)
            self._cleanup_tasks.add(task)
            task.add_done_callback(self._cleanup_tasks.discard)
            return
        kill()
        self.kill_running(i)
        ws = self.paths[i]
        # Swap in an empty dir at once; delete the old tree in the background so a reset
        # costs two renames, not a walk of a checked-out repo.
        old_ws = str(self._trash / uuid.uuid4().hex)
        os.rename(ws, old_ws)
        os.mkdir(ws)
        self._own(ws)
        old = [old_ws]
        home = self.home(i)
        if os.listdir(home):
            old.append(str(self._trash / uuid.uuid4().hex))
            os.rename(home, old[-1])
            os.mkdir(home)
            self._own(home)
        if self.owner is not None:
            old.append(str(self._trash / uuid.uuid4().hex))
            os.rename(self.root / "scratch" / str(i), old[-1])
            self._make_scratch(i)
        self._schedule_delete(old)

    def _schedule_delete(self, paths: list[str]) -> None:
        if not paths:
            return

        async def delete() -> None:
            for p in paths:
                await asyncio.to_thread(_force_remove, p)

        try:
            task = asyncio.get_running_loop().create_task(delete())
        except RuntimeError:  # no loop yet (constructor): delete synchronously
            for p in paths:
                _force_remove(p)
            return
        self._cleanup_tasks.add(task)
        task.add_done_callback(self._cleanup_tasks.discard)

    async def close(self) -> None:
        for i in range(self.count):
            self.kill_running(i)
        if self._cleanup_tasks:
            await asyncio.gather(*self._cleanup_tasks, return_exceptions=True)
        if self.disks is not None:
            await self.disks.close(self._disk)
