"""Release never blocks the trajectory: the reset runs in the background, and only clean
slots are handed out. Real slot servers; no timing is asserted (release does not yield to
the event loop at all, so its reset cannot have begun when it returns)."""

from __future__ import annotations

import asyncio
import os
import signal

from tests.sandbox.conftest import pid_alive


def _pids(pool) -> list[int]:
    return [hs.host.meta["pid"] for hs in pool._hosts.values()]


async def test_release_returns_before_the_reset_and_the_next_holder_gets_a_clean_slot(
        make_pool) -> None:
    pool = make_pool(min_hosts=1, max_hosts=2, slots_per_host=1)
    await pool.start()
    first = await pool.acquire("a")
    await pool.call(first, "write_file", "left-behind", b"secret of a")
    await pool.release(first)
    stats = pool.stats()
    assert stats["slots_resetting"] == 1 and stats["slots_in_use"] == 0
    assert stats["slots_free"] == 1  # on its way back, not lost
    # The only slot is being reset: this acquire waits for it, and starts no second host
    # (a slot coming back from its reset is supply, not demand).
    second = await pool.acquire("b", timeout=60)
    assert (second.host_id, second.index) == (first.host_id, first.index)
    assert (await pool.call(second, "exec", "ls -A")).stdout == ""
    stats = pool.stats()
    assert stats["hosts"] == 1 and stats["host_starts"] == 1 and stats["slots_resetting"] == 0
    await pool.release(second)


async def test_a_reset_that_cannot_reach_its_host_never_hands_the_slot_out(make_pool) -> None:
    pool = make_pool(min_hosts=1, max_hosts=1, slots_per_host=1, health_check_interval=0.2)
    await pool.start()
    slot = await pool.acquire("a")
    (pid,) = _pids(pool)
    await pool.release(slot)
    os.kill(pid, signal.SIGKILL)  # before the background reset has sent anything
    after = await pool.acquire("b", timeout=120)
    assert after.host_id != slot.host_id  # a replacement host's slot, not the unreset one
    assert (await pool.call(after, "exec", "ls -A")).stdout == ""
    assert pool.stats()["slots_resetting"] == 0 and pool.stats()["host_failures"] >= 1
    await pool.release(after)


async def test_stop_ends_the_resets_in_flight_and_leaves_no_server(make_pool) -> None:
    pool = make_pool(min_hosts=2, max_hosts=2, slots_per_host=4)
    await pool.start()
    slots = [await pool.acquire(f"t{i}") for i in range(8)]
    pids = _pids(pool)
    for slot in slots:
        await pool.release(slot)
    assert pool.stats()["slots_resetting"] == 8
    await asyncio.gather(pool.stop(), pool.stop())
    assert not pool._resets and not any(pid_alive(p) for p in pids)
    assert pool.stats()["slots_resetting"] == 0
