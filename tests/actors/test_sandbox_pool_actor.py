"""The SandboxPool actor over real slot servers: a dead holder's slots never leak; holders
call their slots directly, under a key good for their lease only."""

import asyncio
import dataclasses

import aiohttp
import pytest

from actors.sandbox_pool import ActorSandbox, SandboxPool
from rollout.sandbox import LocalConfig, SlotLimits
from rollout.sandbox.client import SlotServerClient
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


async def test_a_holder_calls_its_slot_directly_with_a_key_for_its_lease_only(ray_local):
    """Commands go from the holder to the slot server itself (the pool actor off the path)
    under the lease's key, which opens that slot's commands and files for that lease only;
    a server the holder cannot reach is judged by the pool; a loopback address of another
    node's pool goes through the actor."""
    pool = SandboxPool.remote(LocalConfig(min_hosts=1, max_hosts=1, slots_per_host=2),
                              SlotLimits())
    await pool.start.remote()
    try:
        a = await pool.acquire.remote("w/a", None, 30.0)
        b = await pool.acquire.remote("w/b", None, 30.0)
        sa = ActorSandbox(pool, a)
        assert sa.direct and a.url.startswith("http://127.0.0.1:")
        assert (await sa.exec("echo direct")).stdout == "direct\n"
        async with aiohttp.ClientSession() as s:
            with_a = SlotServerClient.for_lease(s, a.url, a.key)
            for refused in (with_a.exec(b.index, "true", lease=a.lease),  # another slot
                            with_a.exec(b.index, "true", lease=b.lease),  # another lease
                            with_a.reset(a.index, lease=a.lease),  # not a reset
                            with_a.health()):  # nor the server's routes
                with pytest.raises(SandboxError, match="HTTP 403"):
                    await refused
            forged = SlotServerClient.for_lease(s, a.url, "0" * 64)
            with pytest.raises(SandboxError, match="HTTP 403"):
                await forged.exec(a.index, "true", lease=a.lease)
        far = ActorSandbox(pool, dataclasses.replace(b, node="another-node"))
        assert not far.direct
        assert (await far.exec("echo via the actor")).stdout == "via the actor\n"
        lost = ActorSandbox(pool, dataclasses.replace(b, url="http://127.0.0.1:9"))
        with pytest.raises(SandboxError, match="did not answer"):
            await lost.exec("true")
        # Released: once the slot is handed out again, the old lease's key opens nothing.
        await pool.release.remote(a)
        again = await pool.acquire.remote("w/c", None, 30.0)
        assert again.index == a.index and again.key != a.key
        with pytest.raises(SandboxError, match="not leased by this lease"):
            await sa.exec("true")
        assert (await ActorSandbox(pool, again).exec("echo mine")).stdout == "mine\n"
    finally:
        await pool.stop.remote()
