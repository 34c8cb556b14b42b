import asyncio

import pytest

from workpool import gather_limited, map_limited


async def bounded(coro, seconds=2.0):
    return await asyncio.wait_for(coro, seconds)


class Tracker:
    def __init__(self):
        self.running = 0
        self.peak = 0

    async def job(self, value, delay=0.001):
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(delay)
            return value * 10
        finally:
            self.running -= 1


@pytest.mark.asyncio
async def test_results_keep_input_order():
    t = Tracker()
    delays = [0.005, 0.001, 0.003, 0.0]
    out = await bounded(gather_limited([lambda i=i, d=d: t.job(i, d) for i, d in enumerate(delays)], 4))
    assert out == [0, 10, 20, 30]


@pytest.mark.asyncio
async def test_never_more_than_limit_at_once():
    t = Tracker()
    out = await bounded(map_limited(t.job, range(20), 3))
    assert out == [i * 10 for i in range(20)]
    assert t.peak == 3


@pytest.mark.asyncio
async def test_limit_one_is_sequential():
    t = Tracker()
    await bounded(map_limited(t.job, range(5), 1))
    assert t.peak == 1


@pytest.mark.asyncio
async def test_empty_input():
    assert await bounded(gather_limited([], 2)) == []


@pytest.mark.asyncio
async def test_bad_limit():
    with pytest.raises(ValueError, match="at least 1"):
        await gather_limited([], 0)


@pytest.mark.asyncio
async def test_first_failure_is_raised_and_cancels_the_rest():
    finished = []

    async def ok(i):
        await asyncio.sleep(0.05)
        finished.append(i)

    async def boom():
        raise KeyError("bad")

    with pytest.raises(KeyError):
        await bounded(gather_limited([lambda: ok(1), boom, lambda: ok(2)], 3))
    await asyncio.sleep(0.06)
    assert finished == []


@pytest.mark.asyncio
async def test_return_exceptions_puts_them_in_their_slot():
    async def boom():
        raise ValueError("no")

    async def fine():
        return "yes"

    out = await bounded(gather_limited([fine, boom, fine], 2, return_exceptions=True))
    assert out[0] == out[2] == "yes"
    assert isinstance(out[1], ValueError)
