"""Run many coroutines with at most `limit` of them at once, results in input order."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def gather_limited(factories: Iterable[Callable[[], Awaitable[T]]], limit: int, *,
                         return_exceptions: bool = False) -> list[T]:
    """Await `factory()` for each factory, never more than `limit` at a time.

    With `return_exceptions`, a failure is returned in its slot; otherwise the first failure
    cancels the calls still running and is raised."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    factories = list(factories)
    results: list = [None] * len(factories)
    semaphore = asyncio.Semaphore(limit)

    async def one(index: int, factory: Callable[[], Awaitable[T]]) -> None:
        async with semaphore:
            try:
                results[index] = await factory()
            except Exception as e:  # noqa: BLE001 - handed back or re-raised below
                if not return_exceptions:
                    raise
                results[index] = e

    tasks = [asyncio.ensure_future(one(i, f)) for i, f in enumerate(factories)]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return results


async def map_limited(func: Callable[[T], Awaitable[R]], items: Iterable[T],
                      limit: int) -> list[R]:
    """`[await func(x) for x in items]`, with up to `limit` calls running concurrently."""
    return await gather_limited([lambda x=x: func(x) for x in items], limit)
