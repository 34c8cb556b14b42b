"""Retrying an async call with exponential backoff."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterator, TypeVar

T = TypeVar("T")


class RetryError(Exception):
    """Every attempt failed; `last` is the final exception, `attempts` how many were made."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempt(s): {last!r}")
        self.attempts = attempts
        self.last = last


def backoff_delays(base: float = 0.1, factor: float = 2.0, cap: float = 10.0) -> Iterator[float]:
    """base, base*factor, base*factor**2, ... never more than `cap`."""
    if base < 0 or factor < 1:
        raise ValueError("base must be >= 0 and factor >= 1")
    delay = base
    while True:
        yield min(delay, cap)
        delay *= factor


async def retry(func: Callable[[], Awaitable[T]], *, attempts: int = 3,
                retry_on: tuple[type[BaseException], ...] = (Exception,),
                base: float = 0.1, factor: float = 2.0, cap: float = 10.0,
                sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> T:
    """The result of the first call of `func()` that does not raise one of `retry_on`,
    sleeping the backoff delay between attempts; `RetryError` after `attempts` failures.
    Other exceptions propagate at once."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    delays = backoff_delays(base, factor, cap)
    for attempt in range(1, attempts + 1):
        try:
            return await func()
        except retry_on as e:
            if attempt == attempts:
                raise RetryError(attempt, e) from e
        await sleep(next(delays))
    raise AssertionError("unreachable")
