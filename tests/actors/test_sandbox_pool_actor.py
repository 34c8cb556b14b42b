"""The SandboxPool actor over real slot servers: a dead holder's slots never leak."""

import asyncio

import pytest

from actors.sandbox_pool import ActorSandbox, SandboxPool
from rollout.sandbox import LocalConfig, SlotLimits
from rollout.types import SandboxError


async def test_dead_holder_slots_are_freed_even_ones_it_was_waiting_for(ray_local):
    pool = SandboxPool.remote(LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=1),
                              SlotLimits())
    await pool.start.remote()
    try:
        held = await pool.acquire.remote("w0/a", None, 30.0)
        assert (await ActorSandbox(pool, held).exec("echo hi")).stdout == "hi\n"
        # w0 also waits for a slot; then w0 dies and the driver frees its slots.
        waiting = asyncio.ensure_future(pool.acquire.remote("w0/b", None, 30.0))
        deadline = asyncio.get_running_loop().time() + 30
        while not (await pool.stats.remote())["waiting"]:
            assert asyncio.get_running_loop().time() < deadline, "the acquire never queued"
        assert await pool.release_holder.remote("w0/") == 1
        with pytest.raises(SandboxError, match="holder is gone"):
            await waiting
        # The slot went back to the pool instead of to the dead holder.
        other = await pool.acquire.remote("w1/c", None, 30.0)
        assert (await pool.stats.remote())["slots_in_use"] == 1
        await pool.release.remote(other)
        with pytest.raises(SandboxError):
            await pool.acquire.remote("w0/late", None, 1.0)
    finally:
        await pool.stop.remote()
