import asyncio

import pytest

from workpool import PoolClosed, TokenBucket, WorkerPool


async def double(x, delay=0.001):
    await asyncio.sleep(delay)
    return 2 * x


@pytest.mark.asyncio
async def test_submitted_jobs_resolve_their_futures():
    async with WorkerPool(3) as pool:
        futures = [pool.submit(double, i) for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*futures), 2.0)
    assert results == [2 * i for i in range(10)]
    assert pool.completed == 10 and pool.failed == 0


@pytest.mark.asyncio
async def test_a_failing_job_fails_only_its_future():
    async def boom():
        raise RuntimeError("job failed")

    async with WorkerPool(2) as pool:
        bad = pool.submit(boom)
        good = pool.submit(double, 4)
        await asyncio.wait_for(pool.join(), 2.0)
    with pytest.raises(RuntimeError, match="job failed"):
        bad.result()
    assert good.result() == 8
    assert (pool.completed, pool.failed) == (1, 1)


@pytest.mark.asyncio
async def test_workers_bound_concurrency():
    running = peak = 0

    async def job():
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.002)
        running -= 1

    async with WorkerPool(2) as pool:
        for _ in range(8):
            pool.submit(job)
        await asyncio.wait_for(pool.join(), 2.0)
    assert peak == 2


@pytest.mark.asyncio
async def test_close_finishes_queued_jobs_then_refuses_new_ones():
    pool = WorkerPool(1)
    await pool.__aenter__()
    futures = [pool.submit(double, i) for i in range(4)]
    await asyncio.wait_for(pool.close(), 2.0)
    assert [f.result() for f in futures] == [0, 2, 4, 6]
    with pytest.raises(PoolClosed):
        pool.submit(double, 1)
    await asyncio.wait_for(pool.close(), 1.0)  # closing twice is fine


def test_a_pool_needs_workers():
    with pytest.raises(ValueError):
        WorkerPool(0)


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def clock(self):
        return self.now

    async def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


@pytest.mark.asyncio
async def test_bucket_starts_full_and_refills_at_rate():
    t = FakeTime()
    bucket = TokenBucket(rate=2.0, capacity=4.0, clock=t.clock, sleep=t.sleep)
    assert bucket.try_acquire(4)
    assert not bucket.try_acquire(1)
    t.now += 1.0
    assert bucket.tokens == pytest.approx(2.0)
    t.now += 10.0
    assert bucket.tokens == pytest.approx(4.0)  # never above capacity


@pytest.mark.asyncio
async def test_acquire_waits_for_missing_tokens():
    t = FakeTime()
    bucket = TokenBucket(rate=5.0, capacity=5.0, clock=t.clock, sleep=t.sleep)
    for _ in range(5):
        await bucket.acquire()
    assert t.slept == []
    await asyncio.wait_for(bucket.acquire(2), 2.0)
    assert sum(t.slept) == pytest.approx(0.4)
    assert bucket.tokens == pytest.approx(0.0)


@pytest.mark.asyncio
async def test_acquire_more_than_capacity_fails():
    bucket = TokenBucket(rate=1.0, capacity=2.0)
    with pytest.raises(ValueError, match="cannot acquire 3"):
        await bucket.acquire(3)


def test_bucket_validates_its_arguments():
    with pytest.raises(ValueError):
        TokenBucket(rate=0, capacity=1)
