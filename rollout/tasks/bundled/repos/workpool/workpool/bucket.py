"""A token-bucket rate limiter for coroutines."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


class TokenBucket:
    """`rate` tokens per second, at most `capacity` saved up; `await acquire(n)` waits until
    `n` tokens are there. `clock` and `sleep` can be replaced (tests, simulations)."""

    def __init__(self, rate: float, capacity: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._stamp = now

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_acquire(self, n: float = 1) -> bool:
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    async def acquire(self, n: float = 1) -> None:
        if n > self.capacity:
            raise ValueError(f"cannot acquire {n} tokens from a bucket of {self.capacity}")
        async with self._lock:  # first come, first served
            while not self.try_acquire(n):
                await self._sleep((n - self._tokens) / self.rate)
