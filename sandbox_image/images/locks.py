"""flock(2) locks awaited without blocking the event loop, and safe to cancel.

A lock is an open fd on a lock file holding a shared (LOCK_SH) or exclusive (LOCK_EX) flock;
closing the fd releases it, and so does the death of the process, so a killed slot server
never leaves a lock held. Lock files are never deleted (deleting one races with openers)."""

from __future__ import annotations

import asyncio
import fcntl
import os
from concurrent.futures import Executor
from pathlib import Path


def open_lock_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)


async def flock(path: Path, exclusive: bool, executor: Executor | None = None) -> int:
    """An fd on `path` holding the lock. The wait runs in a thread; if the awaiting task is
    cancelled, the fd is closed once the thread returns, so a lock granted late is not leaked."""
    fd = open_lock_file(path)
    op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)  # uncontended: no thread hop
        return fd
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    future = asyncio.get_running_loop().run_in_executor(executor, fcntl.flock, fd, op)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(lambda _: os.close(fd))
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_flock(path: Path, exclusive: bool) -> int | None:
    """An fd holding the lock if it is free right now, else None."""
    fd = open_lock_file(path)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
