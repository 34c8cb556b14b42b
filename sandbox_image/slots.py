"""The slot workspaces under the data dir, and what runs in each.

Layout: <data>/slots/<i> (workspace), <data>/homes/<i> (HOME without isolation),
<data>/trash (old workspaces being deleted in the background after a reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import uuid
from pathlib import Path

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
    """Guarantee: after `reset(i)` returns, slot i's workspace is empty and no process
    started for slot i before the reset is alive."""

    def __init__(self, data_dir: Path, count: int) -> None:
        self.count = count
        self.root = data_dir
        self._trash = data_dir / "trash"
        for sub in ("slots", "homes", "trash"):
            (data_dir / sub).mkdir(parents=True, exist_ok=True)
        self.paths: list[str] = []
        for i in range(count):
            ws = data_dir / "slots" / str(i)
            ws.mkdir(exist_ok=True)
            (data_dir / "homes" / str(i)).mkdir(exist_ok=True)
            self.paths.append(os.path.realpath(ws))
        self.running: list[set[int]] = [set() for _ in range(count)]
        self._cleanup_tasks: set[asyncio.Task[None]] = set()
        # Anything left from a previous run of a server on this data dir.
        self._schedule_delete([str(p) for p in self._trash.iterdir()])

    def home(self, i: int) -> str:
        return str(self.root / "homes" / str(i))

    def kill_running(self, i: int) -> None:
        for pid in list(self.running[i]):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

    async def reset(self, i: int) -> None:
        self.kill_running(i)
        ws = self.paths[i]
        # Swap in an empty dir at once; delete the old tree in the background so a reset
        # costs two renames, not a walk of a checked-out repo.
        old = str(self._trash / uuid.uuid4().hex)
        os.rename(ws, old)
        os.mkdir(ws)
        home = self.home(i)
        if os.listdir(home):
            old_home = str(self._trash / uuid.uuid4().hex)
            os.rename(home, old_home)
            os.mkdir(home)
            self._schedule_delete([old, old_home])
        else:
            self._schedule_delete([old])

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
