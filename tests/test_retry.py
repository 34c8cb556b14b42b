"""rollout/retry.py: the one retry helper and the one wait-until-healthy helper."""

from __future__ import annotations

import asyncio

import pytest

from rollout.retry import NotReady, WaitTimeout, retrying, wait_until, wait_until_blocking


class Flaky:
    """Fails with the given errors in turn, then returns "ok"; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def _retry(transient, **kw):
    seen: list[int] = []
    kw = {"retries": None, "backoff": 0.0, "backoff_max": 0.0,
          "on_retry": lambda n, e, wait: seen.append(n), **kw}
    return retrying(transient, **kw), seen


async def test_a_predicate_says_what_is_transient_and_the_rest_propagates_at_once():
    def transient(e: BaseException) -> bool:
        return isinstance(e, OSError) and "busy" in str(e)

    fn = Flaky(OSError("busy"), OSError("busy"))
    retry, seen = _retry(transient)
    assert await retry(fn) == "ok" and fn.calls == 3 and seen == [1, 2]

    fn = Flaky(OSError("busy"), OSError("denied"), OSError("busy"))
    retry, seen = _retry(transient)
    with pytest.raises(OSError, match="denied"):
        await retry(fn)
    assert fn.calls == 2 and seen == [1]


async def test_retries_and_window_bound_the_tries_and_the_last_error_is_raised_as_itself():
    fn = Flaky(*(ConnectionError(f"down {i}") for i in range(5)))
    retry, _ = _retry(ConnectionError, retries=2)
    with pytest.raises(ConnectionError, match="down 2"):
        await retry(fn)
    assert fn.calls == 3

    # A window no wait fits in: one try, no wait.
    fn = Flaky(ConnectionError("down"), ConnectionError("down"))
    retry, seen = _retry(ConnectionError, window=0.0, backoff=1.0, backoff_max=1.0)
    with pytest.raises(ConnectionError):
        await retry(fn)
    assert fn.calls == 1 and seen == []


async def test_a_cancellation_is_never_retried_even_by_a_predicate_that_takes_anything():
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    retry, seen = _retry(lambda e: True)
    task = asyncio.ensure_future(retry(hangs))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == []


async def test_wait_until_returns_the_checks_value_once_it_is_ready():
    fn = Flaky(NotReady("starting"), NotReady("starting"))
    assert await wait_until(fn, what="the server", interval=0.0) == "ok"
    assert fn.calls == 3


async def test_wait_until_ends_at_once_when_the_check_says_the_thing_died():
    fn = Flaky(NotReady("starting"), RuntimeError("exited with code 1"), NotReady("never"))
    with pytest.raises(RuntimeError, match="exited with code 1"):
        await wait_until(fn, what="the server", interval=0.0, timeout=3600)
    assert fn.calls == 2


async def test_wait_until_times_out_naming_what_and_the_last_reason():
    fn = Flaky(*(NotReady(f"refused {i}") for i in range(10)))
    with pytest.raises(WaitTimeout) as info:
        await wait_until(fn, what="slot server of host h1", timeout=0.0)
    assert str(info.value) == "slot server of host h1 not ready within 0s: refused 0"
    assert info.value.reason == "refused 0" and isinstance(info.value, TimeoutError)
    assert fn.calls == 1  # no check after the deadline


async def test_a_cancelled_wait_checks_no_more():
    checked = asyncio.Event()
    calls = 0

    async def check() -> None:
        nonlocal calls
        calls += 1
        checked.set()
        raise NotReady("starting")

    task = asyncio.ensure_future(wait_until(check, what="x", interval=3600))
    await checked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls == 1


def test_the_blocking_wait_keeps_the_same_rules():
    answers = [NotReady("no ready file yet"), NotReady("no answer"), "http://127.0.0.1:1"]

    def check() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert wait_until_blocking(check, what="the server", interval=0.0) == "http://127.0.0.1:1"
    answers[:] = [NotReady("no answer")]
    with pytest.raises(WaitTimeout, match="^the server not ready within 0s: no answer$"):
        wait_until_blocking(check, what="the server", timeout=0.0)
