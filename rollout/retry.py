"""Retries of transient failures and waits until something is up, each done one way everywhere.

`retrying(...)`: tenacity, exponential backoff, jitter. Guarantees:
- only exceptions of the `transient` types (or for which `transient(error)` is true) are
  retried; anything else propagates at once, unchanged (a 4xx, a malformed reply, a
  caller's timeout);
- `CancelledError` is never retried: cancelled in an attempt or during the wait, the call
  ends at once, so a cancelled caller leaves nothing retrying behind;
- retry n (1-based) waits `backoff * 2**(n-1)`, at most `backoff_max`, plus a uniform jitter of
  up to `backoff` (so that many clients failing together do not come back together);
- after `retries` retries (None: no limit), or when the next wait would end more than
  `window` seconds after the first attempt (None: no limit), the last failure is raised as
  itself;
- `on_retry(n, error, wait)` is called before each wait (for the caller's logging).

Each call builds a fresh `AsyncRetrying`: its state is per call, and calls run concurrently.

`wait_until(check, what=..., timeout=...)` (and `wait_until_blocking` for code outside an
event loop): the one wait-until-healthy loop. Guarantees:
- `check()` is called until it returns; its value is returned. It raises `NotReady(why)`
  for "not yet"; any other exception ends the wait at once, unchanged (the thing being
  waited for died: the caller's check says why);
- the pause between checks starts at `interval` and doubles up to `interval_max`;
- after `timeout` seconds (None: none) `WaitTimeout` (a TimeoutError) is raised, naming
  `what` and the last `NotReady` reason; no check starts after the deadline;
- cancelling `wait_until` ends it at once (nothing keeps checking).
"""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

OnRetry = Callable[[int, BaseException, float], None]
T = TypeVar("T")


def retrying(
    transient: type[BaseException] | tuple[type[BaseException], ...]
    | Callable[[BaseException], bool],
    *,
    retries: int | None,
    backoff: float,
    backoff_max: float,
    on_retry: OnRetry,
    window: float | None = None,
) -> AsyncRetrying:
    """An `AsyncRetrying` to `await retrying(...)(fn, *args)` or iterate with `async for`."""

    def before_sleep(state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        error = state.outcome.exception()
        assert error is not None
        on_retry(state.attempt_number, error, state.next_action.sleep)

    if isinstance(transient, (type, tuple)):
        retry = retry_if_exception_type(transient)
    else:  # a predicate; a cancellation is never transient, whatever it says
        retry = retry_if_exception(
            lambda e: not isinstance(e, asyncio.CancelledError) and transient(e))
    stop = stop_never if retries is None else stop_after_attempt(retries + 1)
    if window is not None:
        stop = stop | stop_before_delay(window)  # no wait that would end past it
    return AsyncRetrying(
        retry=retry,
        stop=stop,
        wait=wait_exponential(multiplier=backoff, min=0, max=backoff_max)
        + wait_random(0, backoff),
        before_sleep=before_sleep,
        reraise=True,
    )


class NotReady(Exception):
    """Raised by a `wait_until` check: not up yet (the message says why)."""


class WaitTimeout(TimeoutError):
    """`wait_until` gave up; `reason` is the last check's `NotReady` message."""

    def __init__(self, what: str, timeout: float, reason: str) -> None:
        super().__init__(f"{what} not ready within {timeout:g}s" + (f": {reason}" if reason else ""))
        self.reason = reason


class _Pacing:
    """The deadline and the growing pause of one wait (shared by both waits below)."""

    def __init__(self, what: str, timeout: float | None, interval: float,
                 interval_max: float | None) -> None:
        self.what, self.timeout = what, timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.pause, self.pause_max = interval, interval if interval_max is None else interval_max
        self.reason = ""

    def next_pause(self, error: NotReady) -> float:
        """The pause before the next check; WaitTimeout if the deadline comes first."""
        self.reason = str(error)
        pause, self.pause = self.pause, min(self.pause * 2, self.pause_max)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                assert self.timeout is not None
                raise WaitTimeout(self.what, self.timeout, self.reason) from error
            pause = min(pause, left)
        return pause


async def wait_until(check: Callable[[], Awaitable[T]], *, what: str,
                     timeout: float | None = None, interval: float = 0.1,
                     interval_max: float | None = None) -> T:
    """Await `check()` until it returns (see the module's guarantees)."""
    pacing = _Pacing(what, timeout, interval, interval_max)
    while True:
        try:
            return await check()
        except NotReady as e:
            await asyncio.sleep(pacing.next_pause(e))


def wait_until_blocking(check: Callable[[], T], *, what: str, timeout: float | None = None,
                        interval: float = 0.1, interval_max: float | None = None) -> T:
    """`wait_until` for a caller outside an event loop (a blocking `check`, blocking waits)."""
    pacing = _Pacing(what, timeout, interval, interval_max)
    while True:
        try:
            return check()
        except NotReady as e:
            time.sleep(pacing.next_pause(e))


# Is it up? One look, the answer in words (launch checks, and wait_until's checks). A failed
# connect to a local port is immediate; a remote host that drops packets is not.
PROBE_TIMEOUT = 5.0


def probe_http(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if an HTTP server answers at `url` (any status), else why not, in words."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered: reachable, whatever it thinks of this path
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused: nothing listens there"
        if isinstance(reason, socket.gaierror):
            return f"unknown host ({reason.strerror or reason})"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"no answer within {timeout:g}s"
        return str(reason)
    except (TimeoutError, socket.timeout):
        return f"no answer within {timeout:g}s"
    except (OSError, ValueError) as e:
        return str(e)


def probe_tcp(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if something accepts a TCP connection at host:port, else why not, in words."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused: nothing listens there"
    except socket.gaierror as e:
        return f"unknown host ({e.strerror or e})"
    except (TimeoutError, socket.timeout):
        return f"no answer within {timeout:g}s"
    except OSError as e:
        return e.strerror or str(e)
