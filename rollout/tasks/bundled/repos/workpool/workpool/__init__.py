"""Small asyncio helpers: bounded concurrency, retries with backoff, a worker pool, and a
token-bucket rate limiter."""

from .bucket import TokenBucket
from .limits import gather_limited, map_limited
from .pool import PoolClosed, WorkerPool
from .retry import RetryError, backoff_delays, retry

__all__ = ["PoolClosed", "RetryError", "TokenBucket", "WorkerPool", "backoff_delays",
           "gather_limited", "map_limited", "retry"]
