import asyncio
import itertools

import pytest

from workpool import RetryError, backoff_delays, retry


class FakeSleep:
    def __init__(self):
        self.delays = []

    async def __call__(self, seconds):
        self.delays.append(seconds)


def flaky(failures, exc=ConnectionError):
    calls = {"n": 0}

    async def call():
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc(f"failure {calls['n']}")
        return calls["n"]

    return call, calls


def test_backoff_delays_grow_and_are_capped():
    assert list(itertools.islice(backoff_delays(0.5, 2.0, 3.0), 5)) == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_backoff_delays_validate():
    with pytest.raises(ValueError):
        next(backoff_delays(0.1, 0.5))


@pytest.mark.asyncio
async def test_success_first_time_does_not_sleep():
    sleep = FakeSleep()
    call, calls = flaky(0)
    assert await retry(call, sleep=sleep) == 1
    assert sleep.delays == [] and calls["n"] == 1


@pytest.mark.asyncio
async def test_retries_until_success_with_backoff():
    sleep = FakeSleep()
    call, calls = flaky(3)
    assert await retry(call, attempts=5, base=0.1, factor=3.0, sleep=sleep) == 4
    assert sleep.delays == pytest.approx([0.1, 0.3, 0.9])


@pytest.mark.asyncio
async def test_gives_up_after_the_last_attempt():
    sleep = FakeSleep()
    call, calls = flaky(10)
    with pytest.raises(RetryError) as err:
        await retry(call, attempts=3, sleep=sleep)
    assert err.value.attempts == 3 and calls["n"] == 3
    assert isinstance(err.value.last, ConnectionError)
    assert "failure 3" in str(err.value)
    assert len(sleep.delays) == 2


@pytest.mark.asyncio
async def test_other_exceptions_are_not_retried():
    sleep = FakeSleep()
    call, calls = flaky(1, exc=TypeError)
    with pytest.raises(TypeError):
        await retry(call, retry_on=(ConnectionError,), sleep=sleep)
    assert calls["n"] == 1 and sleep.delays == []


@pytest.mark.asyncio
async def test_the_delay_cap_applies():
    sleep = FakeSleep()
    call, _ = flaky(4)
    await retry(call, attempts=5, base=1.0, factor=10.0, cap=5.0, sleep=sleep)
    assert sleep.delays == [1.0, 5.0, 5.0, 5.0]


@pytest.mark.asyncio
async def test_real_sleep_is_the_default():
    call, _ = flaky(1)
    assert await asyncio.wait_for(retry(call, base=0.001), 2.0) == 2


@pytest.mark.asyncio
async def test_attempts_must_be_positive():
    call, _ = flaky(0)
    with pytest.raises(ValueError):
        await retry(call, attempts=0)
