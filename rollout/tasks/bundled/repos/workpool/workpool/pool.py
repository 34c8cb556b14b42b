"""A fixed number of worker tasks that run submitted coroutines from a queue."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable


class PoolClosed(RuntimeError):
    """submit() after close()."""


class WorkerPool:
    """`async with WorkerPool(4) as pool: fut = pool.submit(fn, *args)`; leaving the block
    waits for every submitted job. A job's exception is set on its future only."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a pool needs at least one worker")
        self.size = workers
        self._queue: asyncio.Queue = asyncio.Queue()
        self._workers: list[asyncio.Task] = []
        self._closed = False
        self.completed = 0
        self.failed = 0

    async def __aenter__(self) -> WorkerPool:
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.size)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def submit(self, func: Callable[..., Awaitable[Any]], *args: Any) -> asyncio.Future:
        if self._closed:
            raise PoolClosed("the pool is closed")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((func, args, future))
        return future

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            func, args, future = item
            try:
                result = await func(*args)
            except Exception as e:  # noqa: BLE001 - delivered to the submitter
                self.failed += 1
                if not future.cancelled():
                    future.set_exception(e)
            else:
                self.completed += 1
                if not future.cancelled():
                    future.set_result(result)
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        """Wait until every job submitted so far has finished."""
        await self._queue.join()

    async def close(self) -> None:
        """Refuse new jobs, finish the queued ones, stop the workers."""
        if self._closed:
            return
        self._closed = True
        for _ in self._workers:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._workers)
