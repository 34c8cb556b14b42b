"""Retries of transient failures, done one way everywhere: tenacity, exponential backoff, jitter.

Guarantees of `retrying(...)`:
- only exceptions of the `transient` types are retried; anything else propagates at once,
  unchanged (a 4xx, a malformed reply, a caller's timeout);
- `CancelledError` is never retried: cancelled in an attempt or during the wait, the call
  ends at once, so a cancelled caller leaves nothing retrying behind;
- retry n (1-based) waits `backoff * 2**(n-1)`, at most `backoff_max`, plus a uniform jitter of
  up to `backoff` (so that many clients failing together do not come back together);
- after `retries` retries (None: no limit) the last failure is raised as itself;
- `on_retry(n, error, wait)` is called before each wait (for the caller's logging).

Each call builds a fresh `AsyncRetrying`: its state is per call, and calls run concurrently.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential,
    wait_random,
)

OnRetry = Callable[[int, BaseException, float], None]


def retrying(
    transient: type[BaseException] | tuple[type[BaseException], ...],
    *,
    retries: int | None,
    backoff: float,
    backoff_max: float,
    on_retry: OnRetry,
) -> AsyncRetrying:
    """An `AsyncRetrying` to `await retrying(...)(fn, *args)` or iterate with `async for`."""

    def before_sleep(state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        error = state.outcome.exception()
        assert error is not None
        on_retry(state.attempt_number, error, state.next_action.sleep)

    return AsyncRetrying(
        retry=retry_if_exception_type(transient),
        stop=stop_never if retries is None else stop_after_attempt(retries + 1),
        wait=wait_exponential(multiplier=backoff, min=0, max=backoff_max)
        + wait_random(0, backoff),
        before_sleep=before_sleep,
        reraise=True,
    )
